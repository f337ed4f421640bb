"""What the rectification's interpolation precision costs, on a real distorted calibration.

The host rectifies with OpenCV's fixed-point tables (CV_16SC2 source positions in 1/32 px and
the interpolation-weight table; several times faster than float maps); the network-device path
samples the same 1/32 px positions with float weights (``grid_sample``). Both are bounded here
against OpenCV's float remap, the reference of exact positions and weights. Measured on the 13
chessboard pairs of opencv-doc: fixed-point against float differs by at most 3 grey levels, 0.08
on average, 0.2% of the pixels by more than 1; the device path against the host by at most 1.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from foundation_stereo_ros.pipeline import Rectifier, StereoCalibration, make_camera_model
from foundation_stereo_ros.pipeline.device_geometry import DeviceRemap

from _chessboard import calibrate_stereo, chessboard_pairs

# The bounds leave room for other OpenCV versions' rounding; a change of interpolation (nearest,
# or positions off by a pixel) breaks them by an order of magnitude.
MAX_LEVELS, MEAN_LEVELS, SHARE_ABOVE_1 = 4, 0.15, 0.01


def test_fixed_point_rectification_is_within_bounds_of_opencvs_float_remap(opencv_data: Path):
    pairs = chessboard_pairs(opencv_data)
    images = [(cv2.imread(str(l), cv2.IMREAD_GRAYSCALE), cv2.imread(str(r), cv2.IMREAD_GRAYSCALE)) for l, r in pairs]
    rig = calibrate_stereo(images, rectify_flags=0)
    w, h = rig.size
    calibration = StereoCalibration(
        make_camera_model(w, h, rig.K1.reshape(-1), rig.D1.reshape(-1), rig.R1.reshape(-1), rig.P1.reshape(-1),
                          name="left"),
        make_camera_model(w, h, rig.K2.reshape(-1), rig.D2.reshape(-1), rig.R2.reshape(-1), rig.P2.reshape(-1),
                          name="right"))
    rectifier = Rectifier()
    maps = rectifier.maps(calibration)
    assert maps.left[0].dtype == np.int16 and maps.left[0].shape == (h, w, 2)  # the fixed-point form
    float_maps = [cv2.initUndistortRectifyMap(K, D, R, P[:, :3], (w, h), cv2.CV_32FC1)
                  for K, D, R, P in ((rig.K1, rig.D1, rig.R1, rig.P1), (rig.K2, rig.D2, rig.R2, rig.P2))]
    # The positions: 1/32 px steps, so within 1/64 px of the float map's.
    for fixed, exact in zip((maps.left, maps.right), float_maps):
        x, y = cv2.convertMaps(fixed[0], fixed[1], cv2.CV_32FC1)
        assert max(np.abs(x - exact[0]).max(), np.abs(y - exact[1]).max()) <= 1 / 64 + 1e-4
    device = [DeviceRemap(*cv2.convertMaps(m[0], m[1], cv2.CV_32FC1), source_size=(h, w))
              for m in (maps.left, maps.right)]
    host_vs_float, device_vs_host = [], []
    for raw_left, raw_right in images:
        left3, right3 = (cv2.cvtColor(g, cv2.COLOR_GRAY2RGB) for g in (raw_left, raw_right))
        rect = rectifier.rectify(left3, right3, calibration)
        for side, raw, exact, remap in ((0, raw_left, float_maps[0], device[0]), (1, raw_right, float_maps[1],
                                                                                   device[1])):
            host = rect[side][..., 0].astype(np.int16)
            reference = cv2.remap(raw, exact[0], exact[1], cv2.INTER_LINEAR).astype(np.int16)
            on_device = remap(torch.from_numpy(raw).float()[None, None]).round()[0, 0].numpy().astype(np.int16)
            host_vs_float.append(np.abs(host - reference))
            device_vs_host.append(np.abs(on_device - host))
    diff = np.stack(host_vs_float)
    print(f"\nfixed-point vs float remap over {len(diff)} images: max {diff.max()}, mean {diff.mean():.3f}, "
          f"share > 1: {(diff > 1).mean():.4f}; device vs host: max {np.max(device_vs_host)}")
    assert diff.max() <= MAX_LEVELS
    assert diff.mean() <= MEAN_LEVELS
    assert (diff > 1).mean() <= SHARE_ABOVE_1
    assert np.max(device_vs_host) <= 2
