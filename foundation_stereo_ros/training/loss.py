"""The training loss of FoundationStereo (Wen et al., CVPR 2025, Sec. 3.4):

    L = smoothL1(d_0 - d_gt) + sum_{k=1..K} gamma^(K-k) * |d_k - d_gt|_1

over valid ground-truth pixels, with d_0 the initial disparity (soft-argmin of the filtered cost
volume) and d_k the output of the k-th GRU iteration; gamma = 0.9.

d_0 lives at 1/4 resolution and in 1/4-resolution pixels. The paper compares it with the
full-resolution ground truth; here it is brought to full resolution by multiplying by 4 and
bilinear upsampling with pixel-centre alignment (``align_corners=False``: 1/4-resolution pixel i
covers full-resolution pixels 4i .. 4i+3, which is how the strided encoder and the convex
upsampling of the iterations place it). Each term is the mean over the valid pixels of the whole
batch (as RAFT-Stereo and IGEV-Stereo do), so batches with more valid pixels do not weigh more.
When a batch is one part of a larger one (gradient accumulation, one process's share under
DistributedDataParallel), ``pixels`` is the whole batch's count: the parts' terms then add up to
the whole batch's mean.
Ground truth at or above ``max_disp`` is excluded: the cost volume cannot represent it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


@dataclass
class LossTerms:
    total: torch.Tensor  # scalar, differentiable
    init: torch.Tensor  # smooth-L1 term of d_0 (detached)
    sequence: torch.Tensor  # weighted sum of the iterations' L1 terms (detached)
    final_epe: torch.Tensor  # mean |d_K - gt| over valid pixels (detached): the training EPE
    valid_pixels: int


def upsample_init_disparity(init_disparity: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, 1, H/4, W/4) disparity in 1/4-resolution px -> (B, 1, H, W) in full-resolution px."""
    h4, w4 = init_disparity.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if (h, w) != (4 * h4, 4 * w4):
        raise ValueError(f"ground truth {h}x{w} is not 4x the initial disparity's {h4}x{w4}")
    return F.interpolate(init_disparity * 4.0, size=(h, w), mode="bilinear", align_corners=False)


def loss_mask(gt: torch.Tensor, valid: torch.Tensor, max_disp: Optional[float] = None) -> torch.Tensor:
    """Pixels that supervise: marked valid, finite, > 0 and (if given) below ``max_disp``."""
    mask = valid.bool() & torch.isfinite(gt) & (gt > 0)
    if max_disp is not None:
        mask &= gt < max_disp
    return mask


def sequence_loss(init_disparity: torch.Tensor, iterations: Sequence[torch.Tensor], gt: torch.Tensor,
                  valid: torch.Tensor, gamma: float = 0.9, max_disp: Optional[float] = None,
                  pixels: Optional[float] = None) -> LossTerms:
    """The loss above. ``iterations``: the K full-resolution (B, 1, H, W) predictions in order;
    ``gt``/``valid``: (B, 1, H, W); ``pixels``: the valid-pixel count to average over (default:
    this batch's). With no valid pixel the loss is a differentiable zero."""
    if not iterations:
        raise ValueError("sequence_loss needs at least one iteration output")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if gt.shape != iterations[-1].shape or valid.shape != gt.shape:
        raise ValueError(f"ground truth {tuple(gt.shape)}, valid mask {tuple(valid.shape)} and predictions "
                         f"{tuple(iterations[-1].shape)} must have one shape (B, 1, H, W)")
    mask = loss_mask(gt, valid, max_disp)
    n = int(mask.sum())
    init_up = upsample_init_disparity(init_disparity.float(), gt.shape[-2:])
    if n == 0:
        zero = init_up.sum() * 0.0 + sum(p.sum() for p in iterations) * 0.0
        z = zero.detach()
        return LossTerms(zero, z, z, z, 0)
    if pixels is not None and not pixels >= n:
        raise ValueError(f"pixels ({pixels}) must count at least this batch's {n} valid pixels")
    denom = float(n if pixels is None else pixels)
    target = gt[mask].float()
    init_term = F.smooth_l1_loss(init_up[mask], target, reduction="sum") / denom
    k = len(iterations)
    seq = sum(gamma ** (k - 1 - i) * (pred[mask].float() - target).abs().sum() / denom
              for i, pred in enumerate(iterations))
    final_epe = (iterations[-1][mask].float() - target).abs().sum() / denom
    return LossTerms(init_term + seq, init_term.detach(), seq.detach(), final_epe.detach(), n)
