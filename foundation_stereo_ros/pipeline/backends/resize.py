"""Running a network at another size than the camera's: resize the pair, resize the disparity back.

The network sees the pair resized to its (width, height) (area filter when shrinking, bilinear
otherwise); its disparity is resized back to the camera resolution bilinearly and multiplied by
``camera width / network width``, so it is in camera pixels again. At the camera's own size the
network runs on the pair as it is. The same steps exist for host arrays (OpenCV) and for device
tensors (``torch.nn.functional.interpolate``, imported on use: SGBM users need no torch); each
step takes a batch as well as one image, image by image, so a batch gives what its members give
alone.
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

import cv2
import numpy as np


def disparity_factor(width: int, network_width: int) -> float:
    """Network px -> camera px: how much wider the camera image is than the network input."""
    return width / network_width


def images_to_network_size(images: Sequence[np.ndarray], network_size: Tuple[int, int],
                           area: bool) -> List[np.ndarray]:
    """(H, W, 3) images resized to ``network_size`` (width, height); ``area``: the area filter
    (shrinking), else bilinear. Images already at that size are returned as they are."""
    interp = cv2.INTER_AREA if area else cv2.INTER_LINEAR
    return [image if image.shape[1::-1] == tuple(network_size) else
            cv2.resize(image, tuple(network_size), interpolation=interp) for image in images]


def disparity_to_camera_size(disparity: np.ndarray, camera_size: Tuple[int, int]) -> np.ndarray:
    """(h, w) float32 disparity in network px -> (H, W) in camera px (``camera_size``: (W, H))."""
    w, h = camera_size
    if disparity.shape == (h, w):
        return disparity
    out = cv2.resize(disparity, (w, h), interpolation=cv2.INTER_LINEAR)
    out *= np.float32(disparity_factor(w, disparity.shape[1]))
    return out


def infer_at_network_size(infer: Callable[[np.ndarray, np.ndarray], np.ndarray], left: np.ndarray,
                          right: np.ndarray, network_size: Tuple[int, int], area: bool) -> np.ndarray:
    """(H, W) float32 disparity in camera px of ``infer`` run on the (H, W, 3) pair at
    ``network_size`` (width, height); ``area``: shrink with the area filter (else bilinear)."""
    h, w = left.shape[:2]
    if tuple(network_size) == (w, h):
        return infer(left, right)
    small_l, small_r = images_to_network_size([left, right], network_size, area)
    return disparity_to_camera_size(infer(small_l, small_r), (w, h))


def images_to_network_size_on_device(images: Any, network_size: Tuple[int, int], area: bool) -> Any:
    """:func:`images_to_network_size` for a (K, 3, H, W) float tensor."""
    import torch.nn.functional as F

    nw, nh = network_size
    if tuple(images.shape[-2:]) == (nh, nw):
        return images
    if area:
        return F.interpolate(images, size=(nh, nw), mode="area")
    return F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False)


def disparity_to_camera_size_on_device(disparity: Any, camera_size: Tuple[int, int]) -> Any:
    """:func:`disparity_to_camera_size` for a (K, 1, h, w) float32 tensor -> (K, 1, H, W)."""
    import torch.nn.functional as F

    w, h = camera_size
    if tuple(disparity.shape[-2:]) == (h, w):
        return disparity
    factor = disparity_factor(w, disparity.shape[-1])
    return F.interpolate(disparity, size=(h, w), mode="bilinear", align_corners=False) * factor


def infer_at_network_size_on_device(infer: Callable[[Any], Any], images: Any, network_size: Tuple[int, int],
                                    area: bool) -> Any:
    """:func:`infer_at_network_size` for a (2, 3, H, W) float tensor of the pair: ``infer`` maps
    (2, 3, h, w) to a (1, 1, h, w) float32 disparity; returns (1, 1, H, W) on the same device."""
    h, w = images.shape[-2:]
    disparity = infer(images_to_network_size_on_device(images, network_size, area))
    return disparity_to_camera_size_on_device(disparity, (w, h))
