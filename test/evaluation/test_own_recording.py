"""A user's own recording, end to end: a bag with raw (distorted, unrectified) JPEG-compressed
images and the CameraInfo of an OpenCV calibration goes through `foundation-stereo-eval --backend
sgbm` with `rectify: auto` and comes out as a report.

The recording is opencv-doc's real chessboard stereo pairs. Ten pairs calibrate the rig
(cv2.stereoCalibrate, cv2.stereoRectify); three other pairs are the recording, their JPEG files
stored byte for byte as sensor_msgs/CompressedImage, as a camera driver with
compressed_image_transport would record them. The checks use the pairs' own chessboard corners,
found here in images rectified here with OpenCV: the tool's rectified left image puts the corners
where that rectification does, on the rows of the right image's corners, and its disparity at the
corners is their x_left - x_right."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from foundation_stereo_ros.evaluation import bag_io as B
from foundation_stereo_ros.pipeline.calibration import make_camera_model
from foundation_stereo_ros.tools import evaluate

from _chessboard import StereoRig, calibrate_stereo, chessboard_corners, chessboard_pairs, read_grey
from _eval_helpers import disparity_values, read_messages

HELD_OUT = (0, 6, 12)  # left01, left07, left14: the recording; the other ten calibrate
NS = "/stereo_camera"
FRAMES = ("stereo_camera_left_optical_frame", "stereo_camera_right_optical_frame")
START_NS = 1_700_000_000_000_000_000
NUM_DISPARITIES = 192  # the held-out pairs have x_left - x_right of 104 to 169 px


def camera_models(rig: StereoRig):
    w, h = rig.size
    return (make_camera_model(w, h, rig.K1.ravel(), rig.D1, rig.R1.ravel(), rig.P1.ravel(), "plumb_bob", "left"),
            make_camera_model(w, h, rig.K2.ravel(), rig.D2, rig.R2.ravel(), rig.P2.ravel(), "plumb_bob", "right"))


def write_recording(path: Path, files, rig: StereoRig, rate_hz: float = 15.0) -> None:
    """The pairs' JPEG files as CompressedImage on <ns>/{left,right}/image_raw/compressed with their
    CameraInfo, stamped at ``rate_hz``."""
    cls = B.typestore().types[B.COMPRESSED_IMAGE]
    cams = camera_models(rig)
    with B.StereoBagWriter(path, storage="mcap") as wr:
        for i, pair in enumerate(files):
            stamp = START_NS + int(i * 1e9 / rate_hz)
            for side, jpeg, cam, frame in zip(("left", "right"), pair, cams, FRAMES):
                data = np.frombuffer(jpeg.read_bytes(), np.uint8)  # grey JPEGs, as recorded
                wr.write(f"{NS}/{side}/image_raw/compressed",
                         cls(header=B.header(stamp, frame), format="mono8; jpeg compressed mono8", data=data))
                wr.write(f"{NS}/{side}/camera_info", B.camera_info_msg(cam, stamp, frame))


def rectified_corners(rig: StereoRig, left: np.ndarray, right: np.ndarray):
    """Corners of the pair rectified here with OpenCV (independently of the package's rectifier)."""
    out = []
    for K, D, R, P, img in ((rig.K1, rig.D1, rig.R1, rig.P1, left), (rig.K2, rig.D2, rig.R2, rig.P2, right)):
        mx, my = cv2.initUndistortRectifyMap(K, D, R, P[:, :3], rig.size, cv2.CV_32FC1)
        out.append(chessboard_corners(cv2.remap(img, mx, my, cv2.INTER_LINEAR)))
    return out


def test_compressed_raw_recording_with_calibration_is_evaluated(tmp_path, opencv_data, capsys):
    pairs = chessboard_pairs(opencv_data)
    assert len(pairs) == 13  # left10/right10 are not in opencv-doc
    images = [(read_grey(l), read_grey(r)) for l, r in pairs]
    rig = calibrate_stereo([im for i, im in enumerate(images) if i not in HELD_OUT])
    assert rig.views == 10 and rig.rms < 1.0
    assert np.abs(rig.D1).max() > 0.1  # a real lens: the raw images must be undistorted
    delta_cx = float(rig.P1[0, 2] - rig.P2[0, 2])
    assert abs(delta_cx) > 1.0  # a verged rig (stereoRectify flags=0): the published disparity is offset

    bag = tmp_path / "my_robot"
    write_recording(bag, [pairs[i] for i in HELD_OUT], rig)
    out, out_bag = tmp_path / "report", tmp_path / "outputs"
    rc = evaluate.main([str(bag), "--backend", "sgbm", "--set", "rectify=auto",
                        "--set", f"sgbm_num_disparities={NUM_DISPARITIES}", "-o", str(out),
                        "--output-bag", str(out_bag), "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err

    # The report: every frame processed by the node's pipeline, none skipped.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["topics"]["left_image"] == f"{NS}/left/image_raw/compressed"
    assert summary["meta"]["topics"]["right_info"] == f"{NS}/right/camera_info"
    sgbm = summary["backends"]["sgbm"]
    assert summary["frames"] == 3 and sgbm["frames"] == 3 and sgbm["skipped"] == 0, sgbm["problems"]
    assert not summary["has_ground_truth"] and sgbm["metrics"]["completeness"] > 30.0
    rows = list(csv.DictReader(open(out / "frames.csv")))
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert (out / "report.html").is_file() and "sgbm" in (out / "report.md").read_text()

    # What the node would publish: the camera namespace of the compressed input, raw Images.
    outputs = read_messages(out_bag)
    rect_msgs = [m for _, m in outputs[f"{NS}/left/image_rect"]]
    disp_msgs = [m for _, m in outputs[f"{NS}/disparity"]]
    assert len(rect_msgs) == len(disp_msgs) == 3
    dy, dx_ref, d_err = [], [], []
    for k, i in enumerate(HELD_OUT):
        left, right = images[i]
        rect = rect_msgs[k]
        assert (rect.encoding, rect.width, rect.height) == ("rgb8", 640, 480)
        rect_left = np.asarray(rect.data, np.uint8).reshape(480, 640, 3)[:, :, 0]  # grey: R = G = B
        assert not np.array_equal(rect_left, left)  # 'auto' rectified the distorted images
        ref_l, ref_r = rectified_corners(rig, left, right)
        got_l = chessboard_corners(rect_left)
        assert ref_l is not None and ref_r is not None and got_l is not None, pairs[i]
        # The JPEG was decoded and rectified with the bag's CameraInfo exactly as OpenCV does it here.
        np.testing.assert_allclose(got_l, ref_l, atol=0.5)
        dy.append(np.abs(got_l[:, 1] - ref_r[:, 1]))
        # The published disparity at the corners is their x_left - x_right - delta_cx.
        d = disparity_values(disp_msgs[k])
        assert disp_msgs[k].f == pytest.approx(rig.P2[0, 0])
        assert disp_msgs[k].t == pytest.approx(float(np.linalg.norm(rig.T)), rel=1e-3)
        x, y = np.round(got_l).astype(int).T
        d_err.append(d[y, x] + delta_cx - (ref_l[:, 0] - ref_r[:, 0]))
        dx_ref.append(ref_l[:, 0] - ref_r[:, 0])
    dy, d_err = np.concatenate(dy), np.concatenate(d_err)
    print(f"\nheld-out chessboard pairs (stereoCalibrate rms {rig.rms:.3f} px on {rig.views} pairs): rectified "
          f"|dy| mean {dy.mean():.3f}, max {dy.max():.3f} px; sgbm disparity error at {d_err.size} corners: "
          f"median |e| {np.nanmedian(np.abs(d_err)):.3f} px, {np.isnan(d_err).mean():.0%} without a disparity")
    assert dy.mean() < 0.3 and dy.max() < 1.0  # on shared rows, within a pixel
    found = np.isfinite(d_err)
    assert found.mean() > 0.8
    assert np.median(np.abs(d_err[found])) < 1.0 and (np.abs(d_err[found]) < 2.0).mean() > 0.9
    assert np.concatenate(dx_ref).min() > 100.0  # the disparities checked are far from 0: not trivially met
