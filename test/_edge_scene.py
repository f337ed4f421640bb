"""A synthetic depth step for the edge filter: a near plane in front of a far one, joined by the
ramp of interpolated disparities a matcher (or a network) leaves across the edge: flying pixels."""
from __future__ import annotations

from typing import Tuple

import numpy as np

NEAR_D, FAR_D = 10.0, 2.0  # published disparity, px: with f * B = 10 the planes lie at 1 m and 5 m
EDGE_U, RAMP = 30, 4  # the near plane ends at column EDGE_U - 1, the ramp fills the next RAMP columns


def step_scene(height: int, width: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(disparity (H, W) float32 published convention, flying (H, W) bool: the ramp's pixels,
    interior (H, W) bool: plane pixels at least two columns from the ramp)."""
    u = np.arange(width, dtype=np.float32)
    v = np.arange(height, dtype=np.float32)[:, None]
    # Both planes slightly slanted (under 1 % depth change per pixel), so the interiors are not flat.
    near = NEAR_D + 0.02 * v + 0.01 * u
    far = FAR_D + 0.002 * v + 0.001 * u
    ramp = NEAR_D + (FAR_D - NEAR_D) * (u - EDGE_U + 1) / (RAMP + 1)  # linear in disparity from near to far
    d = np.where(u < EDGE_U, near, np.where(u < EDGE_U + RAMP, ramp, far)).astype(np.float32)
    d[5, 10] = d[7, 50] = np.nan  # holes inside the planes invalidate none of their neighbours
    flying = np.zeros(d.shape, bool)
    flying[:, EDGE_U:EDGE_U + RAMP] = True
    interior = ~flying
    interior[:, EDGE_U - 2:EDGE_U + RAMP + 2] = False
    interior &= np.isfinite(d)
    return d, flying, interior
