"""Convolutional building blocks shared by the feature, cost-filtering and update modules.

Attribute names follow the published checkpoints (``conv``/``bn``, ``conv1``/``norm1`` ...), so
state dicts load without a key-renaming table.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(kind: Optional[str], channels: int, dims: int) -> nn.Module:
    if kind is None:
        return nn.Identity()
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels)
    if kind == "layer":
        return LayerNorm2d(channels)
    raise ValueError(f"unknown norm {kind!r}")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2).contiguous()


class ConvNormLeakyReLU(nn.Module):
    """Bias-free (transposed) 2D/3D convolution, optional norm, LeakyReLU(0.01)."""

    def __init__(self, in_channels: int, out_channels: int, *, dims: int = 2, transposed: bool = False,
                 norm: Optional[str] = "batch", act: bool = True, **conv_kwargs):
        super().__init__()
        conv = {(2, False): nn.Conv2d, (2, True): nn.ConvTranspose2d,
                (3, False): nn.Conv3d, (3, True): nn.ConvTranspose3d}[(dims, transposed)]
        self.conv = conv(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = _norm(norm, out_channels, dims)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.leaky_relu(x, 0.01) if self.act else x


class ResidualBlock(nn.Module):
    """RAFT-style residual block (biased 3x3 convs, norm, ReLU), optionally strided."""

    def __init__(self, in_planes: int, planes: int, norm: Optional[str] = "batch", stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.norm1 = _norm(norm, planes, 2)
        self.norm2 = _norm(norm, planes, 2)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            # The published checkpoints store this norm twice, as ``norm3`` and as
            # ``downsample.1``: one shared module, registered before ``downsample`` so that
            # loading a state dict leaves the ``downsample.1`` values in it, as the reference does.
            self.norm3 = _norm(norm, planes, 2)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class BiasFreeResidualBlock(nn.Module):
    """Residual block of two bias-free 3x3(x3) convolutions with norm (torchvision BasicBlock)."""

    def __init__(self, channels: int, *, dims: int = 2, norm: str = "batch"):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.conv1 = conv(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = _norm(norm, channels, dims)
        self.conv2 = conv(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = _norm(norm, channels, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class UpsampleConcatConv(nn.Module):
    """Upsample x2 with a transposed conv, concatenate the skip features, fuse.

    ``fuse`` is a plain conv (``"conv"``) or a residual block with instance norm
    (``"residual_instance"``), the two fusions the published network uses.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: Optional[str], fuse: str):
        super().__init__()
        up_norm = "instance" if fuse == "residual_instance" else norm
        self.conv1 = ConvNormLeakyReLU(in_channels, out_channels, transposed=True, norm=up_norm,
                                       kernel_size=4, stride=2, padding=1)
        if fuse == "residual_instance":
            self.conv2 = BiasFreeResidualBlock(out_channels * 2, norm="instance")
        else:
            self.conv2 = ConvNormLeakyReLU(out_channels * 2, out_channels * 2, norm=norm,
                                           kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv2(torch.cat((x, skip), dim=1))


class EdgeNeXtConvBlock(nn.Module):
    """EdgeNeXt conv encoder block without norm: depthwise 7x7, MLP x4, layer scale, residual."""

    def __init__(self, dim: int, expansion: int = 4, kernel_size: int = 7):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        self.pwconv1 = nn.Linear(dim, expansion * dim)
        self.pwconv2 = nn.Linear(expansion * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(F.gelu(self.pwconv1(y))) * self.gamma
        return x + y.permute(0, 3, 1, 2)
