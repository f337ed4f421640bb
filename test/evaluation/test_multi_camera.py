"""Several stereo cameras in one bag: foundation-stereo-make-bag --cameras writes them, and
foundation-stereo-eval evaluates each camera, the cameras' pairs batched, exactly as each camera
evaluated alone (SGBM: identical; the ViT-S network: within 1e-4 px)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from foundation_stereo_ros.evaluation.bag_pairing import CAMERA_INFO, COMPRESSED_IMAGE, IMAGE, StereoRecord, \
    camera_namespace, detect_cameras
from foundation_stereo_ros.evaluation.cameras import camera_batches
from foundation_stereo_ros.pipeline import FoundationStereoBackend, StereoProcessor
from foundation_stereo_ros.pipeline.backends import network as network_backend
from foundation_stereo_ros.tools import evaluate, make_bag

from _eval_helpers import ALOE_SIZE, BASELINE, FX_FULL, copy_bag, disparity_values, make_aloe_bag, read_messages

SGBM = ["--backend", "sgbm", "--set", "sgbm_num_disparities=32"]


def _write_simple_yaml(path: Path, fx: float, baseline: float) -> Path:
    w, h = ALOE_SIZE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"fx: {fx}\ncx: {(w - 1) / 2}\ncy: {(h - 1) / 2}\nbaseline: {baseline}\n")
    return path


def camera_files(root: Path, opencv_data: Path) -> Path:
    """Per camera a folder with left, right and ground truth and a calibration: ``front`` and ``rear``
    the Aloe pair, ``side`` the Aloe pair upside down (other content, same size, still rectified)."""
    left = cv2.imread(str(opencv_data / "aloeL.jpg"))
    right = cv2.imread(str(opencv_data / "aloeR.jpg"))
    gt = cv2.imread(str(opencv_data / "aloeGT.png"), cv2.IMREAD_UNCHANGED)
    for name, flip in (("front", False), ("rear", False), ("side", True)):
        folder = root / name
        folder.mkdir(parents=True)
        for file, img in (("left.png", left), ("right.png", right), ("gt.png", gt)):
            cv2.imwrite(str(folder / file), img[::-1] if flip else img)
        baseline = {"front": BASELINE, "rear": 0.2, "side": BASELINE}[name]
        _write_simple_yaml(root / "calib" / f"{name}.yaml", FX_FULL, baseline)
    return root


def make_camera_bag(path: Path, files: Path, cameras: str = "front,rear,side", scale: str = "0.125,rear=0.1",
                    repeat: int = 2, extra=()) -> Path:
    rc = make_bag.main([str(path), "--cameras", cameras, "--left", str(files / "{camera}" / "left.png"),
                        "--right", str(files / "{camera}" / "right.png"), "--calib",
                        str(files / "calib" / "{camera}.yaml"), "--gt-disparity", str(files / "{camera}" / "gt.png"),
                        "--scale", scale, "--repeat", str(repeat), "--start-time", "100", "--rate", "5", *extra])
    assert rc == 0
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, opencv_data):
    return camera_files(tmp_path_factory.mktemp("cameras"), opencv_data)


def test_make_bag_writes_each_camera_under_its_namespace(tmp_path, files, opencv_data, capsys):
    bag = make_camera_bag(tmp_path / "bag", files)
    assert "camera rear: wrote 2 stereo pairs" in capsys.readouterr().out
    msgs = read_messages(bag)
    roles = ("left/image_rect", "left/camera_info", "right/image_rect", "right/camera_info", "gt/disparity")
    assert sorted(msgs) == sorted(f"/{c}/{r}" for c in ("front", "rear", "side") for r in roles)
    assert all(len(v) == 2 for v in msgs.values())
    # stamped together: frame i of every camera has one stamp, logged in stamp order
    for cam in ("front", "rear", "side"):
        stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in msgs[f"/{cam}/left/image_rect"]]
        assert stamps == [100 * 10**9, 100 * 10**9 + 200_000_000]
    # each camera its size (--scale rear=0.1), its calibration file and its frame ids
    sizes = {c: (msgs[f"/{c}/left/image_rect"][0][1].width, msgs[f"/{c}/left/image_rect"][0][1].height)
             for c in ("front", "rear", "side")}
    assert sizes == {"front": (160, 139), "rear": (128, 111), "side": (160, 139)}
    for cam, scale, baseline in (("front", 0.125, BASELINE), ("rear", 0.1, 0.2)):
        p = np.asarray(msgs[f"/{cam}/right/camera_info"][0][1].p).reshape(3, 4)
        assert p[0, 0] == pytest.approx(FX_FULL * scale) and -p[0, 3] / p[0, 0] == pytest.approx(baseline)
        assert msgs[f"/{cam}/left/image_rect"][0][1].header.frame_id == f"{cam}_left_optical_frame"
        assert msgs[f"/{cam}/right/camera_info"][0][1].header.frame_id == f"{cam}_right_optical_frame"
    # the side camera got its own (upside-down) files
    src = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeL.jpg")), cv2.COLOR_BGR2RGB)[::-1]
    img = msgs["/side/left/image_rect"][0][1]
    got = np.asarray(img.data, np.uint8).reshape(img.height, img.width, 3)
    np.testing.assert_array_equal(got, cv2.resize(src, (160, 139), interpolation=cv2.INTER_AREA))


def test_make_bag_camera_options_are_checked(tmp_path, files, capsys):
    for cameras, scale, needle in (("front,front", "1", "named twice"), ("front,-x", "1", "not a ROS namespace"),
                                   ("front", "0.5,rear=0.2", "no camera 'rear'"), ("front", "-1", "positive")):
        rc = make_bag.main([str(tmp_path / "bad"), "--cameras", cameras, "--left", str(files / "front/left.png"),
                            "--right", str(files / "front/right.png"), "--calib", str(files / "calib/front.yaml"),
                            "--scale", scale])
        assert rc == 2 and needle in capsys.readouterr().err, cameras
        assert not (tmp_path / "bad").exists()
    # a camera without files is named in the error
    rc = make_bag.main([str(tmp_path / "bad"), "--cameras", "front,nope", "--left", str(files / "{camera}/left.png"),
                        "--right", str(files / "{camera}/right.png"), "--calib", str(files / "calib/front.yaml")])
    assert rc == 2 and "camera nope" in capsys.readouterr().err


def test_cameras_are_detected_per_namespace():
    types = {}
    for ns, kind in (("/front", IMAGE), ("/robot/rear", COMPRESSED_IMAGE)):
        suffix = "/compressed" if kind == COMPRESSED_IMAGE else ""
        for side in ("left", "right"):
            types[f"{ns}/{side}/image_rect{suffix}"] = kind
            types[f"{ns}/{side}/camera_info"] = CAMERA_INFO
    types["/front/gt/disparity"] = "stereo_msgs/msg/DisparityImage"
    types["/mono/image_raw"] = IMAGE  # not a stereo camera
    types["/lonely/left/image_raw"] = IMAGE  # no right side, no CameraInfo: not a camera
    found = detect_cameras(types)
    assert list(found) == ["front", "robot/rear"]
    assert found["front"].gt_disparity == "/front/gt/disparity" and found["robot/rear"].gt_disparity is None
    assert found["robot/rear"].left_image == "/robot/rear/left/image_rect/compressed"
    assert detect_cameras(types, ["/robot/rear"]) == {"robot/rear": found["robot/rear"]}
    with pytest.raises(ValueError, match="camera 'lonely'"):
        detect_cameras(types, ["front", "lonely"])
    with pytest.raises(ValueError, match="no topic under /back/"):
        detect_cameras(types, ["back"])
    assert camera_namespace("/left/image_rect") == "" and camera_namespace("/a/b/infra1/image_rect_raw") == "/a/b"
    assert camera_namespace("/mono/image_raw") is None


def _rec(i: int) -> StereoRecord:
    return StereoRecord(i, i, None, None, None, None)


def test_batches_hold_one_pair_per_camera():
    pairs = [("a", _rec(0)), ("b", _rec(0)), ("a", _rec(1)), ("a", _rec(2)), ("b", _rec(1)), ("c", _rec(0)),
             ("b", _rec(2))]
    batches = [[(n, r.index) for n, r in b] for b in camera_batches(pairs)]
    assert batches == [[("a", 0), ("b", 0)], [("a", 1)], [("a", 2), ("b", 1), ("c", 0)], [("b", 2)]]
    assert list(camera_batches([])) == []


@pytest.fixture
def batch_sizes(monkeypatch):
    """The number of frames of every StereoProcessor.process_messages_batch call."""
    sizes = []
    original = StereoProcessor.process_messages_batch

    def spy(self, frames, **kw):
        sizes.append(len(frames))
        return original(self, frames, **kw)

    monkeypatch.setattr(StereoProcessor, "process_messages_batch", spy)
    return sizes


def _alone(bag: Path, cam: str, out: Path, backend_args) -> tuple:
    """(summary, output-bag disparities) of one camera evaluated alone, picked by its topics."""
    rc = evaluate.main([str(bag), *backend_args, "-o", str(out), "--output-bag", str(out) + "_bag", "--no-progress",
                        "--pictures", "0", "--left-topic", f"/{cam}/left/image_rect", "--right-topic",
                        f"/{cam}/right/image_rect", "--left-info", f"/{cam}/left/camera_info", "--right-info",
                        f"/{cam}/right/camera_info", "--gt-disparity-topic", f"/{cam}/gt/disparity"])
    assert rc == 0
    msgs = read_messages(Path(str(out) + "_bag"))
    return json.loads((out / "summary.json").read_text()), [disparity_values(m) for _, m in msgs[f"/{cam}/disparity"]]


def _strip(summary: dict) -> dict:
    """A backend summary without its timing."""
    return {k: v for k, v in summary.items() if k != "latency"}


def test_sgbm_cameras_batched_equal_each_camera_alone(tmp_path, files, batch_sizes, capsys):
    bag = make_camera_bag(tmp_path / "bag", files)
    out, out_bag = tmp_path / "report", tmp_path / "outputs"
    rc = evaluate.main([str(bag), *SGBM, "-o", str(out), "--output-bag", str(out_bag), "--no-progress",
                        "--pictures", "1"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "camera rear:" in printed.out and "cameras.json" in printed.out
    # one warm-up and two batches, each with a pair of every camera (the cameras are stamped together)
    assert batch_sizes == [3, 3, 3]
    batch_sizes.clear()
    cameras = json.loads((out / "cameras.json").read_text())["cameras"]
    assert list(cameras) == ["front", "rear", "side"]
    outputs = read_messages(out_bag)
    for cam in ("front", "rear", "side"):
        summary = json.loads((out / cam / "summary.json").read_text())
        assert summary == cameras[cam] and summary["meta"]["camera"] == cam
        assert (out / cam / "report.html").is_file() and f"camera {cam}" in (out / cam / "report.md").read_text()
        alone, alone_disp = _alone(bag, cam, tmp_path / f"alone_{cam}", SGBM)
        assert _strip(summary["backends"]["sgbm"]) == _strip(alone["backends"]["sgbm"])
        assert summary["frames"] == 2 and summary["has_ground_truth"]
        batched = [disparity_values(m) for _, m in outputs[f"/{cam}/disparity"]]
        assert len(batched) == 2
        for a, b in zip(batched, alone_disp):
            np.testing.assert_array_equal(a, b)
    # the cameras differ (upside-down content, another size and baseline), so equal reports mean per-camera data
    metrics = {c: cameras[c]["backends"]["sgbm"]["metrics"] for c in cameras}
    assert len({m["epe"] for m in metrics.values()}) == 3
    assert metrics["front"]["completeness"] > 50 and 0 < metrics["front"]["epe"] < 3


def test_cameras_option_and_single_camera_bags(tmp_path, files, opencv_data, capsys):
    bag = make_camera_bag(tmp_path / "bag", files, repeat=1)
    out = tmp_path / "report"
    assert evaluate.main([str(bag), *SGBM, "-o", str(out), "--no-progress", "--cameras", "rear,front"]) == 0
    assert sorted(json.loads((out / "cameras.json").read_text())["cameras"]) == ["front", "rear"]
    assert not (out / "side").exists()
    assert evaluate.main([str(bag), *SGBM, "-o", str(tmp_path / "bad"), "--cameras", "back"]) == 2
    assert "no topic under /back/" in capsys.readouterr().err
    assert evaluate.main([str(bag), *SGBM, "-o", str(tmp_path / "bad"), "--cameras", "front", "--left-topic",
                          "/front/left/image_rect"]) == 2
    assert "do not go with --cameras" in capsys.readouterr().err
    # a bag of one camera keeps its one report folder
    single = make_aloe_bag(tmp_path / "single", opencv_data, 0.125)
    assert evaluate.main([str(single), *SGBM, "-o", str(tmp_path / "one"), "--no-progress"]) == 0
    assert (tmp_path / "one" / "summary.json").is_file() and not (tmp_path / "one" / "cameras.json").exists()
    # several bags, one of them with cameras: DIR/<bag>/<camera>/
    assert evaluate.main([str(bag), str(single), *SGBM, "-o", str(tmp_path / "both"), "--no-progress"]) == 0
    bags = json.loads((tmp_path / "both" / "bags.json").read_text())["bags"]
    assert sorted(bags["bag"]["cameras"]) == ["front", "rear", "side"] and bags["single"]["frames"] == 1
    assert (tmp_path / "both" / "bag" / "front" / "summary.json").is_file()


def test_a_stalled_or_broken_camera_does_not_change_the_others(tmp_path, files, batch_sizes):
    src = make_camera_bag(tmp_path / "src", files, repeat=3)

    def change(topic, index, msg):
        if topic == "/rear/right/image_rect" and index >= 1:
            return None  # rear stalls after its first frame
        if topic == "/side/left/camera_info" and index == 1:
            msg.width += 8  # side sends a calibration of another size once
        return msg

    bag = copy_bag(src, tmp_path / "bag", change)
    out = tmp_path / "report"
    assert evaluate.main([str(bag), *SGBM, "-o", str(out), "--no-progress", "--pictures", "0"]) == 0
    assert batch_sizes[1:] == [3, 2, 2]  # rear is absent once it stalls
    batch_sizes.clear()
    cameras = json.loads((out / "cameras.json").read_text())["cameras"]
    assert cameras["rear"]["frames"] == 1 and cameras["rear"]["meta"]["unpaired"] == {"left": 2, "left_info": 2,
                                                                                       "right_info": 2}
    side = cameras["side"]["backends"]["sgbm"]
    assert side["frames"] == 2 and side["skipped"] == 1 and list(side["problems"]) == ["calibration_size"]
    front = cameras["front"]["backends"]["sgbm"]
    assert front["frames"] == 3 and front["skipped"] == 0
    alone, _ = _alone(bag, "front", tmp_path / "alone", SGBM)
    assert _strip(front) == _strip(alone["backends"]["sgbm"])


@pytest.mark.slow
def test_network_cameras_batched_equal_each_camera_alone(tmp_path, files, vits_checkpoint, batch_sizes,
                                                         monkeypatch):
    """The ViT-S network on the CPU: two cameras of one size matched in one network call give the
    disparities of each camera evaluated alone within 1e-4 px; a third of another size runs apart."""
    bag = make_camera_bag(tmp_path / "bag", files, scale="0.0625,rear=0.05", repeat=1)
    net = ["--backend", "foundation_stereo", "--checkpoint", str(vits_checkpoint), "--iters", "2", "--device", "cpu",
           "--warmup", "0"]
    # The deterministic weights are untrained: their disparities lie mostly beyond the left edge of the
    # right image, which the backend invalidates. Every pixel is compared with the mask left out.
    monkeypatch.setattr(network_backend, "invalidate", lambda disparity: disparity)
    calls = []
    original = FoundationStereoBackend.compute_batch

    def spy(self, pairs):
        calls.append([p[0].shape[:2] for p in pairs])
        return original(self, pairs)

    monkeypatch.setattr(FoundationStereoBackend, "compute_batch", spy)
    out, out_bag = tmp_path / "report", tmp_path / "outputs"
    assert evaluate.main([str(bag), *net, "-o", str(out), "--output-bag", str(out_bag), "--no-progress",
                          "--pictures", "0"]) == 0
    assert batch_sizes == [3]
    assert calls == [[(69, 80), (69, 80)], [(56, 64)]]  # front and side in one network call; rear apart
    outputs = read_messages(out_bag)
    for cam in ("front", "rear", "side"):
        batched = [disparity_values(m) for _, m in outputs[f"/{cam}/disparity"]]
        _, alone = _alone(bag, cam, tmp_path / f"alone_{cam}", net)
        assert len(batched) == len(alone) == 1
        assert np.isfinite(alone[0]).all() and np.isfinite(batched[0]).all()
        assert np.abs(batched[0] - alone[0]).max() <= 1e-4, cam
    # the cameras' own content: front and side (upside down) differ
    front, side = (disparity_values(outputs[f"/{c}/disparity"][0][1]) for c in ("front", "side"))
    assert np.abs(front - side).max() > 1.0
