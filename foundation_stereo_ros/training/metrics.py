"""Per-sample disparity errors for validation and curation.

Over the ground-truth pixels that are valid (finite, > 0 and marked valid):

* ``epe``: mean |pred - gt| in px;
* ``bad_<t>`` (%): share of those pixels with error > t px, a non-finite prediction counting as
  an error (so a model cannot score well by leaving holes);
* ``d1`` (%): KITTI 2015's outlier rate, error > 3 px and > 5 % of the true disparity.

The thresholds, the bad-pixel and D1 rules and the metric names are those of
:mod:`foundation_stereo_ros.evaluation.metrics`, applied to one sample; validation reports the
mean over samples (every sample weighs the same, however many valid pixels it has). Unlike a
published disparity, a network prediction is a hole only where it is not finite.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

from foundation_stereo_ros.evaluation.metrics import (DEFAULT_BAD_THRESHOLDS, bad_pixels, d1_outliers,
                                                      threshold_key, valid_mask)

BAD_THRESHOLDS = DEFAULT_BAD_THRESHOLDS
bad_key = threshold_key


def disparity_errors(pred: np.ndarray, gt: np.ndarray, valid: Optional[np.ndarray] = None,
                     thresholds: Sequence[float] = BAD_THRESHOLDS) -> Dict[str, float]:
    """Metrics of one (H, W) prediction; ``valid_pixels`` 0 gives NaN errors."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be (H, W) of one size")
    mask = valid_mask(gt)
    if valid is not None:
        mask &= np.asarray(valid, dtype=bool)
    n = int(mask.sum())
    out: Dict[str, float] = {"valid_pixels": float(n)}
    if n == 0:
        out.update({"epe": float("nan"), "d1": float("nan"), **{bad_key(t): float("nan") for t in thresholds}})
        return out
    err = np.abs(pred[mask] - gt[mask])
    finite = np.isfinite(err)
    err_bad = np.where(finite, err, np.inf)
    out["epe"] = float(err[finite].mean()) if finite.any() else float("inf")
    for t in thresholds:
        out[bad_key(t)] = float(100.0 * bad_pixels(err_bad, t).mean())
    out["d1"] = float(100.0 * d1_outliers(err_bad, gt[mask]).mean())
    return out


def mean_metrics(rows: Iterable[Mapping[str, float]]) -> Dict[str, float]:
    """Mean of each metric over the samples that have valid ground truth."""
    rows = [r for r in rows if r.get("valid_pixels", 0) > 0]
    if not rows:
        return {"samples": 0.0}
    keys = [k for k in rows[0] if k != "valid_pixels"]
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["samples"] = float(len(rows))
    return out
