"""Disparity -> depth -> organised 3D points, packed colours, and a disparity colour map.

All functions take the *published* (pre-adjusted) disparity ``d' = x_left - x_right - delta_cx``
(see :mod:`.calibration`), with NaN where invalid, so ``Z = f * B / d'`` and a point is
``X = (u - cx) * Z / fx``, ``Y = (v - cy) * Z / fy`` in the left rectified camera's optical frame
(x right, y down, z forward; REP 103 optical convention), with ``fx, fy, cx, cy`` from the left P.
"""
from __future__ import annotations

import array
import sys
from typing import Any, Callable, Optional, Tuple

import cv2
import numpy as np

#: cv2.mixChannels (source channel, byte of a 16-byte x, y, z, rgb point) that writes ``0x00RRGGBB``
#: as a little-endian uint32 into bytes 12-15: B, G, R, then 0 (a negative source fills zeros).
_RGB_TO_POINT_BYTES = (2, 12, 1, 13, 0, 14, -1, 15)


def check_focal_baseline(f: float, baseline: float) -> None:
    """ValueError unless ``f`` and ``baseline`` (and their product) are positive and finite."""
    if not (f > 0 and baseline > 0 and np.isfinite(f * baseline)):
        raise ValueError(f"f and baseline must be positive and finite, got f={f}, baseline={baseline}")


def depth_and_invalid(disparity: Any, fb: Any, min_depth: float, max_depth: float,
                      isfinite: Callable[[Any], Any]) -> Tuple[Any, Any]:
    """``Z = fb / d`` and the mask of invalid depths, for numpy arrays and torch tensors alike
    (``isfinite`` is ``np.isfinite`` or ``torch.isfinite``): the one definition of depth.

    Invalid: NaN or non-positive disparity (no match, or a point at/behind infinity), an infinite
    disparity or one so small that the depth overflows (never a depth of 0 or infinity), and
    depths outside ``[min_depth, max_depth]`` (``max_depth <= 0``: no upper limit).
    """
    depth = fb / disparity
    bad = ~((depth > 0) & isfinite(depth))  # NaN compares false: NaN, <= 0 and overflowing disparities
    if min_depth > 0:
        bad |= depth < min_depth
    if max_depth > 0:
        bad |= depth > max_depth
    return depth, bad


def depth_edges(disparity: Any, max_jump: float, xp: Any) -> Any:
    """(H, W) bool: pixels on a depth discontinuity ("flying pixels"), for a numpy array or torch
    tensor alike (``xp`` is ``numpy`` or ``torch``): the one definition of the edge filter.

    Two 4-neighbours form a discontinuity when the farther one's depth exceeds the nearer one's by
    more than ``max_jump`` times the nearer one's (``|Z - Z_n| / min(Z, Z_n) > max_jump``; 0.05 =
    5 %); both are marked. With ``Z = f * B / d`` that is ``max(d, d_n) > (1 + max_jump) * min(d, d_n)``
    on the disparity itself, so neither the calibration nor the depth limits enter. Pairs with a
    NaN or non-positive disparity are no discontinuity (an invalid neighbour invalidates nothing).
    """
    d = disparity
    # Rounded to float32 once, so numpy and torch (CPU or CUDA) compare against the same number.
    factor = float(np.float32(1.0 + max_jump))

    def jumps(a: Any, b: Any) -> Any:
        near, far = xp.maximum(a, b), xp.minimum(a, b)  # larger disparity: nearer; NaN propagates
        return (far > 0) & (near > far * factor)

    across = jumps(d[:, 1:], d[:, :-1])  # (H, W-1): each pixel and its right neighbour
    down = jumps(d[1:], d[:-1])  # (H-1, W): each pixel and the one below it
    edges = xp.zeros_like(d, dtype=bool)
    edges[:, 1:] |= across
    edges[:, :-1] |= across
    edges[1:] |= down
    edges[:-1] |= down
    return edges


def remove_depth_edges(disparity: np.ndarray, max_jump: float) -> np.ndarray:
    """NaN (invalid) in place where :func:`depth_edges` finds a discontinuity; ``max_jump <= 0``:
    unchanged. Returns ``disparity`` (float32, published convention)."""
    if max_jump > 0:
        disparity[depth_edges(disparity, max_jump, np)] = np.nan
    return disparity


def disparity_to_depth(disparity: np.ndarray, f: float, baseline: float, min_depth: float = 0.0,
                       max_depth: float = 0.0) -> np.ndarray:
    """Depth in the units of ``baseline`` (float32), NaN where invalid (see :func:`depth_and_invalid`)."""
    check_focal_baseline(f, baseline)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        depth, bad = depth_and_invalid(np.asarray(disparity, dtype=np.float32), np.float32(f * baseline),
                                       min_depth, max_depth, np.isfinite)
    depth[bad] = np.nan
    return depth


def message_buffer(shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed C-ordered array whose memory is an ``array.array('B')``: a ROS message's ``uint8[]``
    field can take that array over as it is (:func:`message_buffer_owner`), so an output written
    here reaches its message without a copy. A numpy array in every other respect."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return np.frombuffer(array.array("B", b"\0") * nbytes, dtype=dtype).reshape(shape)


def message_buffer_owner(a: np.ndarray) -> Optional["array.array[int]"]:
    """The ``array.array('B')`` that holds exactly the bytes of ``a`` (C order, from its first
    byte to its last), as :func:`message_buffer` makes; None for any other array."""
    if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
        return None
    base: Any = a
    while isinstance(base, np.ndarray):
        base = base.base
    owner = base.obj if isinstance(base, memoryview) else None
    if not isinstance(owner, array.array) or owner.typecode != "B":
        return None
    address, length = owner.buffer_info()
    if length != a.nbytes or address != a.__array_interface__["data"][0]:
        return None
    return owner


class PointProjector:
    """Back-projects depth images; the per-column and per-row ray factors are cached per geometry."""

    def __init__(self) -> None:
        self._key: Optional[Tuple] = None
        self._xr = self._yr = np.empty(0, np.float32)

    def rays(self, width: int, height: int, fx: float, fy: float, cx: float, cy: float) -> Tuple[np.ndarray, np.ndarray]:
        """((1, W) ``(u - cx) / fx``, (H, 1) ``(v - cy) / fy``) as float32."""
        key = (width, height, fx, fy, cx, cy)
        if key != self._key:
            self._xr = ((np.arange(width, dtype=np.float64) - cx) / fx).astype(np.float32)[None, :]
            self._yr = ((np.arange(height, dtype=np.float64) - cy) / fy).astype(np.float32)[:, None]
            self._key = key
        return self._xr, self._yr

    def points(self, depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
        """(H, W, 3) float32 x, y, z; NaN wherever depth is NaN."""
        return self._back_project(depth, np.empty(depth.shape + (3,), np.float32), fx, fy, cx, cy)

    def cloud(self, depth: np.ndarray, rgb: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
        """(H, W, 4) float32 x, y, z and the bits of packed ``0x00RRGGBB`` colour: the PointCloud2
        point layout, written once into a :func:`message_buffer` that the message takes over."""
        buf = self._back_project(depth, message_buffer(depth.shape + (4,), np.float32), fx, fy, cx, cy)
        write_packed_rgb(rgb, buf)
        return buf

    def _back_project(self, depth: np.ndarray, out: np.ndarray, fx: float, fy: float, cx: float,
                      cy: float) -> np.ndarray:
        """x, y, z of each pixel written into channels 0-2 of ``out`` (H, W, >= 3)."""
        h, w = depth.shape
        xr, yr = self.rays(w, h, fx, fy, cx, cy)
        np.multiply(depth, xr, out=out[..., 0])
        np.multiply(depth, yr, out=out[..., 1])
        out[..., 2] = depth
        return out


def depth_to_points(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """(H, W, 3) float32 points of a depth image through pinhole intrinsics (NaN stays NaN)."""
    return PointProjector().points(np.asarray(depth, np.float32), fx, fy, cx, cy)


def project_points(points: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (u, v) of (..., 3) points: the inverse of :func:`depth_to_points`."""
    p = np.asarray(points, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return fx * p[..., 0] / p[..., 2] + cx, fy * p[..., 1] / p[..., 2] + cy


def pack_rgb_channels(r: Any, g: Any, b: Any) -> Any:
    """``0x00RRGGBB`` of three integer channel arrays (numpy uint32 or torch int32, one shape):
    PCL's packed 'rgb' field layout."""
    packed = r << 16
    packed |= g << 8
    packed |= b
    return packed


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint32 ``0x00RRGGBB`` of (H, W, 3) uint8 RGB (PCL's packed 'rgb' field layout)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"pack_rgb needs (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    return pack_rgb_channels(rgb[..., 0].astype(np.uint32), rgb[..., 1].astype(np.uint32), rgb[..., 2])


def write_packed_rgb(rgb: np.ndarray, cloud: np.ndarray) -> None:
    """Channel 3 of an (H, W, 4) float32 ``cloud`` := the bits of :func:`pack_rgb` of ``rgb``, in
    one pass over the image and no temporary array (OpenCV copies each colour byte to its place)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"write_packed_rgb needs (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if cloud.shape != rgb.shape[:2] + (4,) or cloud.dtype != np.float32 or not cloud.flags.c_contiguous:
        raise ValueError(f"cloud must be C-ordered (H, W, 4) float32 of the image's size, got {cloud.shape} "
                         f"{cloud.dtype}")
    if sys.byteorder != "little":  # the byte places below are those of a little-endian uint32
        cloud[..., 3] = pack_rgb(rgb).view(np.float32)
        return
    cv2.mixChannels([np.ascontiguousarray(rgb)], [cloud.view(np.uint8)], _RGB_TO_POINT_BYTES)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB of packed ``0x00RRGGBB`` values (uint32, or float32 bit patterns)."""
    p = np.asarray(packed)
    if p.dtype == np.float32:
        p = p.view(np.uint32)
    p = p.astype(np.uint32)
    return np.stack([(p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF], axis=-1).astype(np.uint8)


def colorize_disparity(disparity: np.ndarray, min_disparity: float, max_disparity: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB picture of a disparity image (turbo colour map, invalid/NaN black)."""
    span = max(float(max_disparity) - float(min_disparity), 1e-6)
    d = np.asarray(disparity, np.float32)
    valid = np.isfinite(d) & (d >= min_disparity)
    scaled = np.where(valid, (d - np.float32(min_disparity)) * np.float32(255.0 / span), 0.0)
    grey = np.clip(scaled, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(grey, cv2.COLORMAP_TURBO)  # BGR
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    colour[~valid] = 0
    return colour
