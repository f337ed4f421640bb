"""Left-right consistency check of two disparity maps (occlusions and mismatches).

A pixel ``x`` of the left image with disparity ``d_L(x)`` matches ``x - d_L(x)`` in the right
image. Where the right view's own disparity there, ``d_R(x - d_L(x))``, disagrees with ``d_L(x)``
by more than a tolerance (camera px), the two views do not see the same surface: the pixel is
occluded in the right image (the left value came from the network's monocular prior, not a
match) or mismatched, and it becomes invalid (NaN).

``d_R`` is given at integer right-image columns; at the fractional column ``x - d_L(x)`` it is
interpolated linearly between column ``floor(x - d_L)`` and the next one (a match that falls
on a column takes that column's value alone). A pixel fails the check when its match lies
outside the right image (``x - d_L < 0`` or beyond the last column), when a right-image value
it is interpolated from is NaN (no right disparity known there), or when
``|d_L - d_R| > tolerance``. Pixels already NaN stay NaN.

The same arithmetic runs on numpy arrays (:func:`left_right_check`) and torch tensors
(:func:`left_right_check_torch`, on any device; torch imported on use), in float32 and in the
same order, so host and device give the same mask.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _check_shapes(d_left_shape: tuple, d_right_shape: tuple, tolerance: float) -> None:
    if tuple(d_left_shape) != tuple(d_right_shape) or len(d_left_shape) < 2:
        raise ValueError(f"d_left and d_right must be (..., H, W) of one shape; got {tuple(d_left_shape)} and "
                         f"{tuple(d_right_shape)}")
    if not tolerance > 0:
        raise ValueError(f"the left-right tolerance must be > 0 px, got {tolerance}")


def left_right_inconsistent(d_left: np.ndarray, d_right: np.ndarray, tolerance: float) -> np.ndarray:
    """Boolean (..., H, W): where the finite ``d_left`` fails the check against ``d_right``
    (both float32 (..., H, W) in px, the right one in right-image columns)."""
    _check_shapes(d_left.shape, d_right.shape, tolerance)
    d_left = d_left.astype(np.float32, copy=False)
    d_right = d_right.astype(np.float32, copy=False)
    w = d_left.shape[-1]
    columns = np.arange(w, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        target = columns - d_left  # the matching right-image column, NaN where d_left is
        inside = (target >= 0) & (target <= np.float32(w - 1))
        target = np.where(inside, target, np.float32(0))
        base = np.floor(target)
        frac = target - base
        i0 = base.astype(np.int64)
        i1 = np.minimum(i0 + 1, w - 1)
        a = np.take_along_axis(d_right, i0, axis=-1)
        b = np.take_along_axis(d_right, i1, axis=-1)
        sampled = np.where(frac > 0, a + frac * (b - a), a)
        agree = inside & (np.abs(d_left - sampled) <= np.float32(tolerance))
    return np.isfinite(d_left) & ~agree


def left_right_check(d_left: np.ndarray, d_right: np.ndarray, tolerance: float) -> np.ndarray:
    """``d_left`` with NaN where it fails the check against ``d_right`` (in place; returned)."""
    d_left[left_right_inconsistent(d_left, d_right, tolerance)] = np.nan
    return d_left


def left_right_inconsistent_torch(d_left: Any, d_right: Any, tolerance: float) -> Any:
    """:func:`left_right_inconsistent` for float32 tensors (..., H, W) on any device."""
    import torch

    _check_shapes(d_left.shape, d_right.shape, tolerance)
    d_left, d_right = d_left.float(), d_right.float()
    w = d_left.shape[-1]
    columns = torch.arange(w, dtype=torch.float32, device=d_left.device)
    target = columns - d_left
    inside = (target >= 0) & (target <= float(w - 1))
    target = torch.where(inside, target, torch.zeros((), dtype=torch.float32, device=d_left.device))
    base = torch.floor(target)
    frac = target - base
    i0 = base.long()
    i1 = (i0 + 1).clamp(max=w - 1)
    a = torch.gather(d_right, -1, i0)
    b = torch.gather(d_right, -1, i1)
    sampled = torch.where(frac > 0, a + frac * (b - a), a)
    # A Python float the tensor's comparison rounds to nothing else: the float32 value numpy uses.
    agree = inside & ((d_left - sampled).abs() <= float(np.float32(tolerance)))
    return torch.isfinite(d_left) & ~agree


def left_right_check_torch(d_left: Any, d_right: Any, tolerance: float) -> Any:
    """:func:`left_right_check` for tensors; returns a new tensor (``d_left`` is left as it is)."""
    return d_left.masked_fill(left_right_inconsistent_torch(d_left, d_right, tolerance), float("nan"))
