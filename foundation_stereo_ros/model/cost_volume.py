"""Hybrid cost volume (Sec. 3.2): group-wise correlation + concatenation of projected features.

For disparity d, pixel x of the left view is compared with pixel x - d of the right view;
where x - d falls outside the image the right-view entries are zero. Both volumes are built
without a Python loop over disparities: the right view is padded on the left by D - 1 zero
columns and read through a strided sliding-window view.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _shifted_right(right: torch.Tensor, max_disp: int) -> torch.Tensor:
    """View (B, C, D, H, W) whose [:, :, d, :, x] is right[..., x - d], zero where x < d."""
    b, c, h, w = right.shape
    padded = F.pad(right, (max_disp - 1, 0))  # (B, C, H, W + D - 1)
    windows = padded.unfold(3, w, 1)  # (B, C, H, D, W): window k starts at column k
    return windows.flip(3).permute(0, 1, 3, 2, 4)  # window D-1-d holds the shift by d


def group_correlation_volume(left: torch.Tensor, right: torch.Tensor, max_disp: int, groups: int,
                             chunk: int = 32) -> torch.Tensor:
    """Cosine similarity per channel group: (B, G, D, H, W), computed in float32."""
    b, c, h, w = left.shape
    if c % groups:
        raise ValueError(f"{c} feature channels do not split into {groups} groups")
    # Per-pixel normalisation commutes with the horizontal shift, so normalise once.
    l = F.normalize(left.float().reshape(b, groups, c // groups, h, w), dim=2)
    r = F.normalize(right.float().reshape(b, groups, c // groups, h, w), dim=2)
    shifted = _shifted_right(r.reshape(b, c, h, w), max_disp)  # (B, C, D, H, W), a view
    shifted = shifted.reshape(b, groups, c // groups, max_disp, h, w)
    l = l.unsqueeze(3)  # (B, G, C/G, 1, H, W)
    # Chunks over disparity bound the (B, C, chunk, H, W) product that is summed.
    parts = [(l * shifted[:, :, :, d:d + chunk]).sum(dim=2) for d in range(0, max_disp, chunk)]
    return torch.cat(parts, dim=2)  # (B, G, D, H, W)


def concat_volume(left: torch.Tensor, right: torch.Tensor, max_disp: int) -> torch.Tensor:
    """(B, 2C, D, H, W): left features at every disparity, right features shifted by d."""
    b, c, h, w = left.shape
    left_part = left.unsqueeze(2).expand(b, c, max_disp, h, w)
    return torch.cat([left_part, _shifted_right(right, max_disp)], dim=1).contiguous()


def soft_argmin(prob: torch.Tensor) -> torch.Tensor:
    """Expected disparity index under a softmax over (B, D, H, W): (B, 1, H, W)."""
    d = torch.arange(prob.shape[1], dtype=prob.dtype, device=prob.device).reshape(1, -1, 1, 1)
    return (prob * d).sum(dim=1, keepdim=True)
