"""Metrics of foundation_stereo_ros.evaluation.metrics against values computed independently here:
hand-worked examples and a per-pixel Python loop over the real Middlebury Aloe ground truth."""
from __future__ import annotations

import numpy as np
import pytest

from foundation_stereo_ros.evaluation import metrics as M
from foundation_stereo_ros.pipeline.geometry import disparity_to_depth

from _eval_helpers import aloe_gt, naive_metrics


def test_hand_worked_example():
    gt = np.array([[10.0, 20.0, 0.0], [100.0, 50.0, 4.0]])
    pred = np.array([[10.5, 18.5, 7.0], [104.0, 54.0, np.nan]])
    # errors on GT pixels: 0.5, 1.5, 4.0 (4 % of 100: not a D1 outlier), 4.0 (8 % of 50: outlier), hole
    s = M.disparity_counts(pred, gt).summary()
    assert s["epe"] == pytest.approx((0.5 + 1.5 + 4.0 + 4.0) / 4)
    assert s["bad_1"] == pytest.approx(100 * 4 / 5)  # 1.5, 4, 4 and the hole
    assert s["bad_2"] == pytest.approx(100 * 3 / 5)
    assert s["bad_3"] == pytest.approx(100 * 3 / 5)
    assert s["d1"] == pytest.approx(100 * 2 / 5)  # the 50 px pixel and the hole
    assert s["completeness"] == pytest.approx(100 * 5 / 6)  # the prediction on the unknown pixel counts
    assert s["gt_coverage"] == pytest.approx(100 * 4 / 5)


def test_depth_metrics_hand_worked():
    zg = np.array([[1.0, 2.0, 4.0, np.nan]])
    zp = np.array([[1.1, 3.0, 4.0, 2.0]])
    s = M.depth_counts(zp, zg).summary()
    assert s["abs_rel"] == pytest.approx((0.1 + 0.5 + 0.0) / 3)
    assert s["delta1"] == pytest.approx(100 * 2 / 3)  # 3/2 = 1.5 fails


def test_against_per_pixel_loop_on_aloe(opencv_data):
    gt = aloe_gt(opencv_data, 0.125)
    rng = np.random.default_rng(3)
    pred = gt + rng.normal(0.0, 2.0, gt.shape).astype(np.float32)
    pred[rng.random(gt.shape) < 0.1] = np.nan  # holes
    pred[:, :8] = -1.0  # a border without matches
    f, b = 467.5, 0.16
    zg = disparity_to_depth(gt, f, b)
    zp = disparity_to_depth(pred, f, b)
    got = M.frame_counts(pred, gt, zp, zg).summary()
    want = naive_metrics(pred.tolist(), gt.tolist(), zp.tolist(), zg.tolist())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def test_totals_are_pixel_weighted():
    gt1, p1 = np.full((2, 2), 10.0), np.full((2, 2), 11.5)  # 4 px, error 1.5
    gt2, p2 = np.full((1, 2), 10.0), np.full((1, 2), 10.0)  # 2 px, error 0
    tot = M.total([M.disparity_counts(p1, gt1), M.disparity_counts(p2, gt2)]).summary()
    assert tot["epe"] == pytest.approx((4 * 1.5) / 6)  # not the mean of the frame means (0.75)
    assert tot["bad_1"] == pytest.approx(100 * 4 / 6)


def test_without_ground_truth_only_completeness():
    s = M.disparity_counts(np.array([[1.0, np.nan], [0.0, 2.0]])).summary()
    assert s == {"completeness": 50.0}


def test_agreement():
    a = np.array([[10.0, 20.0, np.nan, 5.0]])
    b = np.array([[10.5, 24.0, 3.0, np.nan]])
    s = M.agreement_counts(a, b).summary()
    assert s["mean_abs_diff"] == pytest.approx((0.5 + 4.0) / 2)
    assert s["within_1px"] == pytest.approx(50.0)
    assert s["within_3px"] == pytest.approx(50.0)
    assert s["both_valid"] == pytest.approx(50.0)
    assert s["valid_overlap"] == pytest.approx(100 * 2 / 4)


def test_latency_percentiles():
    samples = [0.010, 0.020, 0.030, 0.040, 0.100]
    s = M.latency_stats(samples)
    assert s["median_ms"] == pytest.approx(30.0)
    # 95th percentile by linear interpolation: rank 0.95 * (n - 1) = 3.8 -> 40 + 0.8 * (100 - 40)
    assert s["p95_ms"] == pytest.approx(88.0)
    assert s["n"] == 5
    assert M.latency_stats([])["median_ms"] is None


def test_conversions_round_trip():
    d = np.array([[0.0, 10.0, np.nan, 20.0]], np.float32)
    z = disparity_to_depth(d, 500.0, 0.1)
    assert np.isnan(z[0, 0]) and np.isnan(z[0, 2]) and z[0, 1] == pytest.approx(5.0) and z[0, 3] == pytest.approx(2.5)
    back = M.depth_to_disparity(z, 500.0, 0.1)
    np.testing.assert_allclose(back, [[0.0, 10.0, 0.0, 20.0]], rtol=1e-6)


@pytest.mark.parametrize("call", [
    lambda: M.disparity_counts(np.zeros((2, 3)), np.zeros((3, 2))),
    lambda: M.disparity_counts(np.zeros((2, 3, 2))),
    lambda: M.disparity_counts(np.ones((2, 2)), np.ones((2, 2)), thresholds=(-1,)),
    lambda: disparity_to_depth(np.ones((2, 2)), 0.0, 0.1),
    lambda: M.latency_stats([0.1, float("nan")]),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
