"""Small file formats shared by the command-line tools: images, PFM, PLY, K.txt.

No ROS and no PyTorch here; OpenCV and NumPy only.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Tuple, Union

import cv2
import numpy as np

PathLike = Union[str, os.PathLike]


def read_rgb(path: PathLike) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; grey images get three equal channels."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: not found or not an image OpenCV can read")
    if img.dtype == np.uint16:  # 16-bit PNGs: keep the range, lose the low bits
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_pfm(path: PathLike, image: np.ndarray, scale: float = 1.0) -> None:
    """Write a float32 (H, W) or (H, W, 3) array as little-endian PFM (rows bottom to top)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        header = "Pf"
    elif image.ndim == 3 and image.shape[2] == 3:
        header = "PF"
    else:
        raise ValueError(f"PFM holds (H, W) or (H, W, 3) arrays, got {image.shape}")
    h, w = image.shape[:2]
    with open(path, "wb") as f:
        f.write(f"{header}\n{w} {h}\n{-abs(scale)}\n".encode("ascii"))
        f.write(np.flipud(image).astype("<f4").tobytes())


def read_pfm(path: PathLike) -> np.ndarray:
    """Read a PFM file as float32 (H, W) or (H, W, 3), top row first."""
    with open(path, "rb") as f:
        header = f.readline().strip()
        if header not in (b"Pf", b"PF"):
            raise ValueError(f"{path}: not a PFM file")
        dims = f.readline()
        while dims.startswith(b"#"):
            dims = f.readline()
        match = re.match(rb"^\s*(\d+)\s+(\d+)\s*$", dims)
        if not match:
            raise ValueError(f"{path}: malformed PFM size line")
        w, h = int(match.group(1)), int(match.group(2))
        scale = float(f.readline().strip())
        dtype = "<f4" if scale < 0 else ">f4"
        channels = 3 if header == b"PF" else 1
        data = np.frombuffer(f.read(), dtype=dtype)
    if data.size != w * h * channels:
        raise ValueError(f"{path}: expected {w * h * channels} values, found {data.size} (truncated?)")
    shape = (h, w, 3) if channels == 3 else (h, w)
    return np.flipud(data.reshape(shape)).astype(np.float32)


def write_rgb(path: PathLike, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise ValueError(f"{path}: could not write image")


def read_intrinsics(path: PathLike) -> Tuple[np.ndarray, float]:
    """The reference's K.txt: line 1 the 3x3 K flattened row-major, line 2 the baseline (m)."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    try:
        k = np.array([float(v) for v in lines[0].split()], dtype=np.float64)
        baseline = float(lines[1].split()[0])
    except (IndexError, ValueError):
        raise ValueError(f"{path}: expected 9 numbers (K, row-major) on line 1 and the baseline in "
                         f"metres on line 2") from None
    if k.size != 9:
        raise ValueError(f"{path}: line 1 holds {k.size} numbers, K needs 9")
    k = k.reshape(3, 3)
    if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ValueError(f"{path}: focal lengths must be positive and finite")
    if not np.isfinite(baseline) or baseline <= 0:
        raise ValueError(f"{path}: baseline must be a positive number of metres, got {baseline}")
    return k, baseline


def write_ply(path: PathLike, points: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian PLY of (N, 3) float points with (N, 3) uint8 RGB colours."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(points) != len(colors):
        raise ValueError("points and colours differ in number")
    vertex = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = points.T
    vertex["red"], vertex["green"], vertex["blue"] = colors.T
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex.tobytes())


def read_ply(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Read what :func:`write_ply` writes: (N, 3) float32 points, (N, 3) uint8 colours."""
    with open(path, "rb") as f:
        n = None
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: no end_header")
            if line.startswith(b"element vertex"):
                n = int(line.split()[-1])
            if line.strip() == b"end_header":
                break
        dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
        v = np.frombuffer(f.read(), dtype=dt, count=n)
    return np.stack([v["x"], v["y"], v["z"]], 1), np.stack([v["red"], v["green"], v["blue"]], 1)


def read_disparity_file(path: Path, scale: Optional[float] = None) -> np.ndarray:
    """Raw disparity in px (0 = unknown) from PFM, .npy or PNG; ``scale``: stored = scale * disparity
    (default 256 for 16-bit PNG as KITTI, else 1)."""
    return _read_map(path, scale, png16_default=256.0, what="disparity", unknown=0.0)


def read_depth_file(path: Path, scale: Optional[float] = None) -> np.ndarray:
    """Depth in metres (NaN = unknown) from PFM, .npy or PNG; ``scale``: stored = scale * metres
    (default 1000 for 16-bit PNG, millimetres as REP 118, else 1)."""
    return _read_map(path, scale, png16_default=1000.0, what="depth", unknown=np.nan)


def _read_map(path: Path, scale: Optional[float], png16_default: float, what: str, unknown: float) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".pfm":
        values, default = read_pfm(path), 1.0
    elif suffix == ".npy":
        values, default = np.load(path, allow_pickle=False), 1.0
    else:
        values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if values is None:
            raise ValueError(f"{path}: not a {what} map OpenCV can read")
        default = png16_default if values.dtype == np.uint16 else 1.0
    if values.ndim == 3:
        raise ValueError(f"{path}: a {what} map must have one channel, got {values.shape[2]}")
    s = default if scale is None else scale
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"{what} scale must be positive, got {s}")
    out = values.astype(np.float32) / np.float32(s)
    out[~np.isfinite(out) | (out <= 0)] = unknown
    return out
