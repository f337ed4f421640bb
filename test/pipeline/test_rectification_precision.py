"""What the rectification's interpolation precision is, on a real distorted calibration.

With OpenCV 5 the host rectifies with float tables (OpenCV's float remap, of four-channel
images): it is that remap exactly, which this test checks against a plain three-channel
``cv2.remap`` with ``cv2.initUndistortRectifyMap``'s float maps. With OpenCV 4 (and before issue
17 everywhere) it uses the fixed-point tables (CV_16SC2 source positions in 1/32 px and an
interpolation-weight table), faster there; both forms are checked whatever OpenCV runs the
test, and their difference is bounded. The network-device path samples the same positions with
``grid_sample``. Measured on the 13 chessboard pairs of opencv-doc: float against fixed-point
differs by at most 3 grey levels, 0.08 on average, 0.2% of the pixels by more than 1; the device
path against the host by at most 1.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from foundation_stereo_ros.pipeline import Rectifier, StereoCalibration, make_camera_model
from foundation_stereo_ros.pipeline.device_geometry import DeviceRemap

from _chessboard import calibrate_stereo, chessboard_pairs

# The bounds leave room for other OpenCV versions' rounding; a change of interpolation (nearest,
# or positions off by a pixel) breaks them by an order of magnitude.
MAX_LEVELS, MEAN_LEVELS, SHARE_ABOVE_1 = 4, 0.15, 0.01


@pytest.mark.parametrize("four_channel", [True, False])
def test_rectification_is_opencvs_float_remap_and_within_bounds_of_the_fixed_point_tables(opencv_data: Path,
                                                                                           four_channel: bool):
    pairs = chessboard_pairs(opencv_data)
    images = [(cv2.imread(str(l), cv2.IMREAD_GRAYSCALE), cv2.imread(str(r), cv2.IMREAD_GRAYSCALE)) for l, r in pairs]
    rig = calibrate_stereo(images, rectify_flags=0)
    w, h = rig.size
    calibration = StereoCalibration(
        make_camera_model(w, h, rig.K1.reshape(-1), rig.D1.reshape(-1), rig.R1.reshape(-1), rig.P1.reshape(-1),
                          name="left"),
        make_camera_model(w, h, rig.K2.reshape(-1), rig.D2.reshape(-1), rig.R2.reshape(-1), rig.P2.reshape(-1),
                          name="right"))
    rectifier = Rectifier(four_channel=four_channel)
    maps = rectifier.maps(calibration)
    cameras = ((rig.K1, rig.D1, rig.R1, rig.P1), (rig.K2, rig.D2, rig.R2, rig.P2))
    float_maps = [cv2.initUndistortRectifyMap(K, D, R, P[:, :3], (w, h), cv2.CV_32FC1) for K, D, R, P in cameras]
    fixed_maps = [cv2.initUndistortRectifyMap(K, D, R, P[:, :3], (w, h), cv2.CV_16SC2) for K, D, R, P in cameras]
    assert maps.float_tables == four_channel
    for ours, table in zip((maps.left, maps.right), float_maps if four_channel else fixed_maps):
        np.testing.assert_array_equal(ours[0], table[0])
        np.testing.assert_array_equal(ours[1], table[1])
    device = [DeviceRemap(*m, source_size=(h, w)) for m in maps.as_float()]
    float_vs_fixed, device_vs_host = [], []
    rng = np.random.default_rng(0)
    for raw_left, raw_right in images:
        # Colour: the chessboard's grey levels in three channels, each a little different.
        left3, right3 = (np.clip(cv2.cvtColor(g, cv2.COLOR_GRAY2RGB).astype(np.int16)
                                 + rng.integers(-20, 21, (1, 1, 3)), 0, 255).astype(np.uint8) for g in (raw_left, raw_right))
        rect = rectifier.rectify(left3, right3, calibration)
        rect_rgba = rectifier.rectify(cv2.cvtColor(left3, cv2.COLOR_RGB2RGBA), cv2.cvtColor(right3, cv2.COLOR_RGB2RGBA),
                                      calibration)  # decoded as RGBA for the rectifier: the same RGB images
        for side, raw, exact, fixed, remap in ((0, left3, float_maps[0], fixed_maps[0], device[0]),
                                               (1, right3, float_maps[1], fixed_maps[1], device[1])):
            host = rect[side]
            assert host.shape == raw.shape and host.dtype == np.uint8
            np.testing.assert_array_equal(host, cv2.remap(raw, *(exact if four_channel else fixed), cv2.INTER_LINEAR))
            np.testing.assert_array_equal(rect_rgba[side], host)
            with_float = cv2.remap(raw, exact[0], exact[1], cv2.INTER_LINEAR).astype(np.int16)
            with_fixed = cv2.remap(raw, fixed[0], fixed[1], cv2.INTER_LINEAR).astype(np.int16)
            on_device = remap(torch.from_numpy(raw).permute(2, 0, 1).float()[None]).round()[0].permute(1, 2, 0)
            float_vs_fixed.append(np.abs(with_float - with_fixed))
            device_vs_host.append(np.abs(on_device.numpy().astype(np.int16) - host))
    diff = np.stack(float_vs_fixed)
    print(f"\nfloat vs fixed-point tables over {len(diff)} images: max {diff.max()}, mean "
          f"{diff.mean():.3f}, share > 1: {(diff > 1).mean():.4f}; device vs host: max {np.max(device_vs_host)}")
    assert diff.max() <= MAX_LEVELS
    assert diff.mean() <= MEAN_LEVELS
    assert (diff > 1).mean() <= SHARE_ABOVE_1
    assert np.max(device_vs_host) <= 1
