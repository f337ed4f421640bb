"""Hybrid cost volume (Sec. 3.2): group-wise correlation + concatenation of projected features.

For disparity d, pixel x of the left view is compared with pixel x - d of the right view;
where x - d falls outside the image the right-view entries are zero. Both volumes are built
without a Python loop over disparities: the correlation as one batched matmul read out along
its band, the concatenation through sliding windows over the zero-padded right view.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _shifted_right(right: torch.Tensor, max_disp: int) -> torch.Tensor:
    """(B, C, D, H, W) whose [:, :, d, :, x] is right[..., x - d], zero where x < d.

    ``flip`` copies (PyTorch has no negative strides), so this is one C x D x H x W copy: used
    only for the concatenation's few projected channels, never for the 1/4 features."""
    b, c, h, w = right.shape
    padded = F.pad(right, (max_disp - 1, 0))  # (B, C, H, W + D - 1)
    windows = padded.unfold(3, w, 1)  # (B, C, H, D, W): window k starts at column k
    return windows.flip(3).permute(0, 1, 3, 2, 4)  # window D-1-d holds the shift by d


def group_correlation_volume(left: torch.Tensor, right: torch.Tensor, max_disp: int, groups: int) -> torch.Tensor:
    """Cosine similarity per channel group: (B, G, D, H, W), computed in float32.

    Per group and image row this is a banded matrix product, so it is computed as one batched
    matmul against the right view with its columns reversed and D zero columns appended, then
    the band is read out with a pad-free skew (a flat slice and a reshape). Nothing of size
    C x D x H x W is ever made: at 480x640 the largest intermediate is 0.16 GB, not 2 GB.
    """
    b, c, h, w = left.shape
    if c % groups:
        raise ValueError(f"{c} feature channels do not split into {groups} groups")
    cg = c // groups
    # Per-pixel normalisation commutes with the horizontal shift, so normalise once.
    l = F.normalize(left.float().reshape(b, groups, cg, h, w), dim=2)
    r = F.normalize(right.float().reshape(b, groups, cg, h, w), dim=2)
    # Column j of r_rev is right column w-1-j for j < w, zero for w <= j < w + D.
    r_rev = F.pad(r.flip(-1), (0, max_disp))  # (B, G, C/G, H, W + D)
    with torch.autocast(l.device.type, enabled=False):  # float32 even inside an autocast region
        m = torch.matmul(l.permute(0, 1, 3, 4, 2), r_rev.permute(0, 1, 3, 2, 4))  # (B, G, H, W, W + D)
    # Disparity d at left column x reads right column x - d, i.e. m[x, w-1-x+d], whose flat
    # offset x*(W+D) + w-1-x+d = (w-1) + x*(W+D-1) + d: a slice and a reshape, no gather. For
    # d > x the column lands in the appended zeros, so the volume is zero there.
    flat = m.reshape(b, groups, h, w * (w + max_disp))
    band = flat[..., w - 1:w - 1 + w * (w + max_disp - 1)].reshape(b, groups, h, w, w + max_disp - 1)
    return band[..., :max_disp].permute(0, 1, 4, 2, 3).contiguous()  # (B, G, D, H, W)


def concat_volume(left: torch.Tensor, right: torch.Tensor, max_disp: int) -> torch.Tensor:
    """(B, 2C, D, H, W): left features at every disparity, right features shifted by d."""
    b, c, h, w = left.shape
    left_part = left.unsqueeze(2).expand(b, c, max_disp, h, w)
    return torch.cat([left_part, _shifted_right(right, max_disp)], dim=1).contiguous()


def soft_argmin(prob: torch.Tensor) -> torch.Tensor:
    """Expected disparity index under a softmax over (B, D, H, W): (B, 1, H, W)."""
    d = torch.arange(prob.shape[1], dtype=prob.dtype, device=prob.device).reshape(1, -1, 1, 1)
    return (prob * d).sum(dim=1, keepdim=True)
