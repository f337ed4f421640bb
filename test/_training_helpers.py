"""Synthetic stereo data with exactly known disparity, for the training tests (no conftest).

A pair is a textured background plane at disparity ``d_bg`` and a textured rectangle in front of
it at ``d_fg`` > ``d_bg``. The right view is rendered by copying pixels: a left pixel at x with
disparity d appears at x - d in the right view, so the ground truth is exact (integers).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 multi-scale noise: locally distinctive, so stereo matching is well posed."""
    import cv2

    acc = np.zeros((h, w, 3), np.float32)
    for cell, weight in ((1, 0.35), (3, 0.35), (9, 0.3)):
        small = rng.random((max(2, h // cell + 2), max(2, w // cell + 2), 3)).astype(np.float32)
        acc += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR if cell > 1 else cv2.INTER_NEAREST)
    return np.clip(acc * 255.0, 0, 255).astype(np.uint8)


def synthetic_pair(rng: np.random.Generator, h: int, w: int, d_bg: int, d_fg: int
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, disparity) with a foreground rectangle at a random place."""
    if not 0 <= d_bg < d_fg:
        raise ValueError("need 0 <= d_bg < d_fg")
    bg = texture(rng, h, w + d_fg)
    fh, fw = h // 2, w // 3
    fy, fx = int(rng.integers(0, h - fh)), int(rng.integers(d_fg, w - fw))
    fg = texture(rng, fh, fw)
    xs = np.arange(w)
    left = bg[:, :w].copy()
    left[fy:fy + fh, fx:fx + fw] = fg
    disp = np.full((h, w), float(d_bg), np.float32)
    disp[fy:fy + fh, fx:fx + fw] = d_fg
    right = bg[:, xs + d_bg].copy()
    inside = (xs + d_fg >= fx) & (xs + d_fg < fx + fw)
    right[fy:fy + fh, inside] = fg[:, xs[inside] + d_fg - fx]
    return left, right, disp


def write_folder_dataset(root: Path, pairs: List[Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Path:
    """The package's ``folder`` layout: left/, right/ (PNG) and disparity/ (PFM)."""
    from foundation_stereo_ros.fileio import write_pfm, write_rgb

    for sub in ("left", "right", "disparity"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, (left, right, disp) in enumerate(pairs):
        write_rgb(root / "left" / f"{i:04d}.png", left)
        write_rgb(root / "right" / f"{i:04d}.png", right)
        write_pfm(root / "disparity" / f"{i:04d}.pfm", disp)
    return root


def synthetic_pairs(n: int, h: int, w: int, seed: int, d_range: Tuple[int, int] = (2, 10)
                    ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        d_bg = int(rng.integers(d_range[0], d_range[1] - 2))
        d_fg = int(rng.integers(d_bg + 2, d_range[1] + 1))
        out.append(synthetic_pair(rng, h, w, d_bg, d_fg))
    return out


def photometric_error(left: np.ndarray, right: np.ndarray, disp: np.ndarray, valid: np.ndarray) -> float:
    """Mean |left(x) - right(x - d)| over valid pixels whose match lies inside the right image
    (grey levels, bilinear sampling): small when ``disp`` explains the pair."""
    import cv2

    h, w = disp.shape
    gl = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gr = cv2.cvtColor(right, cv2.COLOR_RGB2GRAY).astype(np.float32)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx = xs - disp.astype(np.float32)
    warped = cv2.remap(gr, mx, ys, cv2.INTER_LINEAR)
    m = valid & (mx >= 0) & (mx <= w - 1)
    return float(np.abs(warped - gl)[m].mean())
