"""Real data through the running node: the Middlebury Aloe pair (sgbm against its ground truth) and
a real chessboard calibration (rectified corners share rows), both from Debian's opencv-doc."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from foundation_stereo_ros.ros.conversions import disparity_from_msg, image_to_array, numpy_to_image

from _chessboard import calibrate_stereo, chessboard_corners, chessboard_pairs
from _ros_helpers import NodeHarness, camera_info, rectified_infos

# Measured 0.678 at half resolution with the node's default SGBM settings (128 disparities);
# the floor leaves room for OpenCV version differences but catches a broken pipeline.
ALOE_WITHIN_3PX_FLOOR = 0.60


def test_aloe_sgbm_share_within_3px_of_ground_truth(opencv_data: Path):
    left = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeL.jpg")), cv2.COLOR_BGR2RGB)
    right = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeR.jpg")), cv2.COLOR_BGR2RGB)
    gt = cv2.imread(str(opencv_data / "aloeGT.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
    assert gt.shape == left.shape[:2]  # aloeGT.png: disparity in px at the full image size, 0 = unknown
    # Half resolution keeps the test quick; disparities halve with the width.
    h, w = left.shape[0] // 2, left.shape[1] // 2
    left = cv2.resize(left, (w, h), interpolation=cv2.INTER_AREA)
    right = cv2.resize(right, (w, h), interpolation=cv2.INTER_AREA)
    gt = cv2.resize(gt, (w, h), interpolation=cv2.INTER_NEAREST) / 2.0
    known = gt > 0

    node = NodeHarness(dict(backend="sgbm", sgbm_num_disparities=128, qos_reliability="reliable"),
                       namespace="/aloe", subscribe=("disparity", "depth"))
    try:
        f, baseline = 700.0, 0.16
        stamp = time.time_ns()
        node.publish_arrays(left, right, "rgb8", rectified_infos(w, h, f, baseline, w / 2, w / 2, h / 2), stamp)
        out = node.wait_outputs(stamp, ["disparity", "depth"], timeout_s=60.0)
    finally:
        node.close()
    disp = disparity_from_msg(out["disparity"])  # delta_cx = 0: published = raw disparity
    assert disp.shape == gt.shape
    within = known & np.isfinite(disp) & (np.abs(disp - gt) <= 3.0)
    share = within.sum() / known.sum()  # pixels without an estimate count as misses
    completeness = (known & np.isfinite(disp)).sum() / known.sum()
    print(f"\nAloe (half size) through stereo_depth_node/sgbm: {share:.1%} of ground-truth pixels within 3 px, "
          f"{completeness:.1%} with a disparity")
    assert share >= ALOE_WITHIN_3PX_FLOOR
    depth = image_to_array(out["depth"])
    ok = np.isfinite(depth)
    np.testing.assert_allclose(depth[ok], f * baseline / disp[ok], rtol=1e-5)


@pytest.mark.slow
def test_real_chessboard_calibration_rectifies_corners_onto_shared_rows(opencv_data: Path):
    pairs = chessboard_pairs(opencv_data)
    assert len(pairs) >= 13
    images = [(cv2.imread(str(l), cv2.IMREAD_GRAYSCALE), cv2.imread(str(r), cv2.IMREAD_GRAYSCALE)) for l, r in pairs]
    # rectify_flags=0: the rectified principal points differ (delta_cx != 0), as for a real verged rig.
    rig = calibrate_stereo(images, rectify_flags=0)
    assert rig.views >= 10
    rms, T, P1, P2 = rig.rms, rig.T, rig.P1, rig.P2
    size = rig.size
    info_l = camera_info(size[0], size[1], rig.K1, rig.D1, rig.R1, P1)
    info_r = camera_info(size[0], size[1], rig.K2, rig.D2, rig.R2, P2)

    node = NodeHarness(dict(backend="sgbm", rectify="auto", qos_reliability="reliable"), namespace="/chessboard",
                       subscribe=("left_rect/image", "right_rect/image", "disparity"))
    rows, raw_rows = [], []
    try:
        for l, r in images:
            stamp = time.time_ns()
            node.publish(numpy_to_image(l, "mono8"), numpy_to_image(r, "mono8"), info_l, info_r, stamp)
            out = node.wait_outputs(stamp, ["left_rect/image", "right_rect/image", "disparity"])
            rect_l, rect_r = image_to_array(out["left_rect/image"]), image_to_array(out["right_rect/image"])
            assert out["left_rect/image"].encoding == "mono8" and rect_l.shape == l.shape
            assert not np.array_equal(rect_l, l)  # distortion present: 'auto' rectified
            cl, cr = chessboard_corners(rect_l), chessboard_corners(rect_r)
            if cl is not None and cr is not None:
                rows.append(np.abs(cl[:, 1] - cr[:, 1]))
            cl0, cr0 = chessboard_corners(l), chessboard_corners(r)
            if cl0 is not None and cr0 is not None:
                raw_rows.append(np.abs(cl0[:, 1] - cr0[:, 1]))
        maps_built = node.node.processor.rectifier.maps_computed
        disparity = out["disparity"]
    finally:
        node.close()
    assert maps_built == 1  # one calibration: maps computed once for all frames
    assert disparity.t == pytest.approx(float(np.linalg.norm(T)), rel=1e-3)
    assert disparity.f == pytest.approx(P2[0, 0])
    assert disparity.min_disparity == pytest.approx(0 - (P1[0, 2] - P2[0, 2]))
    assert len(rows) >= 10
    dy, dy_raw = np.concatenate(rows), np.concatenate(raw_rows)
    print(f"\nchessboard (stereoCalibrate rms {rms:.3f} px): rectified |dy| mean {dy.mean():.3f}, median "
          f"{np.median(dy):.3f}, p98 {np.percentile(dy, 98):.3f}, max {dy.max():.3f} px over {dy.size} corners; "
          f"raw |dy| mean {dy_raw.mean():.2f} px")
    assert dy_raw.mean() > 5.0  # the raw pair is far from row-aligned: the check below is not trivial
    assert dy.mean() < 0.25
    assert np.median(dy) < 0.2
    assert np.percentile(dy, 98) < 1.0
