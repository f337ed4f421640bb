"""Rectification of stereo pairs on the host: remap tables per calibration, cached, and the remap.

A :class:`Rectifier` computes the tables of a :class:`~.calibration.StereoCalibration` once and
keeps them, so rectifying a frame is two ``cv2.remap`` (of four-channel images with OpenCV 5,
see the class).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from .calibration import CameraModel, StereoCalibration


#: Whether the host rectifies with float tables and four-channel images (OpenCV 5 and later) rather
#: than the fixed-point tables with three channels. OpenCV 5's remap has a vectorised kernel for
#: float maps and four channels: a pair of 480x640 images in 1.2-1.4 ms against 1.5-1.6 ms for the
#: fixed-point tables, on this project's 2-core VM (0.7 against 1.5-1.7 ms with warm caches). In
#: OpenCV 4.10 to 4.14 that form is 3-10 % slower than the fixed-point tables with three channels,
#: which stay the form there (README, "Speed and deployment").
FOUR_CHANNEL_FLOAT = int(cv2.__version__.split(".")[0]) >= 5


@dataclass(frozen=True, eq=False)
class RectificationMaps:
    """cv2.remap tables for both cameras, in one of two forms (``float_tables``): (map_x, map_y)
    float32 (H, W) source positions each, or OpenCV's fixed-point (CV_16SC2 positions,
    CV_16UC1 interpolation-table index) form of the same (positions rounded to 1/32 px).
    The float form is exact: the rectified image is OpenCV's float remap itself."""

    left: Tuple[np.ndarray, np.ndarray]
    right: Tuple[np.ndarray, np.ndarray]
    float_tables: bool = True

    def as_float(self) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
        """Both cameras' (map_x, map_y) float32 tables (converted from the fixed-point form if need be:
        the network-device path samples the same positions as the host)."""
        if self.float_tables:
            return self.left, self.right
        return tuple(cv2.convertMaps(m[0], m[1], cv2.CV_32FC1) for m in (self.left, self.right))


def _camera_maps(cam: CameraModel, map_type: int) -> Tuple[np.ndarray, np.ndarray]:
    new_k = cam.P[:, :3]
    if cam.is_fisheye():
        return cv2.fisheye.initUndistortRectifyMap(cam.K, cam.D[:4], cam.R, new_k, cam.size, map_type)
    d = cam.D if cam.D.size else np.zeros(5)
    return cv2.initUndistortRectifyMap(cam.K, d, cam.R, new_k, cam.size, map_type)


def rectification_maps(calibration: StereoCalibration, float_tables: bool = True) -> RectificationMaps:
    """Remap tables taking each raw image to its rectified image (K, D, R -> P)."""
    calibration.left.validate(for_rectification=True)
    calibration.right.validate(for_rectification=True)
    map_type = cv2.CV_32FC1 if float_tables else cv2.CV_16SC2
    return RectificationMaps(_camera_maps(calibration.left, map_type), _camera_maps(calibration.right, map_type),
                             float_tables)


class Rectifier:
    """Rectifies pairs; remap tables are computed once per calibration and cached (LRU of a few).

    Both rectified images are written into one (2, H, W, 3) array, which the network's upload
    takes as it is (no stacking copy). With ``four_channel`` (default :data:`FOUR_CHANNEL_FLOAT`)
    an 8-bit pair is remapped as four-channel images with float tables: each is widened to RGBA
    in a scratch buffer kept per thread (or decoded so in the first place, ``four_channel`` tells
    the decoder), remapped, and narrowed back; every channel value is that of a three-channel
    float remap. Otherwise the pair is remapped as it is with the fixed-point tables. OpenCV's
    remap already runs on every core; a second Python thread for the right image saved nothing
    measurable on this project's 2-core machine.
    """

    def __init__(self, cache_size: int = 4, four_channel: Optional[bool] = None) -> None:
        self._cache: "OrderedDict[bytes, RectificationMaps]" = OrderedDict()
        self._cache_size = cache_size
        self.four_channel = FOUR_CHANNEL_FLOAT if four_channel is None else bool(four_channel)
        self._scratch = threading.local()  # per thread: the stager and the worker may rectify at once
        self.maps_computed = 0  # how often tables were built: lets tests and diagnostics see the cache work

    def maps(self, calibration: StereoCalibration) -> RectificationMaps:
        maps = self._cache.get(calibration.key)
        if maps is None:
            maps = rectification_maps(calibration, float_tables=self.four_channel)
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
        h, w = x_l.shape[:2]
        channels = left.shape[2:]
        if left.dtype != np.uint8 or channels not in ((3,), (4,)) or (channels == (3,) and not maps.float_tables):
            out = np.empty((2, h, w) + channels, left.dtype)
            cv2.remap(left, x_l, y_l, cv2.INTER_LINEAR, dst=out[0])
            cv2.remap(right, x_r, y_r, cv2.INTER_LINEAR, dst=out[1])
            return out[0], out[1]
        out = np.empty((2, h, w, 3), np.uint8)
        rect = self._rgba_scratch("rect", (h, w))
        raw = self._rgba_scratch("raw", left.shape[:2]) if channels == (3,) else None
        for i, (image, x, y) in enumerate(((left, x_l, y_l), (right, x_r, y_r))):
            if raw is not None:
                image = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA, dst=raw[i])
            cv2.remap(image, x, y, cv2.INTER_LINEAR, dst=rect[i])
        cv2.cvtColor(rect.reshape(2 * h, w, 4), cv2.COLOR_RGBA2RGB, dst=out.reshape(2 * h, w, 3))
        return out[0], out[1]

    def _rgba_scratch(self, name: str, size: Tuple[int, int]) -> np.ndarray:
        """This thread's (2, h, w, 4) uint8 buffer ``name`` ('raw': the widened pair, 'rect': the
        remapped one), reused while the size stays: it stays in the cache and costs no allocation."""
        buffer = getattr(self._scratch, name, None)
        if buffer is None or buffer.shape[1:3] != size:
            buffer = np.empty((2,) + tuple(size) + (4,), np.uint8)
            setattr(self._scratch, name, buffer)
        return buffer


__all__ = ["FOUR_CHANNEL_FLOAT", "RectificationMaps", "Rectifier", "rectification_maps"]
