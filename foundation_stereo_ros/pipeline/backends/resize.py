"""Running a network at another size than the camera's: resize the pair, resize the disparity back.

The network sees the pair resized to its (width, height) (area filter when shrinking, bilinear
otherwise); its disparity is resized back to the camera resolution bilinearly and multiplied by
``camera width / network width``, so it is in camera pixels again. At the camera's own size the
network runs on the pair as it is. The same steps exist for host arrays (OpenCV) and for a
device tensor (``torch.nn.functional.interpolate``, imported on use: SGBM users need no torch).
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

import cv2
import numpy as np


def disparity_factor(width: int, network_width: int) -> float:
    """Network px -> camera px: how much wider the camera image is than the network input."""
    return width / network_width


def infer_at_network_size(infer: Callable[[np.ndarray, np.ndarray], np.ndarray], left: np.ndarray,
                          right: np.ndarray, network_size: Tuple[int, int], area: bool) -> np.ndarray:
    """(H, W) float32 disparity in camera px of ``infer`` run on the (H, W, 3) pair at
    ``network_size`` (width, height); ``area``: shrink with the area filter (else bilinear)."""
    h, w = left.shape[:2]
    nw, nh = network_size
    if (nw, nh) == (w, h):
        return infer(left, right)
    interp = cv2.INTER_AREA if area else cv2.INTER_LINEAR
    disparity = infer(cv2.resize(left, (nw, nh), interpolation=interp),
                      cv2.resize(right, (nw, nh), interpolation=interp))
    disparity = cv2.resize(disparity, (w, h), interpolation=cv2.INTER_LINEAR)
    disparity *= np.float32(disparity_factor(w, nw))
    return disparity


def infer_at_network_size_on_device(infer: Callable[[Any], Any], images: Any, network_size: Tuple[int, int],
                                    area: bool) -> Any:
    """:func:`infer_at_network_size` for a (2, 3, H, W) float tensor of the pair: ``infer`` maps
    (2, 3, h, w) to a (1, 1, h, w) float32 disparity; returns (1, 1, H, W) on the same device."""
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    nw, nh = network_size
    if (nw, nh) == (w, h):
        return infer(images)
    if area:
        pair = F.interpolate(images, size=(nh, nw), mode="area")
    else:
        pair = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False)
    disparity = infer(pair)  # (1, 1, nh, nw)
    return F.interpolate(disparity, size=(h, w), mode="bilinear", align_corners=False) * disparity_factor(w, nw)
