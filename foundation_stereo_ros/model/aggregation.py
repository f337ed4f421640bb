"""Attentive hybrid cost filtering (Sec. 3.3): axial-planar 3D hourglass + disparity transformer.

The 3D hourglass filters the (B, 28, D/4, H/4, W/4) hybrid volume; its convolutions are split
into a spatial k x k x 1 and a disparity 1 x 1 x 17 part (axial-planar convolution). In
parallel, a disparity transformer attends over the disparity tokens of each pixel of a 1/16
patchified copy of the volume; its output is upsampled and added before the last filters.
Left-image features gate the volume channels at every scale (feature-guided excitation).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention_over_tokens
from .layers import ConvNormLeakyReLU


class AxialPlanarConv3d(nn.Module):
    """Spatial (1, k, k) conv -> BN -> ReLU, then disparity (k_d, 1, 1) conv -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, kernel_disp: int = 17):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=(1, kernel_size, kernel_size),
                      padding=(0, kernel_size // 2, kernel_size // 2)),
            nn.BatchNorm3d(out_channels), nn.ReLU())
        self.conv2 = nn.Sequential(
            nn.Conv3d(out_channels, out_channels, kernel_size=(kernel_disp, 1, 1), padding=(kernel_disp // 2, 0, 0)),
            nn.BatchNorm3d(out_channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class FeatureGuidedExcitation(nn.Module):
    """Gate cost-volume channels by a sigmoid of projected image features (same H, W)."""

    def __init__(self, volume_channels: int, feature_channels: int):
        super().__init__()
        self.feat_att = nn.Sequential(
            ConvNormLeakyReLU(feature_channels, feature_channels // 2, norm="batch", kernel_size=1),
            nn.Conv2d(feature_channels // 2, volume_channels, 1))

    def forward(self, volume: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        gate = self.feat_att(features).unsqueeze(2)  # (B, C, 1, H, W)
        return torch.sigmoid(gate) * volume


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """Transformer sine/cosine position table (length, dim)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


class TokenSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        shape = (n, length, self.heads, dim // self.heads)
        q, k, v = (p(x).reshape(shape) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(attention_over_tokens(q, k, v).reshape(n, length, dim))


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: x = LN(x + SA(x)); x = LN(x + FFN(x)), GELU."""

    def __init__(self, dim: int, heads: int, feedforward: int):
        super().__init__()
        self.self_attn = TokenSelfAttention(dim, heads)
        self.linear1 = nn.Linear(dim, feedforward)
        self.linear2 = nn.Linear(feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x))
        return self.norm2(x + self.linear2(F.gelu(self.linear1(x))))


class DisparityTransformer(nn.Module):
    """Self-attention over the D disparity tokens of every pixel of a (B, C, D, H, W) volume."""

    def __init__(self, dim: int, heads: int, layers: int, max_tokens: int):
        super().__init__()
        self.sa = nn.ModuleList([TransformerEncoderLayer(dim, heads, dim) for _ in range(layers)])
        self.register_buffer("positions", sinusoidal_positions(max_tokens, dim), persistent=False)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = volume.shape
        if d > self.positions.shape[0]:
            raise ValueError(f"{d} disparity tokens exceed the position table ({self.positions.shape[0]})")
        x = volume.permute(0, 3, 4, 2, 1).reshape(b * h * w, d, c)  # one sequence per pixel
        x = x + self.positions[:d].to(x.dtype)
        for layer in self.sa:
            x = layer(x)
        return x.reshape(b, h, w, d, c).permute(0, 4, 3, 1, 2)  # (B, C, D, H, W)


def _down3d(cin: int, cout: int, kernel_disp: int) -> nn.Sequential:
    return nn.Sequential(
        ConvNormLeakyReLU(cin, cout, dims=3, norm="batch", kernel_size=3, padding=1, stride=2),
        AxialPlanarConv3d(cout, cout, 3, kernel_disp))


def _up3d(cin: int, cout: int) -> ConvNormLeakyReLU:
    return ConvNormLeakyReLU(cin, cout, dims=3, transposed=True, norm="batch",
                             kernel_size=(4, 4, 4), padding=(1, 1, 1), stride=(2, 2, 2))


def _merge3d(cin: int, cout: int, kernel_disp: int) -> nn.Sequential:
    return nn.Sequential(
        ConvNormLeakyReLU(cin, cout, dims=3, norm="batch", kernel_size=1, padding=0, stride=1),
        AxialPlanarConv3d(cout, cout, 3, kernel_disp), AxialPlanarConv3d(cout, cout, 3, kernel_disp))


class CostVolumeHourglass(nn.Module):
    """Three-scale 3D hourglass with feature excitation, plus the disparity transformer branch."""

    def __init__(self, channels: int, feature_channels: Sequence[int], max_disp: int, kernel_disp: int,
                 transformer_heads: int, transformer_layers: int):
        super().__init__()
        c = channels
        self.conv1 = _down3d(c, c * 2, kernel_disp)
        self.conv2 = _down3d(c * 2, c * 4, kernel_disp)
        self.conv3 = _down3d(c * 4, c * 6, kernel_disp)
        self.conv3_up = _up3d(c * 6, c * 4)
        self.conv2_up = _up3d(c * 4, c * 2)
        self.conv1_up = _up3d(c * 2, c)
        self.conv_out = nn.Sequential(AxialPlanarConv3d(c, c, 3, kernel_disp), AxialPlanarConv3d(c, c, 3, kernel_disp))
        self.agg_0 = _merge3d(c * 8, c * 4, kernel_disp)
        self.agg_1 = _merge3d(c * 4, c * 2, kernel_disp)
        # The transformer runs on a 4x patchified volume: D/4 = max_disp/16 tokens per pixel.
        self.atts = nn.ModuleDict({"4": DisparityTransformer(c, transformer_heads, transformer_layers, max_disp // 16)})
        self.conv_patch = nn.Sequential(nn.Conv3d(c, c, kernel_size=4, stride=4, groups=c), nn.BatchNorm3d(c))
        self.feature_att_8 = FeatureGuidedExcitation(c * 2, feature_channels[1])
        self.feature_att_16 = FeatureGuidedExcitation(c * 4, feature_channels[2])
        self.feature_att_32 = FeatureGuidedExcitation(c * 6, feature_channels[3])
        self.feature_att_up_16 = FeatureGuidedExcitation(c * 4, feature_channels[2])
        self.feature_att_up_8 = FeatureGuidedExcitation(c * 2, feature_channels[1])

    def forward(self, volume: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        conv1 = self.feature_att_8(self.conv1(volume), features[1])  # (B, 2C, D/8, H/8, W/8)
        conv2 = self.feature_att_16(self.conv2(conv1), features[2])  # (B, 4C, D/16, H/16, W/16)
        conv3 = self.feature_att_32(self.conv3(conv2), features[3])  # (B, 6C, D/32, H/32, W/32)
        conv2 = self.agg_0(torch.cat((self.conv3_up(conv3), conv2), dim=1))
        conv2 = self.feature_att_up_16(conv2, features[2])
        conv1 = self.agg_1(torch.cat((self.conv2_up(conv2), conv1), dim=1))
        conv1 = self.feature_att_up_8(conv1, features[1])
        out = self.conv1_up(conv1)  # (B, C, D/4, H/4, W/4)
        tokens = self.atts["4"](self.conv_patch(volume))  # (B, C, D/16, H/16, W/16)
        # Under CUDA autocast the trilinear upsampling runs in float32; the sum feeds a conv that
        # casts it back, so keep it in the volume's dtype (a full-size float32 copy less at the peak).
        out = out + F.interpolate(tokens, scale_factor=4, mode="trilinear", align_corners=False).to(out.dtype)
        return self.conv_out(out)
