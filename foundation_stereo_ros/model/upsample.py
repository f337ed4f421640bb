"""Convex upsampling of the 1/4 disparity to full resolution (Sec. 3.4).

Each full-resolution pixel is a softmax-weighted mix of the 3x3 neighbourhood of its 1/4
parent; the weights come from the GRU mask features fused with a 1/2-resolution stem.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ConvNormLeakyReLU


def image_stem(in_channels: int, out_channels: int) -> nn.Sequential:
    """Stride-2 conv stem with instance norm."""
    return nn.Sequential(
        ConvNormLeakyReLU(in_channels, out_channels, norm="instance", kernel_size=3, stride=2, padding=1),
        nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
        nn.InstanceNorm2d(out_channels), nn.ReLU())


def convex_upsample(disp: torch.Tensor, weights: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """disp (B, 1, h, w), weights (B, 9, factor*h, factor*w) summing to 1 -> (B, 1, fh, fw)."""
    b, _, h, w = disp.shape
    neighbours = F.unfold(disp, 3, padding=1).reshape(b, 9, h, w)  # zero outside the image
    neighbours = F.interpolate(neighbours, (h * factor, w * factor), mode="nearest")
    return (neighbours * weights).sum(dim=1, keepdim=True)
