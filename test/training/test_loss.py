"""The paper's loss against hand computations, and the per-sample metrics."""
import math

import numpy as np
import pytest
import torch

from foundation_stereo_ros.training import disparity_errors, mean_metrics, sequence_loss, upsample_init_disparity
from foundation_stereo_ros.training.loss import loss_mask


def smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


def test_loss_matches_hand_computation():
    # 1/4-resolution initial disparity constant 1.5 -> 6.0 px everywhere at full resolution.
    init = torch.full((1, 1, 1, 2), 1.5)
    gt_vals = [[6.2, 8.0, 5.0, 6.0, 3.0, 6.5, 7.0, 1.0],
               [6.0, 6.0, 9.0, 6.0, 6.0, 6.0, 6.0, 6.0],
               [5.5, 6.0, 6.0, 70.0, 6.0, float("inf"), 6.0, 0.0],
               [6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0]]
    gt = torch.tensor(gt_vals).reshape(1, 1, 4, 8)
    valid = torch.ones_like(gt, dtype=torch.bool)
    valid[0, 0, 3, :4] = False  # marked invalid by the dataset
    preds = [torch.full_like(gt, 5.0), torch.full_like(gt, 6.5),
             torch.arange(32, dtype=torch.float32).reshape(1, 1, 4, 8) * 0.25 + 4.0]
    gamma, max_disp = 0.9, 64.0
    terms = sequence_loss(init, preds, gt, valid, gamma=gamma, max_disp=max_disp)

    # By hand: valid = marked valid, finite, > 0, < max_disp (70 and inf and 0 drop out).
    pixels = [(y, x) for y in range(4) for x in range(8)
              if not (y == 3 and x < 4) and math.isfinite(gt_vals[y][x]) and 0 < gt_vals[y][x] < max_disp]
    assert terms.valid_pixels == len(pixels) == 32 - 4 - 3
    init_term = sum(smooth_l1(6.0 - gt_vals[y][x]) for y, x in pixels) / len(pixels)
    seq = 0.0
    for k, pred in enumerate(preds, start=1):
        l1 = sum(abs(float(pred[0, 0, y, x]) - gt_vals[y][x]) for y, x in pixels) / len(pixels)
        seq += gamma ** (len(preds) - k) * l1
    final_epe = sum(abs(float(preds[-1][0, 0, y, x]) - gt_vals[y][x]) for y, x in pixels) / len(pixels)
    assert float(terms.init) == pytest.approx(init_term, rel=1e-6)
    assert float(terms.sequence) == pytest.approx(seq, rel=1e-6)
    assert float(terms.total) == pytest.approx(init_term + seq, rel=1e-6)
    assert float(terms.final_epe) == pytest.approx(final_epe, rel=1e-6)

    # Parts of a batch (accumulation, one process's share under DDP) averaged over the whole
    # batch's valid pixels add up to the whole batch's loss.
    halves = [sequence_loss(init[..., i:i + 1], [p[..., 4 * i:4 * i + 4] for p in preds], gt[..., 4 * i:4 * i + 4],
                            valid[..., 4 * i:4 * i + 4], gamma=gamma, max_disp=max_disp, pixels=len(pixels))
              for i in range(2)]
    for key in ("total", "init", "sequence", "final_epe"):
        assert float(sum(getattr(h, key) for h in halves)) == pytest.approx(float(getattr(terms, key)), rel=1e-6)
    with pytest.raises(ValueError, match="pixels"):
        sequence_loss(init, preds, gt, valid, max_disp=max_disp, pixels=3)


def test_initial_disparity_is_scaled_by_four_and_pixel_centre_aligned():
    # One row of 1/4-resolution values; full-resolution pixel x sits at quarter-grid position
    # (x + 0.5) / 4 - 0.5 (centres aligned), clamped at the borders, value times 4.
    quarter = np.array([1.0, 3.0, 2.0, 5.0])
    up = upsample_init_disparity(torch.tensor(quarter, dtype=torch.float32).reshape(1, 1, 1, 4), (4, 16))
    pos = np.clip((np.arange(16) + 0.5) / 4 - 0.5, 0, 3)
    expected = 4 * np.interp(pos, np.arange(4), quarter)
    for row in range(4):
        np.testing.assert_allclose(up[0, 0, row].numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="4x"):
        upsample_init_disparity(torch.zeros(1, 1, 2, 4), (8, 15))


def test_gradients_reach_only_valid_pixels_and_empty_masks_are_harmless():
    gt = torch.full((1, 1, 8, 8), 4.0)
    valid = torch.zeros_like(gt, dtype=torch.bool)
    valid[..., :4, :] = True
    init = torch.full((1, 1, 2, 2), 2.0, requires_grad=True)  # 8 px against 4 px ground truth
    pred = torch.zeros(1, 1, 8, 8, requires_grad=True)
    sequence_loss(init, [pred], gt, valid).total.backward()
    assert (pred.grad[..., :4, :] != 0).all() and (pred.grad[..., 4:, :] == 0).all()
    assert init.grad.abs().sum() > 0

    pred2 = torch.zeros(1, 1, 8, 8, requires_grad=True)
    terms = sequence_loss(torch.ones(1, 1, 2, 2), [pred2], gt, torch.zeros_like(valid))
    terms.total.backward()
    assert terms.valid_pixels == 0 and float(terms.total.detach()) == 0.0 and torch.isfinite(pred2.grad).all()


def test_loss_rejects_bad_input():
    gt = torch.ones(1, 1, 8, 8)
    with pytest.raises(ValueError, match="at least one"):
        sequence_loss(torch.ones(1, 1, 2, 2), [], gt, gt > 0)
    with pytest.raises(ValueError, match="gamma"):
        sequence_loss(torch.ones(1, 1, 2, 2), [gt], gt, gt > 0, gamma=1.5)
    with pytest.raises(ValueError, match="one shape"):
        sequence_loss(torch.ones(1, 1, 2, 2), [torch.ones(1, 1, 8, 4)], gt, gt > 0)
    m = loss_mask(torch.tensor([1.0, float("nan"), -1.0, 500.0]), torch.ones(4, dtype=torch.bool), 416)
    assert m.tolist() == [True, False, False, False]


def test_disparity_errors_by_hand():
    gt = np.array([[1.0, 2.0, 10.0, 0.0], [4.0, np.inf, 100.0, 5.0]])
    pred = np.array([[1.5, 5.0, 10.2, 9.0], [np.nan, 1.0, 104.5, 5.0]])
    m = disparity_errors(pred, gt)
    # valid gt: 1, 2, 10, 4, 100, 5 (0 and inf are unknown); errors 0.5, 3, 0.2, nan(hole), 4.5, 0
    assert m["valid_pixels"] == 6
    assert m["epe"] == pytest.approx((0.5 + 3 + 0.2 + 4.5 + 0) / 5)
    assert m["bad_1"] == pytest.approx(100 * 3 / 6)  # 3, hole, 4.5
    assert m["bad_2"] == pytest.approx(100 * 3 / 6)
    assert m["bad_3"] == pytest.approx(100 * 2 / 6)  # hole, 4.5 (3 is not > 3)
    assert m["d1"] == pytest.approx(100 * 1 / 6)  # the hole only: 4.5 px is < 5 % of 100 px
    mean = mean_metrics([m, {"valid_pixels": 0, "epe": float("nan")}, {**m, "epe": 1.0}])
    assert mean["samples"] == 2 and mean["epe"] == pytest.approx((m["epe"] + 1.0) / 2)
    assert math.isnan(disparity_errors(pred, np.zeros_like(gt))["epe"])


def test_schedule_and_batch_order():
    from foundation_stereo_ros.training.batches import ShardedBatches
    from foundation_stereo_ros.training.distributed import DistributedContext
    from foundation_stereo_ros.training.trainer import WarmupLinearDecay

    f = WarmupLinearDecay(steps=100, warmup_fraction=0.1, final=0.05)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11) and f(10) == 1.0
    assert f(55) == pytest.approx(1 - 0.95 * 0.5) and f(100) == pytest.approx(0.05)
    assert WarmupLinearDecay(steps=2, warmup_fraction=0.0, final=1.0)(1) == 1.0

    full = list(ShardedBatches(size=5, per_step=2, seed=3, start=0, steps=9))
    assert len(full) == 9 and all(len(b) <= 2 for b in full)
    for epoch in range(3):  # each epoch (3 batches) visits every sample once
        idx = [i for b in full[3 * epoch:3 * epoch + 3] for e, i in b]
        assert sorted(idx) == list(range(5)) and {e for b in full[3 * epoch:3 * epoch + 3] for e, _ in b} == {epoch}
    assert [i for e, i in full[0]] != [i for e, i in full[3]] or [i for e, i in full[1]] != [i for e, i in full[4]]
    assert list(ShardedBatches(size=5, per_step=2, seed=3, start=4, steps=9)) == full[4:]  # resumed order
    # two processes with one sample each per step see the one process's global batch of two
    shards = [list(ShardedBatches(size=6, per_step=1, seed=3, start=0, steps=6, ctx=DistributedContext(r, 2, r)))
              for r in range(2)]
    single = list(ShardedBatches(size=6, per_step=2, seed=3, start=0, steps=6))
    assert [sorted(a + b) for a, b in zip(*shards)] == [sorted(b) for b in single]
