"""Training samples: rectified pairs with ground-truth disparity, how the ground truth is decoded,
and the dataset that reads them.

Every source becomes a list of :class:`SampleSpec` (three files and how to decode the ground
truth), so the common dataset layouts, a robot team's own folders and extracted rosbags (found by
:mod:`.layouts`) are all read by one :class:`StereoDataset`.

Disparity convention: ``x_left - x_right`` in pixels of the rectified pair (the network's output
convention). A ground-truth pixel is valid when it is finite and > 0; the layouts' own "unknown"
markers (0 in KITTI/FSD PNGs, inf in Middlebury PFMs) map to invalid.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..fileio import read_pfm, read_rgb

PathLike = Union[str, os.PathLike]


@dataclass
class StereoSample:
    """One training pair. Arrays are (H, W[, 3]); ``disparity`` is 0 where ``valid`` is False."""

    left: np.ndarray  # uint8 RGB
    right: np.ndarray  # uint8 RGB
    disparity: np.ndarray  # float32 px, x_left - x_right
    valid: np.ndarray  # bool
    name: str

    def __post_init__(self) -> None:
        if self.left.shape != self.right.shape or self.left.ndim != 3 or self.left.shape[2] != 3:
            raise ValueError(f"{self.name}: left {self.left.shape} and right {self.right.shape} must both be "
                             f"(H, W, 3) of one size")
        if self.disparity.shape != self.left.shape[:2] or self.valid.shape != self.left.shape[:2]:
            raise ValueError(f"{self.name}: ground truth is {self.disparity.shape[::-1]} but the images are "
                             f"{self.left.shape[1]}x{self.left.shape[0]}; ground truth must be registered to the "
                             f"left image at its resolution")


@dataclass(frozen=True)
class SampleSpec:
    """Where one sample lives and how its ground truth is decoded.

    ``gt_format``: 'pfm' | 'npy' | 'png' (scaled by ``gt_scale``, default by bit depth) |
    'kitti_png' | 'fsd_png'; ``gt_kind``: 'disparity' or 'depth' (then ``focal_baseline`` and
    ``delta_cx`` convert it); ``mask``: optional 8-bit PNG, pixels below ``mask_min`` are
    excluded (Middlebury's mask0nocc: 255 non-occluded, 128 occluded, 0 unknown).
    """

    name: str
    left: Path
    right: Path
    gt: Path
    gt_format: str
    gt_kind: str = "disparity"
    gt_scale: Optional[float] = None
    focal_baseline: Optional[float] = None  # focal_px * baseline_m, for depth ground truth
    delta_cx: float = 0.0
    mask: Optional[Path] = None  # pixels of this mask below mask_min are excluded
    mask_min: int = 255


# --------------------------------------------------------------------------------- decoding

def _imread_unchanged(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: not found or not an image OpenCV can read")
    return img


def decode_kitti_png(path: PathLike) -> np.ndarray:
    """KITTI disparity PNG: uint16, disparity = value / 256, 0 = unknown (returned as 0)."""
    img = _imread_unchanged(Path(path))
    if img.dtype != np.uint16 or img.ndim != 2:
        raise ValueError(f"{path}: a KITTI disparity map is a one-channel 16-bit PNG, got {img.dtype} with "
                         f"shape {img.shape}")
    return img.astype(np.float32) / 256.0


def decode_fsd_png(path: PathLike) -> np.ndarray:
    """FoundationStereo-dataset disparity PNG: 8-bit RGB, (R * 255^2 + G * 255 + B) / 1000.

    The published decoder uses 255 (not 256) as the digit base; it is kept so the values match.
    """
    img = _imread_unchanged(Path(path))
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"{path}: an FSD disparity map is an 8-bit RGB PNG, got {img.dtype} with shape {img.shape}")
    bgr = img[:, :, :3].astype(np.float64)  # OpenCV order: B, G, R
    return ((bgr[:, :, 2] * 255.0 + bgr[:, :, 1]) * 255.0 + bgr[:, :, 0]).astype(np.float32) / 1000.0


def encode_fsd_png(disparity: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_fsd_png` as a BGR uint8 array for ``cv2.imwrite`` (for tests
    and for users converting their data to that layout). Resolution 1/1000 px."""
    v = np.round(np.clip(np.nan_to_num(disparity, nan=0.0, posinf=0.0), 0, None) * 1000.0).astype(np.int64)
    if v.max(initial=0) >= 255 ** 3:
        raise ValueError(f"disparity {v.max() / 1000} px is too large for the FSD encoding")
    r, rem = np.divmod(v, 255 * 255)
    g, b = np.divmod(rem, 255)
    return np.stack([b, g, r], axis=2).astype(np.uint8)


def _decode_map(path: Path, fmt: str, scale: Optional[float], png16_default: float) -> np.ndarray:
    if fmt == "pfm":
        values = read_pfm(path)
        if values.ndim == 3:  # some writers store disparity in a 3-channel PFM; the first is it
            values = values[:, :, 0]
        default = 1.0
    elif fmt == "npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the .npy file: {e}") from None
        if values.ndim == 3 and values.shape[2] == 1:
            values = values[:, :, 0]
        default = 1.0
    elif fmt == "kitti_png":
        return decode_kitti_png(path)
    elif fmt == "fsd_png":
        return decode_fsd_png(path)
    elif fmt == "png":
        values = _imread_unchanged(path)
        default = png16_default if values.dtype == np.uint16 else 1.0
    else:
        raise ValueError(f"unknown ground-truth format {fmt!r}")
    if values.ndim != 2:
        raise ValueError(f"{path}: a ground-truth map must have one channel, got shape {values.shape}")
    s = default if scale is None else scale
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"{path}: ground-truth scale must be positive, got {s}")
    return values.astype(np.float32) / np.float32(s)


def read_ground_truth(spec: SampleSpec) -> Tuple[np.ndarray, np.ndarray]:
    """(disparity float32 with 0 where unknown, valid bool) of a sample."""
    if spec.gt_kind == "disparity":
        disp = _decode_map(spec.gt, spec.gt_format, spec.gt_scale, png16_default=256.0)
    elif spec.gt_kind == "depth":
        if spec.focal_baseline is None or not spec.focal_baseline > 0:
            raise ValueError(f"{spec.gt}: depth ground truth needs focal_px * baseline_m > 0")
        # 16-bit depth PNGs are millimetres (REP 118).
        depth = _decode_map(spec.gt, spec.gt_format, spec.gt_scale, png16_default=1000.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            disp = np.where(np.isfinite(depth) & (depth > 0), spec.focal_baseline / depth, np.nan)
        disp = disp.astype(np.float32) + np.float32(spec.delta_cx)
    else:
        raise ValueError(f"gt_kind must be 'disparity' or 'depth', got {spec.gt_kind!r}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(disp) & (disp > 0)
    if spec.mask is not None:
        mask = _imread_unchanged(spec.mask)
        if mask.ndim == 3:
            mask = mask[:, :, 0]
        if mask.shape != disp.shape:
            raise ValueError(f"{spec.mask}: mask is {mask.shape[::-1]}, disparity {disp.shape[::-1]}")
        valid &= mask >= spec.mask_min
    return np.where(valid, disp, 0.0).astype(np.float32), valid


def load_sample(spec: SampleSpec) -> StereoSample:
    disp, valid = read_ground_truth(spec)
    return StereoSample(read_rgb(spec.left), read_rgb(spec.right), disp, valid, spec.name)


# --------------------------------------------------------------------------------- the dataset

class StereoDataset:
    """Map-style dataset of :class:`StereoSample` (usable with ``torch.utils.data.DataLoader``
    through :class:`foundation_stereo_ros.training.batches.AugmentedDataset`)."""

    def __init__(self, specs: Sequence[SampleSpec], description: str = ""):
        self.specs = list(specs)
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[:3]
            raise ValueError(f"sample names must be unique (the same data listed twice?): {dup}")
        self.description = description

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int) -> StereoSample:
        return load_sample(self.specs[index])

    @property
    def names(self) -> List[str]:
        return [s.name for s in self.specs]

    def __add__(self, other: "StereoDataset") -> "StereoDataset":
        return StereoDataset(self.specs + other.specs, "; ".join(filter(None, (self.description, other.description))))

    def without(self, names: Iterable[str]) -> "StereoDataset":
        """The samples whose name is not in ``names`` (e.g. a curation pass's rejected list)."""
        drop = set(names)
        return StereoDataset([s for s in self.specs if s.name not in drop], self.description)

    def split(self, fraction: float) -> Tuple["StereoDataset", "StereoDataset"]:
        """(train, held-out) with every k-th sample held out, k = round(1 / fraction):
        deterministic and spread over the whole recording or folder."""
        if not 0 < fraction < 1:
            raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
        if len(self) < 2:
            raise ValueError(f"cannot hold out a validation split from {len(self)} sample(s)")
        k = max(2, int(round(1 / fraction)))
        held_idx = {i for i in range(len(self.specs)) if i % k == k - 1} or {len(self.specs) - 1}
        held = [s for i, s in enumerate(self.specs) if i in held_idx]
        keep = [s for i, s in enumerate(self.specs) if i not in held_idx]
        return StereoDataset(keep, self.description), StereoDataset(held, self.description + " (held out)")


def read_name_list(path: PathLike) -> List[str]:
    """Sample names, one per line ('#' comments and blank lines ignored): curation output."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the list: {e.strerror}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
