"""Stereo metrics as pure NumPy functions: disparity errors, depth errors, completeness, latency.

Definitions (all documented in the README's evaluation section):

* A disparity is *valid* when it is finite and > 0; a depth is valid when finite and > 0. Ground
  truth 0 means "unknown", as in Middlebury and KITTI files.
* ``epe``: mean |pred - gt| in pixels over pixels where both are valid.
* ``bad_<t>`` (%): share of ground-truth pixels whose prediction is missing *or* off by more than
  ``t`` px. Missing predictions count as bad so that a method cannot score well by leaving holes.
* ``d1`` (%): KITTI 2015's outlier rate: error > 3 px **and** > 5 % of the true disparity, holes
  counted as outliers like ``bad_<t>``.
* ``abs_rel``: mean |Zpred - Zgt| / Zgt over pixels where both depths are valid;
  ``delta1`` (%): share of those pixels with max(Zpred/Zgt, Zgt/Zpred) < 1.25.
* ``completeness`` (%): share of all pixels with a valid prediction; ``gt_coverage`` (%): share of
  ground-truth pixels with a valid prediction.
* Latency: median and 95th percentile (linear interpolation between samples, NumPy's default).

Per-frame numbers are kept as additive counts (:class:`ErrorCounts`), so the summary over a
recording is pixel-weighted (every ground-truth pixel counts once), not a mean of per-frame means.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from ..pipeline.geometry import check_focal_baseline

DEFAULT_BAD_THRESHOLDS: Tuple[float, ...] = (1.0, 2.0, 3.0)
# KITTI 2015 devkit: a pixel is an outlier when its error exceeds both 3 px and 5 % of the truth.
D1_ABS_PX = 3.0
D1_REL = 0.05
DELTA1_RATIO = 1.25


def _as_map(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) map, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ ({a.shape} vs {b.shape}); resize the ground truth "
                         f"to the prediction's resolution (and scale disparities) first")


def valid_mask(values: np.ndarray) -> np.ndarray:
    """Finite and strictly positive: the validity rule for disparity and depth maps."""
    v = np.asarray(values)
    with np.errstate(invalid="ignore"):
        return np.isfinite(v) & (v > 0)


def threshold_key(t: float) -> str:
    """The metric name of the bad-pixel rate at ``t`` px: ``bad_1``, ``bad_0p5`` ..."""
    return f"bad_{t:g}".replace(".", "p")


def bad_pixels(err: np.ndarray, threshold: float) -> np.ndarray:
    """Errors that make a pixel bad at ``threshold`` px (holes are counted by the caller)."""
    return err > threshold


def d1_outliers(err: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """KITTI 2015's outliers: error > 3 px and > 5 % of the true disparity ``gt``."""
    return (err > D1_ABS_PX) & (err > D1_REL * gt)


@dataclass
class ErrorCounts:
    """Additive per-frame sums; :meth:`summary` turns them into the published metrics."""

    n_pixels: int = 0
    n_pred: int = 0
    n_gt: int = 0
    n_both: int = 0
    sum_abs_err: float = 0.0
    n_bad: Dict[float, int] = field(default_factory=dict)
    n_d1: int = 0
    n_depth: int = 0
    sum_abs_rel: float = 0.0
    n_delta1: int = 0
    has_gt: bool = False
    has_depth: bool = False

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        out = ErrorCounts()
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "n_bad":
                merged = dict(a)
                for k, v in b.items():
                    merged[k] = merged.get(k, 0) + v
                setattr(out, f.name, merged)
            elif isinstance(a, bool):
                setattr(out, f.name, a or b)
            else:
                setattr(out, f.name, a + b)
        return out

    def summary(self) -> Dict[str, Optional[float]]:
        """Metrics as a flat dict; a metric without data (no GT, no valid pixels) is None."""

        def pct(num: float, den: float) -> Optional[float]:
            return 100.0 * num / den if den > 0 else None

        out: Dict[str, Optional[float]] = {
            "completeness": pct(self.n_pred, self.n_pixels),
        }
        if self.has_gt:
            out["gt_coverage"] = pct(self.n_both, self.n_gt)
            out["epe"] = self.sum_abs_err / self.n_both if self.n_both else None
            for t in sorted(self.n_bad):
                out[threshold_key(t)] = pct(self.n_bad[t], self.n_gt)
            out["d1"] = pct(self.n_d1, self.n_gt)
        if self.has_depth:
            out["abs_rel"] = self.sum_abs_rel / self.n_depth if self.n_depth else None
            out["delta1"] = pct(self.n_delta1, self.n_depth)
        return out


def disparity_counts(pred: np.ndarray, gt: Optional[np.ndarray] = None,
                     thresholds: Sequence[float] = DEFAULT_BAD_THRESHOLDS) -> ErrorCounts:
    """Counts for one frame: completeness always, errors when ``gt`` (disparity, 0 = unknown) is given."""
    p = _as_map("prediction", pred)
    pv = valid_mask(p)
    counts = ErrorCounts(n_pixels=int(p.size), n_pred=int(pv.sum()))
    if gt is None:
        return counts
    g = _as_map("ground truth", gt)
    _same_shape(p, g, "disparity metrics")
    if any((not np.isfinite(t)) or t < 0 for t in thresholds):
        raise ValueError(f"bad-pixel thresholds must be finite and >= 0, got {list(thresholds)}")
    gv = valid_mask(g)
    both = gv & pv
    err = np.abs(p[both] - g[both])
    counts.has_gt = True
    counts.n_gt = int(gv.sum())
    counts.n_both = int(both.sum())
    counts.sum_abs_err = float(err.sum())
    holes = counts.n_gt - counts.n_both
    counts.n_bad = {float(t): int(bad_pixels(err, t).sum()) + holes for t in thresholds}
    counts.n_d1 = int(d1_outliers(err, g[both]).sum()) + holes
    return counts


def depth_counts(pred_depth: np.ndarray, gt_depth: np.ndarray) -> ErrorCounts:
    """AbsRel and delta<1.25 sums for one frame, over pixels where both depths are valid."""
    p = _as_map("predicted depth", pred_depth)
    g = _as_map("ground-truth depth", gt_depth)
    _same_shape(p, g, "depth metrics")
    both = valid_mask(p) & valid_mask(g)
    zp, zg = p[both], g[both]
    ratio = np.maximum(zp / zg, zg / zp)
    return ErrorCounts(has_depth=True, n_depth=int(both.sum()),
                       sum_abs_rel=float((np.abs(zp - zg) / zg).sum()),
                       n_delta1=int((ratio < DELTA1_RATIO).sum()))


def frame_counts(pred_disparity: np.ndarray, gt_disparity: Optional[np.ndarray] = None,
                 pred_depth: Optional[np.ndarray] = None, gt_depth: Optional[np.ndarray] = None,
                 thresholds: Sequence[float] = DEFAULT_BAD_THRESHOLDS) -> ErrorCounts:
    """All counts of one frame: disparity errors against ``gt_disparity`` and depth errors when
    both depth maps are given."""
    counts = disparity_counts(pred_disparity, gt_disparity, thresholds)
    if pred_depth is not None and gt_depth is not None:
        counts = counts + depth_counts(pred_depth, gt_depth)
    return counts


def total(counts: Iterable[ErrorCounts]) -> ErrorCounts:
    """Sum of per-frame counts (pixel-weighted aggregation)."""
    out = ErrorCounts()
    for c in counts:
        out = out + c
    return out


def depth_to_disparity(depth: np.ndarray, focal_px: float, baseline_m: float) -> np.ndarray:
    """d = f * B / Z where Z is valid, 0 (unknown) elsewhere, as disparity ground truth is stored."""
    check_focal_baseline(focal_px, baseline_m)
    z = _as_map("depth", depth)
    out = np.zeros(z.shape, dtype=np.float32)
    v = valid_mask(z)
    out[v] = (focal_px * baseline_m / z[v]).astype(np.float32)
    return out


@dataclass
class AgreementCounts:
    """Additive sums comparing two predictions of the same frame (no ground truth needed)."""

    n_pixels: int = 0
    n_both: int = 0
    n_either: int = 0
    sum_abs_diff: float = 0.0
    n_within_1: int = 0
    n_within_3: int = 0

    def __add__(self, other: "AgreementCounts") -> "AgreementCounts":
        if not isinstance(other, AgreementCounts):
            return NotImplemented
        return AgreementCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def summary(self) -> Dict[str, Optional[float]]:
        """``mean_abs_diff`` px over pixels both predict; ``within_1px``/``within_3px`` (%) of
        those; ``both_valid`` (%) of all pixels; ``valid_overlap`` (%): both / either."""
        both = self.n_both
        return {
            "mean_abs_diff": self.sum_abs_diff / both if both else None,
            "within_1px": 100.0 * self.n_within_1 / both if both else None,
            "within_3px": 100.0 * self.n_within_3 / both if both else None,
            "both_valid": 100.0 * both / self.n_pixels if self.n_pixels else None,
            "valid_overlap": 100.0 * both / self.n_either if self.n_either else None,
        }


def agreement_counts(a: np.ndarray, b: np.ndarray) -> AgreementCounts:
    """How closely two disparity maps of the same frame agree."""
    x = _as_map("first disparity", a)
    y = _as_map("second disparity", b)
    _same_shape(x, y, "backend agreement")
    xv, yv = valid_mask(x), valid_mask(y)
    both = xv & yv
    diff = np.abs(x[both] - y[both])
    return AgreementCounts(n_pixels=int(x.size), n_both=int(both.sum()), n_either=int((xv | yv).sum()),
                           sum_abs_diff=float(diff.sum()), n_within_1=int((diff <= 1.0).sum()),
                           n_within_3=int((diff <= 3.0).sum()))


def latency_stats(seconds: Sequence[float]) -> Dict[str, Optional[float]]:
    """Median, 95th percentile, mean, min and max in milliseconds, plus the sample count."""
    s = np.asarray(list(seconds), dtype=np.float64)
    if s.size and not np.all(np.isfinite(s)):
        raise ValueError("latency samples must be finite")
    if s.size == 0:
        return {"n": 0, "median_ms": None, "p95_ms": None, "mean_ms": None, "min_ms": None, "max_ms": None}
    ms = s * 1e3
    return {"n": int(s.size), "median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max())}
