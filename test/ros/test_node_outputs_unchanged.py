"""Real data through the running node: every published output, byte for byte, equals what the
previous implementation built (issue 17 made the node's own work cheaper, not different).

The references below are the previous formulas, written out here on purpose: depth ``f * B / d`` with its invalid rules,
points from float32 rays, colour packed as ``0x00RRGGBB`` by shifts, the disparity's invalid
pixels filled by ``np.where``, every payload a plain copy of the array's bytes. The data: the
Middlebury Aloe pair (colour, already rectified) and a real chessboard calibration (grey,
distorted, so every frame is remapped), both from Debian's opencv-doc.

The one output that changed is the rectified image, by the interpolation precision alone: with
OpenCV 5 it is now exactly OpenCV's float remap (``cv2.initUndistortRectifyMap`` float tables),
where it was the fixed-point tables' approximation of it (test_rectification_precision bounds
that change); with OpenCV 4 it is the fixed-point tables' image, as before.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict

import cv2
import numpy as np

from foundation_stereo_ros.pipeline.rectification import FOUR_CHANNEL_FLOAT
from foundation_stereo_ros.ros.conversions import disparity_from_msg, image_to_array, numpy_to_image

from _chessboard import calibrate_stereo, chessboard_pairs
from _ros_helpers import NodeHarness, camera_info, rectified_infos

OUTPUTS = ("disparity", "depth", "points2", "left_rect/image", "right_rect/image")


def previous_depth(disparity: np.ndarray, f: float, baseline: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        depth = np.float32(f * baseline) / disparity
        bad = ~((depth > 0) & np.isfinite(depth))
    depth[bad] = np.nan
    return depth


def previous_cloud(depth: np.ndarray, rgb: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    h, w = depth.shape
    xr = ((np.arange(w, dtype=np.float64) - cx) / fx).astype(np.float32)[None, :]
    yr = ((np.arange(h, dtype=np.float64) - cy) / fy).astype(np.float32)[:, None]
    cloud = np.empty((h, w, 4), np.float32)
    np.multiply(depth, xr, out=cloud[..., 0])
    np.multiply(depth, yr, out=cloud[..., 1])
    cloud[..., 2] = depth
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    cloud[..., 3] = packed.view(np.float32)
    return cloud


def assert_outputs_are_the_previous_ones(out: Dict[str, object], left_rgb: np.ndarray, f: float, baseline: float,
                                         fx: float, fy: float, cx: float, cy: float) -> None:
    """``out``: one frame's messages; ``left_rgb``: the left image the previous implementation matched."""
    disparity_msg = out["disparity"]
    d = disparity_from_msg(disparity_msg)  # NaN where invalid: the result's disparity
    assert np.isfinite(d).mean() > 0.3  # a real match, not an empty frame
    filled = np.where(np.isnan(d), np.float32(disparity_msg.min_disparity - 1.0), d).astype(np.float32)
    assert bytes(disparity_msg.image.data) == filled.tobytes()
    depth = previous_depth(d, f, baseline)
    assert bytes(out["depth"].data) == depth.tobytes()
    cloud = out["points2"]
    assert (cloud.height, cloud.width, cloud.point_step) == (depth.shape[0], depth.shape[1], 16)
    assert bytes(cloud.data) == previous_cloud(depth, left_rgb, fx, fy, cx, cy).tobytes()


def test_aloe_outputs_are_byte_identical_to_the_previous_implementation(opencv_data: Path):
    left = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeL.jpg")), cv2.COLOR_BGR2RGB)
    right = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeR.jpg")), cv2.COLOR_BGR2RGB)
    h, w = left.shape[0] // 2, left.shape[1] // 2
    left = cv2.resize(left, (w, h), interpolation=cv2.INTER_AREA)
    right = cv2.resize(right, (w, h), interpolation=cv2.INTER_AREA)
    f, baseline, cx_left, cx_right = 700.0, 0.16, w / 2 + 3.0, w / 2  # delta_cx 3 px: the shift applies
    node = NodeHarness(dict(backend="sgbm", sgbm_num_disparities=128, qos_reliability="reliable"),
                       namespace="/aloe_unchanged", subscribe=OUTPUTS)
    try:
        stamp = time.time_ns()
        node.publish_arrays(left, right, "rgb8", rectified_infos(w, h, f, baseline, cx_left, cx_right, h / 2), stamp)
        out = node.wait_outputs(stamp, list(OUTPUTS), timeout_s=60.0)
    finally:
        node.close()
    # Already rectified (no distortion, no rotation): the images are published as they came.
    assert bytes(out["left_rect/image"].data) == left.tobytes()
    assert bytes(out["right_rect/image"].data) == right.tobytes()
    assert_outputs_are_the_previous_ones(out, left, f, baseline, f, f, cx_left, h / 2)


def test_chessboard_outputs_through_rectification_are_byte_identical_to_the_previous_implementation(
        opencv_data: Path):
    pairs = chessboard_pairs(opencv_data)
    images = [(cv2.imread(str(l), cv2.IMREAD_GRAYSCALE), cv2.imread(str(r), cv2.IMREAD_GRAYSCALE)) for l, r in pairs]
    rig = calibrate_stereo(images, rectify_flags=0)  # distorted and rotated: every frame is remapped
    size = rig.size
    map_type = cv2.CV_32FC1 if FOUR_CHANNEL_FLOAT else cv2.CV_16SC2  # the host's form with this OpenCV
    maps = [cv2.initUndistortRectifyMap(K, D, R, P[:, :3], size, map_type)
            for K, D, R, P in ((rig.K1, rig.D1, rig.R1, rig.P1), (rig.K2, rig.D2, rig.R2, rig.P2))]
    infos = (camera_info(size[0], size[1], rig.K1, rig.D1, rig.R1, rig.P1),
             camera_info(size[0], size[1], rig.K2, rig.D2, rig.R2, rig.P2))
    f, baseline = rig.P2[0, 0], -rig.P2[0, 3] / rig.P2[0, 0]
    node = NodeHarness(dict(backend="sgbm", rectify="auto", qos_reliability="reliable"),
                       namespace="/chessboard_unchanged", subscribe=OUTPUTS)
    try:
        for raw_left, raw_right in images[:3]:
            stamp = time.time_ns()
            node.publish(numpy_to_image(raw_left, "mono8"), numpy_to_image(raw_right, "mono8"), *infos, stamp)
            out = node.wait_outputs(stamp, list(OUTPUTS), timeout_s=60.0)
            rect_left = cv2.remap(raw_left, maps[0][0], maps[0][1], cv2.INTER_LINEAR)
            rect_right = cv2.remap(raw_right, maps[1][0], maps[1][1], cv2.INTER_LINEAR)
            assert not np.array_equal(rect_left, raw_left)  # rectification did something
            np.testing.assert_array_equal(image_to_array(out["left_rect/image"]), rect_left)
            np.testing.assert_array_equal(image_to_array(out["right_rect/image"]), rect_right)
            assert_outputs_are_the_previous_ones(out, cv2.cvtColor(rect_left, cv2.COLOR_GRAY2RGB), f, baseline,
                                                 rig.P1[0, 0], rig.P1[1, 1], rig.P1[0, 2], rig.P1[1, 2])
    finally:
        node.close()
