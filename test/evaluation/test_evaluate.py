"""foundation-stereo-eval on bags of the real Aloe pair. The summary's numbers are recomputed here
with an independent per-pixel implementation from the outputs the tool wrote to its output bag
and from the ground truth read straight from aloeGT.png."""
from __future__ import annotations

import csv
import json
import re

import cv2
import numpy as np
import pytest

from foundation_stereo_ros.evaluation import bag_io as B
from foundation_stereo_ros.evaluation.runner import parse_backend_spec
from foundation_stereo_ros.pipeline import ProcessorConfig
from foundation_stereo_ros.pipeline.calibration import rectified_pair
from foundation_stereo_ros.tools import evaluate
from foundation_stereo_ros.tools.make_bag import BagOptions, StereoFrame, resize_frame, write_stereo_bag

from _eval_helpers import BASELINE, FX_FULL, aloe_gt, copy_bag, disparity_values, float_image, make_aloe_bag, \
    naive_metrics, read_messages
from conftest import write_deterministic_checkpoint

SCALE = 0.125  # 160 x 139


def test_metrics_match_independent_computation(tmp_path, opencv_data, capsys):
    bag = make_aloe_bag(tmp_path / "aloe", opencv_data, SCALE, repeat=2)
    out, out_bag = tmp_path / "report", tmp_path / "outputs"
    rc = evaluate.main([str(bag), "--backend", "sgbm", "--set", "sgbm_num_disparities=32", "-o", str(out),
                        "--output-bag", str(out_bag), "--no-progress", "--pictures", "1"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 2 and summary["has_ground_truth"]

    outputs = read_messages(out_bag)
    disp_msgs = [m for _, m in outputs["/stereo/disparity"]]
    depth_msgs = [m for _, m in outputs["/stereo/depth"]]
    assert len(disp_msgs) == len(depth_msgs) == 2
    gt = aloe_gt(opencv_data, SCALE)
    f, b = FX_FULL * SCALE, BASELINE
    gt_depth = np.where(gt > 0, f * b / np.maximum(gt, 1e-6), np.nan)
    preds = [disparity_values(m) for m in disp_msgs]
    depths = [float_image(m) for m in depth_msgs]
    # pixel-weighted totals over both frames = the per-pixel definitions over the stacked frames
    want = naive_metrics(np.vstack(preds).tolist(), np.vstack([gt, gt]).tolist(), np.vstack(depths).tolist(),
                         np.vstack([gt_depth, gt_depth]).tolist())
    got = summary["backends"]["sgbm"]["metrics"]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert 0.0 < got["epe"] < 3.0 and got["completeness"] > 50.0  # SGBM on Aloe: a sane result

    # per-frame CSV rows agree with the per-frame definitions
    rows = list(csv.DictReader(open(out / "frames.csv")))
    assert [r["frame"] for r in rows] == ["0", "1"] and all(r["status"] == "ok" for r in rows)
    frame0 = naive_metrics(preds[0].tolist(), gt.tolist())
    assert float(rows[0]["epe"]) == pytest.approx(frame0["epe"], rel=1e-5)
    assert float(rows[0]["bad_2"]) == pytest.approx(frame0["bad_2"], rel=1e-5)
    assert float(rows[0]["latency_ms"]) > 0

    lat = summary["backends"]["sgbm"]["latency"]
    assert lat["n"] == 2 and lat["median_ms"] <= lat["p95_ms"]

    # the output bag is RViz-ready: points lie on the depth rays, depth = f * t / disparity
    d = disp_msgs[0]
    assert d.f == pytest.approx(f) and d.t == pytest.approx(b)
    valid = np.isfinite(preds[0]) & (preds[0] > 0)
    np.testing.assert_allclose(depths[0][valid], f * b / preds[0][valid], rtol=1e-5)
    cloud = outputs["/stereo/points2"][0][1]
    assert (cloud.height, cloud.width, cloud.point_step) == (139, 160, 16)
    pts = np.asarray(cloud.data, np.uint8).view("<f4").reshape(139, 160, 4)
    np.testing.assert_allclose(pts[..., 2][valid], depths[0][valid], rtol=1e-6)
    assert {"/stereo/depth/camera_info", "/stereo/left/image_rect", "/stereo/left/camera_info"} <= set(outputs)

    # the report: every picture it links exists and is a real PNG of the frame's size
    html = (out / "report.html").read_text()
    links = re.findall(r"src='([^']+)'", html)
    assert "pictures/latency_histogram.png" in links and "pictures/frame00000_sgbm_error.png" in links
    for link in links:
        img = cv2.imread(str(out / link))
        assert img is not None, link
        if link.startswith("pictures/frame"):
            assert img.shape[:2] == (139, 160)
    md = (out / "report.md").read_text()
    assert "| sgbm | 2 | 0 |" in md and "![latency histogram](pictures/latency_histogram.png)" in md
    assert str(out / "report.html") in printed.out and str(out / "summary.json") in printed.out


def test_three_backends_agreement_without_ground_truth(tmp_path, opencv_data):
    """Two SGBM settings and FoundationStereo (deterministic ViT-S weights on the CPU: it runs, but
    its disparities are meaningless; max_disp 64 keeps them inside the small image) in one run on a
    bag without ground truth: latency, completeness and agreement only, recomputed here from the
    output bag."""
    checkpoint = write_deterministic_checkpoint(tmp_path / "ckpt" / "11-33-40", max_disp=64)
    bag = make_aloe_bag(tmp_path / "aloe", opencv_data, 0.0625, gt=False, storage="mcap")  # 80 x 69
    out, out_bag = tmp_path / "report", tmp_path / "outputs"
    rc = evaluate.main([str(bag), "--backend", "sgbm:sgbm_num_disparities=16",
                        "--backend", "sgbm:sgbm_num_disparities=16,sgbm_block_size=9",
                        "--backend", "foundation_stereo:iters=1", "--checkpoint", str(checkpoint),
                        "--device", "cpu", "--warmup", "0", "-o", str(out), "--output-bag", str(out_bag),
                        "--no-progress"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    labels = ["sgbm-sgbm_num_disparities=16", "sgbm-sgbm_num_disparities=16-sgbm_block_size=9",
              "foundation_stereo-iters=1"]
    assert list(s["backends"]) == labels and not s["has_ground_truth"]
    outputs = read_messages(out_bag)
    disp = {lb: disparity_values(outputs[f"/stereo/{evaluate.topic_token(lb)}/disparity"][0][1]) for lb in labels}
    for lb in labels:
        assert set(s["backends"][lb]["metrics"]) == {"completeness"}
        assert s["backends"][lb]["latency"]["n"] == 1
        valid = np.isfinite(disp[lb]) & (disp[lb] > 0)
        assert s["backends"][lb]["metrics"]["completeness"] == pytest.approx(100.0 * valid.mean(), rel=1e-6)
    assert [(r["a"], r["b"]) for r in s["agreement"]] == [(labels[0], labels[1]), (labels[0], labels[2]),
                                                          (labels[1], labels[2])]
    for row in s["agreement"]:
        a, b = disp[row["a"]], disp[row["b"]]
        both = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
        assert row["both_valid"] == pytest.approx(100.0 * both.mean(), rel=1e-6, abs=1e-12)
        if both.any():
            diff = np.abs(a[both] - b[both])
            assert row["mean_abs_diff"] == pytest.approx(float(diff.mean()), rel=1e-5)
            assert row["within_1px"] == pytest.approx(100.0 * float((diff <= 1).mean()), rel=1e-6)
        else:
            assert row["mean_abs_diff"] is None
    assert all(r["mean_abs_diff"] is not None for r in s["agreement"])  # every pair overlaps somewhere
    assert (out / "agreement.csv").is_file()
    assert "no ground truth" in (out / "report.md").read_text()


def test_depth_ground_truth_only(tmp_path, opencv_data):
    """A bag whose ground truth is a 16UC1 depth topic (mm): disparity metrics come from
    d = f * t / Z, computed here from the millimetre values."""
    left = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeL.jpg")), cv2.COLOR_BGR2RGB)
    right = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeR.jpg")), cv2.COLOR_BGR2RGB)
    calib = rectified_pair(FX_FULL, 640.5, 554.5, BASELINE, 1282, 1110)
    fr = resize_frame(StereoFrame(left, right, calibration=calib), SCALE)
    gt = aloe_gt(opencv_data, SCALE)
    f = FX_FULL * SCALE
    mm = np.where(gt > 0, np.round(f * BASELINE / np.maximum(gt, 1e-6) * 1000), 0).astype(np.uint16)
    bag = tmp_path / "bag"
    topics = B.StereoTopics.under("/stereo")
    write_stereo_bag(bag, [fr], fr.calibration, BagOptions(start_ns=10**9, topics=topics))
    # add the depth topic as a 16UC1 image in millimetres (REP 118)
    with B.StereoBagWriter(tmp_path / "gt_only", storage="sqlite3") as w:
        for topic, items in read_messages(bag).items():
            for t, msg in items:
                w.write(topic, msg, t)
        w.write("/stereo/gt/depth", B.image_msg(mm, "16UC1", 10**9, "stereo_left_optical_frame"))
    out = tmp_path / "report"
    assert evaluate.main([str(tmp_path / "gt_only"), "--backend", "sgbm", "--set", "sgbm_num_disparities=32",
                          "-o", str(out), "--output-bag", str(tmp_path / "o"), "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["meta"]["topics"]["gt_depth"] == "/stereo/gt/depth"
    pred = disparity_values(read_messages(tmp_path / "o")["/stereo/disparity"][0][1])
    z = mm.astype(np.float64) / 1000.0
    gt_from_depth = np.where(mm > 0, f * BASELINE / np.where(mm > 0, z, 1.0), 0.0)
    want = naive_metrics(pred.tolist(), gt_from_depth.tolist())
    got = s["backends"]["sgbm"]["metrics"]
    assert got["epe"] == pytest.approx(want["epe"], rel=1e-5)
    assert got["bad_3"] == pytest.approx(want["bad_3"], rel=1e-5)


def _evaluate(bag, out, *extra):
    rc = evaluate.main([str(bag), "--backend", "sgbm", "--set", "sgbm_num_disparities=32", "-o", str(out),
                        "--no-progress", "--pictures", "0", *extra])
    assert rc == 0
    return json.loads((out / "summary.json").read_text())


def test_compressed_recordings_score_like_raw_ones(tmp_path, opencv_data):
    """CompressedImage bags (make-bag --compressed) are detected and decoded by the node's pipeline:
    PNG is lossless, so its scores and outputs equal the raw bag's; JPEG at quality 95 is close."""
    summaries, disparities = {}, {}
    for kind in ("raw", "png", "jpeg"):
        extra = [] if kind == "raw" else ["--compressed", kind]
        bag = make_aloe_bag(tmp_path / kind, opencv_data, SCALE, extra=extra)
        summaries[kind] = _evaluate(bag, tmp_path / f"report_{kind}", "--output-bag", str(tmp_path / f"out_{kind}"))
        # the outputs keep the camera namespace and are raw Images, whatever the input transport
        outputs = read_messages(tmp_path / f"out_{kind}")
        assert outputs["/stereo/left/image_rect"][0][1].encoding == "rgb8"
        disparities[kind] = disparity_values(outputs["/stereo/disparity"][0][1])
    assert summaries["png"]["meta"]["topics"]["left_image"] == "/stereo/left/image_rect/compressed"
    assert summaries["jpeg"]["meta"]["topics"]["right_image"] == "/stereo/right/image_rect/compressed"
    raw, png, jpeg = (summaries[k]["backends"]["sgbm"]["metrics"] for k in ("raw", "png", "jpeg"))
    assert png == raw
    np.testing.assert_array_equal(disparities["png"], disparities["raw"])
    assert summaries["jpeg"]["backends"]["sgbm"]["skipped"] == 0
    assert jpeg["epe"] == pytest.approx(raw["epe"], abs=0.3) and jpeg["bad_3"] == pytest.approx(raw["bad_3"], abs=3.0)
    assert not np.array_equal(disparities["jpeg"], disparities["raw"])  # it really was JPEG


def test_bad_compressed_frames_are_skipped_with_their_problem(tmp_path, opencv_data):
    """A recording cut mid-frame, garbage bytes, an unknown codec, an image of another size: each
    such pair is a skipped frame counted by the pipeline's problem key; the good pairs are scored."""
    good = make_aloe_bag(tmp_path / "good", opencv_data, 0.0625, repeat=6, extra=["--compressed", "jpeg"])
    other_size = np.frombuffer(B.compress_image(np.zeros((20, 30, 3), np.uint8), "rgb8", "jpeg")[1], np.uint8)

    def spoil(topic, i, msg):
        if topic != "/stereo/left/image_rect/compressed":
            return msg
        data = np.asarray(msg.data, np.uint8)
        if i == 1:
            msg.data = data[: data.size // 2].copy()
        elif i == 2:
            msg.data = np.random.default_rng(0).integers(0, 256, data.size, dtype=np.uint8)
        elif i == 3:
            msg.format = "rgb8; h264 compressed bgr8"
        elif i == 4:
            msg.data = other_size.copy()
        return msg

    bag = copy_bag(good, tmp_path / "spoiled", spoil)
    out = tmp_path / "report"
    s = _evaluate(bag, out, "--set", "sgbm_num_disparities=16")
    sgbm = s["backends"]["sgbm"]
    assert s["frames"] == 6 and sgbm["frames"] == 2 and sgbm["skipped"] == 4
    assert sgbm["problems"] == {"compressed_truncated": 1, "compressed_corrupt": 1, "compressed_format": 1,
                                "compressed_size": 1}
    assert sgbm["metrics"]["epe"] is not None  # the good pairs were scored against the ground truth
    rows = list(csv.DictReader(open(out / "frames.csv")))
    assert [r["status"] for r in rows] == ["ok", "skipped:compressed_truncated", "skipped:compressed_corrupt",
                                           "skipped:compressed_format", "skipped:compressed_size", "ok"]
    assert "Skipped frames" in (out / "report.md").read_text()


def test_bad_input(tmp_path, opencv_data, capsys, monkeypatch):
    assert evaluate.main([str(tmp_path / "nothing"), "--backend", "sgbm", "--no-progress"]) == 2
    assert "no such bag" in capsys.readouterr().err
    bag = make_aloe_bag(tmp_path / "aloe", opencv_data, SCALE)
    assert evaluate.main([str(bag), "--backend", "sgbm:iters=0", "--no-progress"]) == 2
    assert "iters" in capsys.readouterr().err
    assert evaluate.main([str(bag), "--set", "nonsense=1", "--no-progress"]) == 2
    assert "nonsense" in capsys.readouterr().err
    # no checkpoint anywhere: the default backend is sgbm, and the user is told why
    monkeypatch.delenv("FOUNDATION_STEREO_CHECKPOINT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert evaluate.main([str(bag), "--set", "sgbm_num_disparities=32", "-o", str(tmp_path / "r"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "no FoundationStereo checkpoint" in captured.err and "NVlabs/FoundationStereo" in captured.err
    assert "sgbm: 1 frames" in captured.out
    # asking for the network without a checkpoint is an error with the loader's message
    assert evaluate.main([str(bag), "--backend", "foundation_stereo", "--device", "cpu", "--no-progress",
                          "-o", str(tmp_path / "r2")]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_backend_specs():
    base = ProcessorConfig(backend="sgbm", device="cpu", max_depth=12.0)
    run = parse_backend_spec("foundation_stereo:iters=8,scale=1,checkpoint=2025", base)
    assert run.label == "foundation_stereo-iters=8-scale=1-checkpoint=2025"
    assert (run.config.backend, run.config.iters, run.config.scale, run.config.checkpoint) == (
        "foundation_stereo", 8, 1.0, "2025")
    assert run.config.max_depth == 12.0 and run.config.device == "cpu"  # the shared settings stay
    for bad in ("sgbm:iters", "sgbm:iters=many", "sgbm:no_such=1", "magic"):
        with pytest.raises(ValueError):
            parse_backend_spec(bad, base)


def _without_timing(value):
    """A summary without what differs between any two runs: wall-clock latencies and the date."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in ("latency", "created")}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


@pytest.mark.slow  # two spawned processes
def test_jobs_2_gives_the_summaries_of_jobs_1(tmp_path, opencv_data, capsys):
    bags = [str(make_aloe_bag(tmp_path / name, opencv_data, scale, repeat=2)) for name, scale in
            (("aloe_small", SCALE), ("aloe_smaller", SCALE / 2))]
    # plain SGBM runs single-threaded in OpenCV: its numbers cannot depend on a process's thread pool
    common = ["--backend", "sgbm", "--set", "sgbm_num_disparities=32", "--set", "sgbm_mode=sgbm", "--no-progress",
              "--pictures", "1"]
    assert evaluate.main(bags + common + ["-o", str(tmp_path / "one")]) == 0
    assert evaluate.main(bags + common + ["-o", str(tmp_path / "two"), "--jobs", "2"]) == 0
    one, two = (json.loads((tmp_path / d / "bags.json").read_text())["bags"] for d in ("one", "two"))
    assert list(one) == list(two) == ["aloe_small", "aloe_smaller"]
    assert one["aloe_small"]["backends"]["sgbm"]["metrics"] != one["aloe_smaller"]["backends"]["sgbm"]["metrics"]
    assert _without_timing(one) == _without_timing(two)
    for name in one:
        assert json.loads((tmp_path / "two" / name / "summary.json").read_text()) == two[name]
        assert (tmp_path / "one" / name / "frames.csv").is_file()
    assert "summary:" in capsys.readouterr().out
    assert evaluate.main(bags + common + ["--output-bag", str(tmp_path / "x")]) == 2  # one bag only
