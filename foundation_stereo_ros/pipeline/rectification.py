"""Rectification of stereo pairs on the host: remap tables per calibration, cached, and the remap.

A :class:`Rectifier` computes the tables of a :class:`~.calibration.StereoCalibration` once and
keeps them, so rectifying a frame is two ``cv2.remap`` (of four-channel images, see the class).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

from .calibration import CameraModel, StereoCalibration


@dataclass(frozen=True, eq=False)
class RectificationMaps:
    """cv2.remap tables for both cameras: (map_x, map_y) float32 (H, W) source positions each.

    Float tables, not OpenCV's fixed-point CV_16SC2 form: since OpenCV 4.11 remap has vectorised
    float-map kernels, and with four-channel images (:class:`Rectifier`) they are twice as fast
    as the fixed-point tables with three (README, "Speed and deployment"), and exact: the
    rectified image is OpenCV's float remap itself. The network-device path samples the same
    positions (:class:`~.device_geometry.DeviceRemap`).
    """

    left: Tuple[np.ndarray, np.ndarray]
    right: Tuple[np.ndarray, np.ndarray]


def _camera_maps(cam: CameraModel) -> Tuple[np.ndarray, np.ndarray]:
    new_k = cam.P[:, :3]
    if cam.is_fisheye():
        return cv2.fisheye.initUndistortRectifyMap(cam.K, cam.D[:4], cam.R, new_k, cam.size, cv2.CV_32FC1)
    d = cam.D if cam.D.size else np.zeros(5)
    return cv2.initUndistortRectifyMap(cam.K, d, cam.R, new_k, cam.size, cv2.CV_32FC1)


def rectification_maps(calibration: StereoCalibration) -> RectificationMaps:
    """Remap tables taking each raw image to its rectified image (K, D, R -> P)."""
    calibration.left.validate(for_rectification=True)
    calibration.right.validate(for_rectification=True)
    return RectificationMaps(_camera_maps(calibration.left), _camera_maps(calibration.right))


class Rectifier:
    """Rectifies pairs; remap tables are computed once per calibration and cached (LRU of a few).

    A pair of 8-bit three-channel images is rectified as four-channel images: each is widened to
    RGBA in a scratch buffer kept per thread (or decoded so in the first place), remapped, and
    narrowed back into one (2, H, W, 3) array, which the network's upload takes as it is (no stacking copy). OpenCV's float-map
    remap of four-channel images is more than twice as fast as that of three-channel ones, and
    the two conversions cost a few percent of that; every channel value is the same as a
    three-channel remap's. OpenCV's remap already runs on every core; a second Python thread for
    the right image saved nothing measurable on this project's 2-core machine.
    """

    def __init__(self, cache_size: int = 4) -> None:
        self._cache: "OrderedDict[bytes, RectificationMaps]" = OrderedDict()
        self._cache_size = cache_size
        self._scratch = threading.local()  # per thread: the stager and the worker may rectify at once
        self.maps_computed = 0  # how often tables were built: lets tests and diagnostics see the cache work

    def maps(self, calibration: StereoCalibration) -> RectificationMaps:
        maps = self._cache.get(calibration.key)
        if maps is None:
            maps = rectification_maps(calibration)
            self.maps_computed += 1
            self._cache[calibration.key] = maps
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(calibration.key)
        return maps

    def rectify(self, left: np.ndarray, right: np.ndarray,
                calibration: StereoCalibration) -> Tuple[np.ndarray, np.ndarray]:
        """Both images remapped to the rectified geometry of ``calibration`` (bilinear, zeros
        outside the raw image): the two halves of one (2, H, W, C) array (see the class docstring).
        An 8-bit RGBA pair (decoded so, :func:`~.image.decode_stereo_pair`) gives RGB images."""
        maps = self.maps(calibration)
        (x_l, y_l), (x_r, y_r) = maps.left, maps.right
        if left.dtype != right.dtype or left.shape[2:] != right.shape[2:] or x_l.shape != x_r.shape:
            return (cv2.remap(left, x_l, y_l, cv2.INTER_LINEAR), cv2.remap(right, x_r, y_r, cv2.INTER_LINEAR))
        h, w = x_l.shape
        channels = left.shape[2:]
        if left.dtype != np.uint8 or channels not in ((3,), (4,)):
            out = np.empty((2, h, w) + channels, left.dtype)
            cv2.remap(left, x_l, y_l, cv2.INTER_LINEAR, dst=out[0])
            cv2.remap(right, x_r, y_r, cv2.INTER_LINEAR, dst=out[1])
            return out[0], out[1]
        out = np.empty((2, h, w, 3), np.uint8)
        raw, rect = self._rgba_scratch(left.shape[:2], (h, w))
        for i, (image, x, y) in enumerate(((left, x_l, y_l), (right, x_r, y_r))):
            if channels == (3,):
                image = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA, dst=raw[i])
            cv2.remap(image, x, y, cv2.INTER_LINEAR, dst=rect[i])
        cv2.cvtColor(rect.reshape(2 * h, w, 4), cv2.COLOR_RGBA2RGB, dst=out.reshape(2 * h, w, 3))
        return out[0], out[1]

    def _rgba_scratch(self, raw_size: Tuple[int, int], size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """This thread's (2, h, w, 4) uint8 buffers for the raw and the rectified RGBA pair (reused
        while the sizes stay: they stay in the cache and cost no allocation)."""
        scratch = self._scratch
        if getattr(scratch, "sizes", None) != (raw_size, size):
            scratch.raw = np.empty((2,) + raw_size + (4,), np.uint8)
            scratch.rect = np.empty((2,) + size + (4,), np.uint8)
            scratch.sizes = (raw_size, size)
        return scratch.raw, scratch.rect


__all__ = ["RectificationMaps", "Rectifier", "rectification_maps"]
