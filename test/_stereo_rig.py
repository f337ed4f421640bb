"""A synthetic stereo rig's calibration for pipeline tests: a slightly distorted, slightly rotated
pair (or a plain one) whose rectified principal points differ by ``delta_cx``."""
from __future__ import annotations

import cv2
import numpy as np

from foundation_stereo_ros.pipeline import StereoCalibration, make_camera_model


def rig_calibration(width: int, height: int, f_px: float, baseline: float, distorted: bool,
                    delta_cx: float = 3.0) -> StereoCalibration:
    k = [f_px + 3, 0, width / 2 - 1.5, 0, f_px + 2, height / 2 + 1.0, 0, 0, 1]
    d = [-0.15, 0.03, 0.001, -0.0005, 0.0] if distorted else [0.0] * 5
    rot = cv2.Rodrigues(np.array([0.01, -0.015, 0.004]))[0] if distorted else np.eye(3)
    left = make_camera_model(width, height, k, d, rot.reshape(-1),
                             [f_px, 0, width / 2, 0, 0, f_px, height / 2, 0, 0, 0, 1, 0])
    right = make_camera_model(width, height, k, d, rot.T.reshape(-1),
                              [f_px, 0, width / 2 - delta_cx, -f_px * baseline, 0, f_px, height / 2, 0, 0, 0, 1, 0])
    return StereoCalibration(left, right)
