"""Rectification, depth and points on the network's device, so each output leaves it in one copy.

PyTorch-only: :class:`~.processor.StereoProcessor` imports it when ``geometry_device`` puts the
geometry on the network's device (an SGBM or host-geometry pipeline never loads torch).

The pipeline does these steps with OpenCV/numpy on the host (``pipeline.rectification.Rectifier``,
``pipeline.geometry``). On a GPU node the raw images can instead be uploaded once, rectified
with ``grid_sample`` and handed to the network without a round trip, and depth and points can
be computed beside the disparity; each result then comes back with a single device-to-host
copy. Conventions follow the pipeline: depth ``f * B / d`` in the baseline's units, NaN where
the disparity is not positive (or NaN), the depth overflows or is out of range; points
``((u - cx) Z / fx, (v - cy) Z / fy, Z)`` in the left rectified optical frame; the edge filter
marks the host's pixels exactly (one definition, :func:`~.geometry.depth_edges`).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import check_focal_baseline, depth_and_invalid, depth_edges, message_buffer, pack_rgb_channels

Device = Union[str, torch.device]


class DeviceRemap:
    """``cv2.remap(img, map_x, map_y, INTER_LINEAR, BORDER_CONSTANT)`` on a torch device.

    ``map_x``/``map_y`` are float (H_out, W_out) source pixel coordinates, e.g. from
    ``cv2.initUndistortRectifyMap(..., m1type=cv2.CV_32FC1)`` (or ``cv2.convertMaps`` of the
    fixed-point tables). They are converted once to a normalised ``grid_sample`` grid.
    """

    def __init__(self, map_x: np.ndarray, map_y: np.ndarray, source_size: Tuple[int, int], device: Device = "cpu"):
        map_x = np.asarray(map_x, np.float32)
        map_y = np.asarray(map_y, np.float32)
        if map_x.shape != map_y.shape or map_x.ndim != 2:
            raise ValueError(f"map_x and map_y must be equal (H, W) arrays, got {map_x.shape} and {map_y.shape}")
        src_h, src_w = source_size
        if src_h < 2 or src_w < 2:
            raise ValueError(f"source image must be at least 2x2, got {src_h}x{src_w}")
        # align_corners=True maps -1/+1 to the centres of the first/last pixel: x_n = 2x/(W-1) - 1.
        grid = np.stack([2.0 * map_x / (src_w - 1) - 1.0, 2.0 * map_y / (src_h - 1) - 1.0], axis=-1)
        self.grid = torch.from_numpy(grid.astype(np.float32))[None].to(device)  # (1, H_out, W_out, 2)
        self.source_size = (src_h, src_w)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H_src, W_src) float images -> (N, C, H_out, W_out), zeros outside the source."""
        if images.ndim != 4 or tuple(images.shape[-2:]) != self.source_size:
            raise ValueError(f"expected (N, C, {self.source_size[0]}, {self.source_size[1]}) images, "
                             f"got {tuple(images.shape)}")
        grid = self.grid.to(images.device).expand(images.shape[0], -1, -1, -1)
        return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                             align_corners=True)


def disparity_to_depth(disparity: torch.Tensor, f: float, baseline: float, min_depth: float = 0.0,
                       max_depth: float = 0.0) -> torch.Tensor:
    """Depth (same shape, float32), NaN where invalid: the host's rule
    (:func:`~foundation_stereo_ros.pipeline.geometry.depth_and_invalid`) on the device."""
    check_focal_baseline(f, baseline)
    depth, bad = depth_and_invalid(disparity.float(), f * baseline, min_depth, max_depth)
    return depth.masked_fill(bad, float("nan"))


def remove_depth_edges(disparity: torch.Tensor, max_jump: float) -> torch.Tensor:
    """The disparity with NaN where :func:`~foundation_stereo_ros.pipeline.geometry.depth_edges`
    finds a discontinuity (the host's mask, bit for bit); ``max_jump <= 0``: ``disparity`` itself."""
    if max_jump <= 0:
        return disparity
    disparity = disparity.float()
    return disparity.masked_fill(depth_edges(disparity, max_jump, torch), float("nan"))


def depth_to_points(depth: torch.Tensor, fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    """(H, W, 3) float32 points of an (H, W) depth image; NaN stays NaN."""
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {tuple(depth.shape)}")
    return _back_project(depth.float(), torch.empty(depth.shape + (3,), dtype=torch.float32, device=depth.device),
                         fx, fy, cx, cy)


def point_cloud(depth: torch.Tensor, rgb: torch.Tensor, fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    """(H, W, 4) float32 x, y, z and the bits of packed ``0x00RRGGBB`` colour of an (H, W) depth
    and the (3, H, W) RGB image it belongs to (0..255, any dtype): the PointCloud2 layout, each
    channel written once into one tensor (the host's :meth:`~.geometry.PointProjector.cloud`)."""
    if depth.ndim != 2 or rgb.shape != (3,) + tuple(depth.shape):
        raise ValueError(f"depth must be (H, W) and rgb (3, H, W), got {tuple(depth.shape)} and {tuple(rgb.shape)}")
    cloud = _back_project(depth.float(), torch.empty(depth.shape + (4,), dtype=torch.float32, device=depth.device),
                          fx, fy, cx, cy)
    channels = rgb.to(torch.int32)
    cloud[..., 3] = pack_rgb_channels(channels[0], channels[1], channels[2]).view(torch.float32)
    return cloud


def _back_project(z: torch.Tensor, out: torch.Tensor, fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    """x, y, z of each pixel of the (H, W) float32 depth ``z`` written into channels 0-2 of ``out``."""
    h, w = z.shape
    xr = ((torch.arange(w, device=z.device, dtype=torch.float64) - cx) / fx).float()
    yr = ((torch.arange(h, device=z.device, dtype=torch.float64) - cy) / fy).float()
    torch.mul(z, xr[None, :], out=out[..., 0])
    torch.mul(z, yr[:, None], out=out[..., 1])
    out[..., 2] = z
    return out


def to_host(tensors: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Each tensor as a numpy array of its own. On CUDA: non-blocking copies into pinned memory
    (PyTorch caches those blocks, and each array keeps its block until it is dropped), then one
    wait for the stream; elsewhere one copy into a :func:`~.geometry.message_buffer`, which the
    output's message then takes over without another."""
    if not tensors:
        return {}
    device = next(iter(tensors.values())).device
    if device.type != "cuda":  # copies: a tensor on the host may be a buffer its producer reuses
        out = {}
        for k, v in tensors.items():
            v = v.cpu()
            out[k] = message_buffer(tuple(v.shape), v.numpy().dtype)
            torch.from_numpy(out[k]).copy_(v)  # PyTorch's copy: fast for permuted (channel-last) views too
        return out
    out = {}
    for k, v in tensors.items():
        buf = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
        buf.copy_(v, non_blocking=True)
        out[k] = buf
    torch.cuda.current_stream(device).synchronize()
    return {k: v.numpy() for k, v in out.items()}
