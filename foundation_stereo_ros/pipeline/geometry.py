"""Disparity -> depth -> organised 3D points, packed colours, and a disparity colour map.

All functions take the *published* (pre-adjusted) disparity ``d' = x_left - x_right - delta_cx``
(see :mod:`.calibration`), with NaN where invalid, so ``Z = f * B / d'`` and a point is
``X = (u - cx) * Z / fx``, ``Y = (v - cy) * Z / fy`` in the left rectified camera's optical frame
(x right, y down, z forward; REP 103 optical convention), with ``fx, fy, cx, cy`` from the left P.
"""
from __future__ import annotations

import array
import sys
import threading
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np


def check_focal_baseline(f: float, baseline: float) -> None:
    """ValueError unless ``f`` and ``baseline`` (and their product) are positive and finite."""
    if not (f > 0 and baseline > 0 and np.isfinite(f * baseline)):
        raise ValueError(f"f and baseline must be positive and finite, got f={f}, baseline={baseline}")


def depth_limits(min_depth: float, max_depth: float) -> Tuple[float, float]:
    """The closed range ``[lo, hi]`` of valid depths (float32 values, as Python floats) for the
    ``min_depth``/``max_depth`` parameters (``<= 0``: no limit): ``lo`` is ``min_depth`` or the
    smallest positive float32 (a depth must be positive), ``hi`` is ``max_depth`` or the largest
    finite float32 (a depth must be finite). NaN lies in no range."""
    smallest, largest = np.nextafter(np.float32(0), np.float32(1)), np.finfo(np.float32).max
    with np.errstate(over="ignore", under="ignore"):  # the limits compare as float32 values
        lo = max(np.float32(min_depth), smallest) if min_depth > 0 else smallest
        hi = min(np.float32(max_depth), largest) if max_depth > 0 else largest
    return float(lo), float(hi)


def depth_and_invalid(disparity: Any, fb: Any, min_depth: float, max_depth: float) -> Tuple[Any, Any]:
    """``Z = fb / d`` and the mask of invalid depths, for numpy arrays and torch tensors alike:
    the one definition of depth (the host's :func:`disparity_to_depth` computes the same with
    OpenCV's kernels).

    Invalid: NaN or non-positive disparity (no match, or a point at/behind infinity), an infinite
    disparity or one so small that the depth overflows (never a depth of 0 or infinity), and
    depths outside ``[min_depth, max_depth]`` (``max_depth <= 0``: no upper limit); that is, every
    depth outside :func:`depth_limits`.
    """
    depth = fb / disparity
    lo, hi = depth_limits(min_depth, max_depth)
    bad = ~((depth >= lo) & (depth <= hi))  # NaN compares false
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
    """Depth in the units of ``baseline`` (float32), NaN where invalid (see :func:`depth_and_invalid`),
    written into a :func:`message_buffer` (a depth image message takes it without a copy).

    One division and two SIMD passes (OpenCV's ``inRange`` and masked copy): a numpy mask and
    masked assignment cost several times as much, the more so the more pixels are invalid."""
    check_focal_baseline(f, baseline)
    d = np.asarray(disparity, dtype=np.float32)
    depth = message_buffer(d.shape, np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        np.divide(np.float32(f * baseline), d, out=depth)
    lo, hi = depth_limits(min_depth, max_depth)
    if depth.ndim == 2 and depth.size:
        set_nan_where(depth, cv2.bitwise_not(cv2.inRange(depth, lo, hi)))
    else:  # OpenCV takes 2-D images only
        set_nan_where(depth, ~((depth >= lo) & (depth <= hi)))
    return depth


def set_nan_where(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``a[mask] = NaN`` in place for a float32 ``a``: ``mask`` is a uint8 array of ``a``'s 2-D
    shape, non-zero where NaN goes (OpenCV's masked copy of a NaN image: one pass, however many
    pixels it sets; a bool mask viewed as uint8 will do), or a bool array for any other shape.
    Returns ``a``."""
    if mask.dtype == np.bool_:
        np.copyto(a, np.float32(np.nan), where=mask)
    elif a.flags.c_contiguous and a.dtype == np.float32:  # OpenCV writes into ``a`` itself
        cv2.copyTo(_nan_image(a.shape), mask, dst=a)
    else:
        np.copyto(a, np.float32(np.nan), where=mask != 0)
    return a


@lru_cache(maxsize=8)
def _nan_image(shape: Tuple[int, ...]) -> np.ndarray:
    image = np.full(shape, np.nan, np.float32)
    image.flags.writeable = False
    return image


def message_buffer(shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    """A C-ordered array whose memory is an ``array.array('B')``: a ROS message's ``uint8[]``
    field can take that array over as it is (:func:`message_buffer_owner`), so an output written
    here reaches its message without a copy. A numpy array in every other respect; its contents
    are undefined (zeros, or a recycled buffer's bytes): write every element."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return _BUFFERS.take(nbytes).view(dtype).reshape(shape)


class _BufferPool:
    """Recycles the ``array.array`` of message buffers that nothing references any more (the
    result, its numpy views and the message that took it over are gone): a new buffer costs a
    zeroing pass over memory that is then written again, several MB per frame; a recycled one
    costs nothing and is often still in the cache. At most ``per_size`` buffers of one size are
    kept. Whether a buffer is free is its reference count, compared with that of a buffer known
    to be free (measured once, so that no interpreter's counting is assumed)."""

    def __init__(self, per_size: int = 6) -> None:
        self.per_size = per_size
        self._lock = threading.Lock()  # the stager, the worker and the publisher take buffers
        self._pools: Dict[int, List["array.array[int]"]] = {}
        probe = [array.array("B", b"\0")]
        self._free_refs = self._references(probe)[0]

    @staticmethod
    def _references(buffers: List["array.array[int]"]) -> List[int]:
        return [sys.getrefcount(buf) for buf in buffers]

    def take(self, nbytes: int) -> np.ndarray:
        """(nbytes,) uint8 over a free pooled buffer of that size, or a new one (zeroed)."""
        with self._lock:
            pool = self._pools.setdefault(nbytes, [])  # least recently taken first
            refs = self._references(pool)
            for i in range(len(pool) - 1, -1, -1):  # the most recently taken free one: the likeliest in the cache
                if refs[i] == self._free_refs:
                    buf = pool.pop(i)
                    pool.append(buf)
                    return np.frombuffer(buf, np.uint8)  # the view holds it from now on
            buf = array.array("B", b"\0") * nbytes
            if len(pool) >= self.per_size:
                pool.pop(0)  # let the least recently taken one go (whoever holds it keeps it)
            pool.append(buf)
            return np.frombuffer(buf, np.uint8)


_BUFFERS = _BufferPool()


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
    """Back-projects depth images; the ray factors ``(u - cx) / fx`` and ``(v - cy) / fy`` are
    cached per geometry."""

    def __init__(self) -> None:
        self._key: Optional[Tuple] = None
        self._xr = self._yr = np.empty(0, np.float32)
        self._scratch = threading.local()

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
        h, w = depth.shape
        xr, yr = self.rays(w, h, fx, fy, cx, cy)
        out = np.empty(depth.shape + (3,), np.float32)
        np.multiply(depth, xr, out=out[..., 0])
        np.multiply(depth, yr, out=out[..., 1])
        out[..., 2] = depth
        return out

    def cloud(self, depth: np.ndarray, rgb: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
        """(H, W, 4) float32 x, y, z and the bits of packed ``0x00RRGGBB`` colour: the PointCloud2
        point layout, written into a :func:`message_buffer` that the message takes over.

        x and y are two vectorised products into scratch planes, and the four planes are
        interleaved by one ``cv2.merge``: a third of the time of numpy writes into the 16-byte
        strided points (the same float32 products, so the same bits)."""
        depth = np.ascontiguousarray(depth, dtype=np.float32)
        h, w = depth.shape
        x, y, colour = self._planes(depth.shape)
        colour = packed_rgb_plane(rgb, colour)
        if colour.shape != depth.shape:
            raise ValueError(f"the colour image is {rgb.shape[1]}x{rgb.shape[0]}, the depth {w}x{h}")
        xr, yr = self.rays(w, h, fx, fy, cx, cy)
        out = message_buffer((h, w, 4), np.float32)
        if depth.size:
            np.multiply(depth, xr, out=x)
            np.multiply(depth, yr, out=y)
            cv2.merge([x, y, depth, colour], dst=out)
        return out

    def _planes(self, shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This thread's (H, W) float32 scratch planes for x and y and (H, W, 4) uint8 one for the
        colour (kept while the size stays: no allocation, and likely still in the cache)."""
        scratch = self._scratch
        if getattr(scratch, "shape", None) != shape:
            scratch.x, scratch.y = np.empty(shape, np.float32), np.empty(shape, np.float32)
            scratch.colour, scratch.shape = np.empty(shape + (4,), np.uint8), shape
        return scratch.x, scratch.y, scratch.colour


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


def packed_rgb_plane(rgb: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W) float32 holding the bits of :func:`pack_rgb` of (H, W, 3) uint8 RGB: the 'rgb' field
    of a point. On a little-endian host that is the bytes B, G, R, 0 per pixel: one OpenCV
    conversion to BGRA and one mask of the alpha byte, into ``out`` ((H, W, 4) uint8) if given."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"packed_rgb_plane needs (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if sys.byteorder != "little" or not rgb.size:  # the byte places below are those of a little-endian uint32
        return pack_rgb(rgb).view(np.float32)
    if out is None or out.shape != rgb.shape[:2] + (4,):
        out = np.empty(rgb.shape[:2] + (4,), np.uint8)
    cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGRA, dst=out)
    cv2.bitwise_and(out, (255, 255, 255, 0), dst=out)
    return out.view(np.float32)[..., 0]


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB of packed ``0x00RRGGBB`` values (uint32, or float32 bit patterns)."""
    p = np.asarray(packed)
    if p.dtype == np.float32:
        p = p.view(np.uint32)
    p = p.astype(np.uint32)
    return np.stack([(p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF], axis=-1).astype(np.uint8)


def colorize_disparity(disparity: np.ndarray, min_disparity: float, max_disparity: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB picture of a disparity image (turbo colour map, invalid/NaN black).

    Grey level ``(d - min) * 255 / span``, clipped to 0..255 and truncated; valid where ``d`` is
    finite and at least ``min_disparity``. The colour comes from the turbo map's RGB table in one
    ``cv2.LUT`` and invalid pixels are cleared by one masked copy: a tenth of the time of numpy's
    ``where``/boolean indexing and OpenCV's BGR colour map converted to RGB (480x640, a quarter
    invalid: 0.55 against 6.0 ms), with the same bytes."""
    span = max(float(max_disparity) - float(min_disparity), 1e-6)
    d = np.ascontiguousarray(disparity, dtype=np.float32)
    lo = np.float32(min_disparity)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.subtract(d, lo)
        scaled *= np.float32(255.0 / span)
        np.clip(scaled, 0, 255, out=scaled)
    if scaled.ndim != 2 or not scaled.size:  # OpenCV's kernels take 2-D images
        colour = _TURBO_RGB[np.nan_to_num(scaled, nan=0.0).astype(np.uint8)]
        colour[~(np.isfinite(d) & (d >= lo))] = 0
        return colour
    grey = cv2.patchNaNs(scaled, 0.0).astype(np.uint8)  # NaN: invalid anyway (black below); keeps the cast defined
    colour = cv2.LUT(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), _TURBO_RGB.reshape(256, 1, 3))
    invalid = cv2.bitwise_not(cv2.inRange(d, float(lo), float(np.finfo(np.float32).max)))  # NaN and inf too
    cv2.copyTo(np.zeros_like(colour), invalid, dst=colour)
    return colour


#: OpenCV's turbo colour map as an RGB table (256, 3): what ``applyColorMap`` (BGR) gives each grey level.
_TURBO_RGB = cv2.cvtColor(cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_TURBO),
                          cv2.COLOR_BGR2RGB).reshape(256, 3)
