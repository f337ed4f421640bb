"""foundation-stereo-make-bag on real data: the Middlebury Aloe pair and the chessboard pairs of
opencv-doc. Bags are read back with rosbags directly, and every expected value is computed here
with OpenCV/NumPy from the source files."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from foundation_stereo_ros.tools import make_bag

from _chessboard import chessboard_corners, chessboard_pairs, read_grey

FX, BASELINE = 3740.0, 0.16


def read_bag(path: Path):
    """{topic: [(log_time, msg)]} and the storage identifier."""
    out = {}
    with AnyReader([path]) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    meta = (path / "metadata.yaml").read_text()
    storage = "mcap" if "storage_identifier: mcap" in meta else "sqlite3"
    return out, storage


def image_pixels(msg) -> np.ndarray:
    ch = {"rgb8": 3, "bgr8": 3, "mono8": 1}[msg.encoding]
    return np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * ch].reshape(
        msg.height, msg.width, ch).squeeze()


def write_simple_yaml(path: Path, w: int, h: int) -> Path:
    path.write_text(f"fx: {FX}\ncx: {(w - 1) / 2}\ncy: {(h - 1) / 2}\nbaseline: {BASELINE}\nwidth: {w}\nheight: {h}\n")
    return path


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_aloe_pair_with_ground_truth(tmp_path, opencv_data, storage, capsys):
    calib = write_simple_yaml(tmp_path / "calib.yaml", 1282, 1110)
    out = tmp_path / "bag"
    s = 0.125
    rc = make_bag.main([str(out), "--left", str(opencv_data / "aloeL.jpg"), "--right", str(opencv_data / "aloeR.jpg"),
                        "--calib", str(calib), "--gt-disparity", str(opencv_data / "aloeGT.png"), "--scale", str(s),
                        "--repeat", "2", "--rate", "4", "--start-time", "50", "--storage", storage])
    assert rc == 0, capsys.readouterr().err
    msgs, found_storage = read_bag(out)
    assert found_storage == storage
    ns = "/stereo"
    assert sorted(msgs) == sorted(f"{ns}/{t}" for t in ("left/image_rect", "left/camera_info", "right/image_rect",
                                                        "right/camera_info", "gt/disparity"))
    assert all(len(v) == 2 for v in msgs.values())
    # recorded timing: stamps and log times at 4 Hz from t = 50 s
    stamps = [(t, m.header.stamp.sec * 10**9 + m.header.stamp.nanosec) for t, m in msgs[f"{ns}/left/image_rect"]]
    assert stamps == [(50 * 10**9, 50 * 10**9), (50_250_000_000, 50_250_000_000)]

    left = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeL.jpg")), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(left, (160, 139), interpolation=cv2.INTER_AREA)
    img = msgs[f"{ns}/left/image_rect"][0][1]
    assert (img.width, img.height, img.encoding) == (160, 139, "rgb8")
    np.testing.assert_array_equal(image_pixels(img), expected)

    info = msgs[f"{ns}/right/camera_info"][0][1]
    p = np.asarray(info.p).reshape(3, 4)
    assert p[0, 0] == pytest.approx(FX * s)
    assert p[0, 2] == pytest.approx(((1282 - 1) / 2 + 0.5) * s - 0.5)  # pixel-centre convention of cv2.resize
    assert -p[0, 3] / p[0, 0] == pytest.approx(BASELINE)
    assert (info.width, info.height) == (160, 139)

    gt_msg = msgs[f"{ns}/gt/disparity"][0][1]
    gt = np.asarray(gt_msg.image.data, np.uint8).view("<f4").reshape(139, 160)
    src = cv2.imread(str(opencv_data / "aloeGT.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
    want = cv2.resize(src, (160, 139), interpolation=cv2.INTER_NEAREST) * s
    known = want > 0
    np.testing.assert_array_equal(gt[known], want[known])
    assert np.isnan(gt[~known]).all()
    assert gt_msg.f == pytest.approx(FX * s) and gt_msg.t == pytest.approx(BASELINE)


def test_k_txt_and_mono8(tmp_path, opencv_data):
    small = tmp_path / "imgs"
    small.mkdir()
    for name in ("aloeL.jpg", "aloeR.jpg"):
        img = cv2.imread(str(opencv_data / name))
        cv2.imwrite(str(small / name.replace(".jpg", ".png")), cv2.resize(img, (160, 139), interpolation=cv2.INTER_AREA))
    k = tmp_path / "K.txt"
    k.write_text("467.5 0 79.6 0 467.5 68.9 0 0 1\n0.16\n")
    out = tmp_path / "bag"
    assert make_bag.main([str(out), "--left", str(small / "aloeL.png"), "--right", str(small / "aloeR.png"),
                          "--calib", str(k), "--encoding", "mono8", "--namespace", "cam", "--start-time", "1"]) == 0
    msgs, _ = read_bag(out)
    img = msgs["/cam/right/image_rect"][0][1]
    assert img.encoding == "mono8"
    want = cv2.cvtColor(cv2.imread(str(small / "aloeR.png")), cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(image_pixels(img), want)
    k_msg = np.asarray(msgs["/cam/left/camera_info"][0][1].k).reshape(3, 3)
    np.testing.assert_allclose(k_msg, [[467.5, 0, 79.6], [0, 467.5, 68.9], [0, 0, 1]])
    assert "/cam/gt/disparity" not in msgs


def small_aloe_pngs(folder: Path, opencv_data: Path):
    folder.mkdir()
    paths = []
    for name in ("aloeL.jpg", "aloeR.jpg"):
        img = cv2.resize(cv2.imread(str(opencv_data / name)), (160, 139), interpolation=cv2.INTER_AREA)
        paths.append(folder / name.replace(".jpg", ".png"))
        cv2.imwrite(str(paths[-1]), img)
    return paths


@pytest.mark.parametrize("codec, encoding, fmt", [
    # compressed_image_transport's format strings (compressed_publisher.cpp): colour is compressed
    # as BGR; grey PNG keeps the source encoding and leaves the target empty.
    ("jpeg", "rgb8", "rgb8; jpeg compressed bgr8"),
    ("jpeg", "mono8", "mono8; jpeg compressed mono8"),
    ("png", "bgr8", "bgr8; png compressed bgr8"),
    ("png", "mono8", "mono8; png compressed "),
])
def test_compressed_images(tmp_path, opencv_data, codec, encoding, fmt):
    left, right = small_aloe_pngs(tmp_path / "imgs", opencv_data)
    calib = write_simple_yaml(tmp_path / "calib.yaml", 160, 139)
    out = tmp_path / "bag"
    assert make_bag.main([str(out), "--left", str(left), "--right", str(right), "--calib", str(calib), "--raw",
                          "--compressed", codec, "--encoding", encoding, "--start-time", "3", "--storage", "mcap"]) == 0
    msgs, _ = read_bag(out)
    assert sorted(msgs) == ["/stereo/left/camera_info", "/stereo/left/image_raw/compressed",
                            "/stereo/right/camera_info", "/stereo/right/image_raw/compressed"]
    with AnyReader([out]) as reader:
        assert {c.topic: c.msgtype for c in reader.connections}["/stereo/left/image_raw/compressed"] == \
            "sensor_msgs/msg/CompressedImage"
    for side, path in (("left", left), ("right", right)):
        _, msg = msgs[f"/stereo/{side}/image_raw/compressed"][0]
        assert msg.format == fmt and msg.header.stamp.sec == 3 and msg.header.frame_id.startswith(f"stereo_{side}")
        data = np.asarray(msg.data, np.uint8).tobytes()
        assert data.startswith(b"\xff\xd8" if codec == "jpeg" else b"\x89PNG\r\n\x1a\n")  # the file's magic
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        bgr = cv2.imread(str(path))
        want = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if encoding == "mono8" else bgr  # what the codec holds
        assert decoded.shape == want.shape
        if codec == "png":
            np.testing.assert_array_equal(decoded, want)  # lossless
        else:
            err = np.abs(decoded.astype(int) - want.astype(int)).mean()
            assert 0 < err < 6.0  # quality 95 on a small textured picture: close, not equal
            if encoding != "mono8":  # and BGR in the codec, as the format says: swapped is far worse
                assert np.abs(decoded.astype(int) - want[..., ::-1].astype(int)).mean() > 3 * err


def test_compressed_quality_and_bad_options(tmp_path, opencv_data, capsys):
    left, right = small_aloe_pngs(tmp_path / "imgs", opencv_data)
    calib = write_simple_yaml(tmp_path / "calib.yaml", 160, 139)
    sizes = {}
    for q in (30, 95):
        out = tmp_path / f"q{q}"
        assert make_bag.main([str(out), "--left", str(left), "--right", str(right), "--calib", str(calib),
                              "--compressed", "jpeg", "--jpeg-quality", str(q)]) == 0
        msgs, _ = read_bag(out)
        sizes[q] = len(msgs["/stereo/left/image_rect/compressed"][0][1].data)
    assert sizes[30] < sizes[95]
    assert make_bag.main([str(tmp_path / "bad"), "--left", str(left), "--right", str(right), "--calib", str(calib),
                          "--compressed", "jpeg", "--jpeg-quality", "0"]) == 2
    assert "quality" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        make_bag.main([str(tmp_path / "bad"), "--left", str(left), "--right", str(right), "--calib", str(calib),
                       "--compressed", "tiff"])


def test_opencv_calibration_raw_images_rectify_to_equal_rows(tmp_path, opencv_data):
    """Calibrate the real chessboard pairs as OpenCV's stereo_calib sample does and save its file
    layout (intrinsics.yml: M1 D1 M2 D2, extrinsics.yml: R T); the bag's CameraInfo must rectify
    the raw images so that the corners of each pair share rows."""
    pairs = chessboard_pairs(opencv_data)
    lefts, rights = [str(lp) for lp, _ in pairs], [str(rp) for _, rp in pairs]
    obj = np.zeros((54, 3), np.float32)
    obj[:, :2] = np.mgrid[0:9, 0:6].T.reshape(-1, 2) * 0.025  # 25 mm squares (left_intrinsics.yml)
    objs, pl, pr = [], [], []
    for lf, rf in pairs:
        c1, c2 = chessboard_corners(read_grey(lf)), chessboard_corners(read_grey(rf))
        if c1 is not None and c2 is not None:
            objs.append(obj)
            pl.append(c1.reshape(-1, 1, 2))
            pr.append(c2.reshape(-1, 1, 2))
    assert len(objs) >= 6
    k0 = cv2.initCameraMatrix2D(objs, pl, (640, 480), 0)
    flags = (cv2.CALIB_FIX_ASPECT_RATIO | cv2.CALIB_ZERO_TANGENT_DIST | cv2.CALIB_SAME_FOCAL_LENGTH
             | cv2.CALIB_USE_INTRINSIC_GUESS | cv2.CALIB_RATIONAL_MODEL | cv2.CALIB_FIX_K3 | cv2.CALIB_FIX_K4
             | cv2.CALIB_FIX_K5)  # the flags of OpenCV's stereo_calib sample
    rms, k1, d1, k2, d2, R, T, _, _ = cv2.stereoCalibrate(objs, pl, pr, k0, np.zeros(8), k0.copy(), np.zeros(8),
                                                         (640, 480), flags=flags)
    assert rms < 0.6
    for name, entries in (("intrinsics.yml", (("M1", k1), ("D1", d1), ("M2", k2), ("D2", d2))),
                          ("extrinsics.yml", (("R", R), ("T", T)))):
        fs = cv2.FileStorage(str(tmp_path / name), cv2.FILE_STORAGE_WRITE)
        for key, value in entries:
            fs.write(key, value)
        fs.release()

    out = tmp_path / "bag"
    assert make_bag.main([str(out), "--left", *lefts, "--right", *rights, "--raw", "--calib",
                          str(tmp_path / "intrinsics.yml"), str(tmp_path / "extrinsics.yml"),
                          "--start-time", "5"]) == 0
    msgs, _ = read_bag(out)
    assert len(msgs["/stereo/left/image_raw"]) == len(lefts)
    li, ri = msgs["/stereo/left/camera_info"][0][1], msgs["/stereo/right/camera_info"][0][1]
    assert li.distortion_model == "rational_polynomial" and len(li.d) == 8  # 8 coefficients: rational model
    pr_ = np.asarray(ri.p).reshape(3, 4)
    assert -pr_[0, 3] / pr_[0, 0] == pytest.approx(float(np.linalg.norm(T)), rel=0.02)  # baseline in metres
    # Corners found in the bag's raw images, mapped into the rectified images through each camera's
    # CameraInfo (K, D, R, P), must lie on the same rows in left and right.
    row_errors = []
    for (_, lmsg), (_, rmsg) in zip(msgs["/stereo/left/image_raw"], msgs["/stereo/right/image_raw"]):
        rect = []
        for m, info in ((lmsg, li), (rmsg, ri)):
            c = chessboard_corners(cv2.cvtColor(image_pixels(m), cv2.COLOR_RGB2GRAY))
            assert c is not None
            rect.append(cv2.undistortPoints(c.reshape(-1, 1, 2), np.asarray(info.k).reshape(3, 3),
                                            np.asarray(info.d), R=np.asarray(info.r).reshape(3, 3),
                                            P=np.asarray(info.p).reshape(3, 4)).reshape(-1, 2))
        row_errors.append(np.abs(rect[0][:, 1] - rect[1][:, 1]))
    errors = np.concatenate(row_errors)
    assert float(np.median(errors)) < 0.5 and float(np.percentile(errors, 95)) < 1.5


def test_ros_camera_info_yaml_files(tmp_path, opencv_data):
    """The long form of the simple YAML, with each camera in ROS camera_calibration format."""
    for side, tx in (("left", 0.0), ("right", -467.5 * 0.16)):
        (tmp_path / f"{side}.yaml").write_text(
            "image_width: 160\nimage_height: 139\ncamera_name: " + side + "\n"
            "camera_matrix: {rows: 3, cols: 3, data: [467.5, 0, 80, 0, 467.5, 69, 0, 0, 1]}\n"
            "distortion_model: plumb_bob\n"
            "distortion_coefficients: {rows: 1, cols: 5, data: [0, 0, 0, 0, 0]}\n"
            "rectification_matrix: {rows: 3, cols: 3, data: [1, 0, 0, 0, 1, 0, 0, 0, 1]}\n"
            f"projection_matrix: {{rows: 3, cols: 4, data: [467.5, 0, 80, {tx}, 0, 467.5, 69, 0, 0, 0, 1, 0]}}\n")
    (tmp_path / "stereo.yaml").write_text("left: left.yaml\nright: right.yaml\n")
    img = tmp_path / "l.png"
    cv2.imwrite(str(img), cv2.resize(cv2.imread(str(opencv_data / "aloeL.jpg")), (160, 139)))
    out = tmp_path / "bag"
    assert make_bag.main([str(out), "--left", str(img), "--right", str(img), "--calib",
                          str(tmp_path / "stereo.yaml"), "--start-time", "1"]) == 0
    msgs, _ = read_bag(out)
    p = np.asarray(msgs["/stereo/right/camera_info"][0][1].p).reshape(3, 4)
    assert p[0, 3] == pytest.approx(-467.5 * 0.16)


def test_bad_input_is_reported_and_leaves_no_bag(tmp_path, opencv_data, capsys):
    calib = write_simple_yaml(tmp_path / "calib.yaml", 1282, 1110)
    left, right = str(opencv_data / "aloeL.jpg"), str(opencv_data / "aloeR.jpg")
    out = tmp_path / "bag"

    assert make_bag.main([str(out), "--left", left, left, "--right", right, "--calib", str(calib)]) == 2
    assert "2 left and 1 right" in capsys.readouterr().err
    assert not out.exists()

    wrong = write_simple_yaml(tmp_path / "wrong.yaml", 640, 480)
    assert make_bag.main([str(out), "--left", left, "--right", right, "--calib", str(wrong)]) == 2
    assert "640x480" in capsys.readouterr().err and not out.exists()

    # the second ground-truth map has the wrong size: detected while writing the second pair
    small_gt = tmp_path / "gt_small.png"
    cv2.imwrite(str(small_gt), np.ones((10, 10), np.uint8))
    assert make_bag.main([str(out), "--left", left, left, "--right", right, right, "--calib", str(calib),
                          "--gt-disparity", str(opencv_data / "aloeGT.png"), str(small_gt), "--scale", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "pair 1" in err and "10x10" in err
    assert not out.exists()  # the half-written bag is removed

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert make_bag.main([str(out), "--left", left, "--right", right, "--calib", str(calib)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"  # an existing folder is never touched
