"""Geometry encoding volume and its lookup (Sec. 3.4).

Two pyramids are sampled around the current disparity estimate at every GRU iteration:
the filtered cost volume (B, C, D, H, W) along its disparity axis, and an all-pairs
cosine correlation of the 1/4 features along the right image's columns. Each level halves
the disparity/column axis by average pooling. Sampling is 1-D linear interpolation with
zeros outside the axis (``grid_sample(align_corners=True)`` semantics), written as two
gathers so that it never needs a host-device synchronisation. Both the tables and the lookups
are float32, inside an autocast region too.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F


def linear_sample_1d(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sample rows of ``values`` (N, C, L) at fractional positions ``x`` (N, K).

    Returns (N, C, K); positions outside [0, L-1] blend with zeros as grid_sample does.
    """
    n, c, length = values.shape
    x = x.to(values.dtype)
    x0 = torch.floor(x)
    w1 = x - x0
    w0 = 1.0 - w1
    i0 = x0.long()
    i1 = i0 + 1
    ok0 = (i0 >= 0) & (i0 < length)
    ok1 = (i1 >= 0) & (i1 < length)
    idx0 = i0.clamp(0, length - 1).unsqueeze(1).expand(n, c, -1)
    idx1 = i1.clamp(0, length - 1).unsqueeze(1).expand(n, c, -1)
    v0 = torch.gather(values, 2, idx0) * (w0 * ok0).unsqueeze(1)
    v1 = torch.gather(values, 2, idx1) * (w1 * ok1).unsqueeze(1)
    return v0 + v1


def all_pairs_correlation(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every left pixel with every right pixel of its row: (B, H, W, W)."""
    left = F.normalize(left.float(), dim=1)
    right = F.normalize(right.float(), dim=1)
    return torch.einsum("bchw,bchv->bhwv", left, right)


class GeometryEncodingVolume:
    """Lookup tables built once per pair, sampled once per GRU iteration."""

    def __init__(self, left: torch.Tensor, right: torch.Tensor, volume: torch.Tensor, levels: int, radius: int):
        with torch.autocast(volume.device.type, enabled=False):  # float32 tables
            self._build(left, right, volume, levels, radius)

    def _build(self, left: torch.Tensor, right: torch.Tensor, volume: torch.Tensor, levels: int, radius: int) -> None:
        b, c, d, h, w = volume.shape
        self.levels = levels
        self.offsets = torch.arange(-radius, radius + 1, device=volume.device, dtype=torch.float32)  # (K,)
        geo = volume.float().permute(0, 3, 4, 1, 2).reshape(b * h * w, c, d)  # (BHW, C, D)
        corr = all_pairs_correlation(left, right).reshape(b * h * w, 1, w)  # (BHW, 1, W)
        self.geo_pyramid: List[torch.Tensor] = [geo]
        self.corr_pyramid: List[torch.Tensor] = [corr]
        for _ in range(levels - 1):
            self.geo_pyramid.append(F.avg_pool1d(self.geo_pyramid[-1], 2, stride=2))
            self.corr_pyramid.append(F.avg_pool1d(self.corr_pyramid[-1], 2, stride=2))
        self.columns = torch.arange(w, device=volume.device, dtype=torch.float32).repeat(b * h)  # x of each pixel

    def __call__(self, disp: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """disp (B, 1, H, W) at 1/4 resolution -> features (B, levels*(C+1)*(2r+1), H, W),
        sampled in float32 and returned in ``dtype`` (that of the convolutions reading them)."""
        with torch.autocast(disp.device.type, enabled=False):
            return self._lookup(disp, dtype)

    def _lookup(self, disp: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        b, _, h, w = disp.shape
        d = disp.float().reshape(-1, 1)  # (BHW, 1)
        out = []
        for i in range(self.levels):
            scale = 2.0 ** i
            geo = linear_sample_1d(self.geo_pyramid[i], d / scale + self.offsets)  # (BHW, C, K)
            x_right = (self.columns.unsqueeze(1) - d) / scale + self.offsets  # column in the right view
            corr = linear_sample_1d(self.corr_pyramid[i], x_right)  # (BHW, 1, K)
            out.append(geo.reshape(b, h, w, -1))
            out.append(corr.reshape(b, h, w, -1))
        # One copy makes it contiguous and casts it. (B, levels*(C+1)*(2r+1), H, W)
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).to(dtype, memory_format=torch.contiguous_format)
