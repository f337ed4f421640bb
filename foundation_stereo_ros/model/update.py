"""Iterative refinement (Sec. 3.4): motion encoder, selective multi-level ConvGRU, heads.

Each iteration encodes the geometry lookup and the current disparity, updates the GRU
states from coarse (1/16) to fine (1/4), and predicts a disparity update plus the features
of the convex-upsampling mask. Each selective GRU blends a 1x1 and a 3x3 GRU with the
spatial attention map of the context features.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import EdgeNeXtConvBlock


class MotionEncoder(nn.Module):
    def __init__(self, lookup_channels: int, out_channels: int = 128):
        super().__init__()
        self.convc1 = nn.Conv2d(lookup_channels, 256, 1)
        self.convc2 = nn.Conv2d(256, 256, 3, padding=1)
        self.convd1 = nn.Conv2d(1, 64, 7, padding=3)
        self.convd2 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 256, out_channels - 1, 3, padding=1)

    def forward(self, disp: torch.Tensor, lookup: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(lookup))))
        dsp = F.relu(self.convd2(F.relu(self.convd1(disp))))
        out = F.relu(self.conv(torch.cat([cor, dsp], dim=1)))
        return torch.cat([out, disp], dim=1)  # (B, 128, H, W): the disparity rides along


class ConvGRUCell(nn.Module):
    """GRU whose gates read a precomputed mix ``hx`` of input and state."""

    def __init__(self, hidden: int, inputs: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.convz = nn.Conv2d(hidden + inputs, hidden, kernel_size, padding=pad)
        self.convr = nn.Conv2d(hidden + inputs, hidden, kernel_size, padding=pad)
        self.convq = nn.Conv2d(hidden + inputs, hidden, kernel_size, padding=pad)

    def forward(self, h: torch.Tensor, x: torch.Tensor, hx: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.convz(hx))
        r = torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


class SelectiveConvGRU(nn.Module):
    """Blend of a small-kernel (1x1) and a large-kernel (3x3) GRU, weighted by attention."""

    def __init__(self, hidden: int, inputs: int):
        super().__init__()
        self.conv0 = nn.Sequential(nn.Conv2d(inputs, inputs, 3, padding=1), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(inputs + hidden, inputs + hidden, 3, padding=1), nn.ReLU())
        self.small_gru = ConvGRUCell(hidden, inputs, 1)
        self.large_gru = ConvGRUCell(hidden, inputs, 3)

    def forward(self, att: torch.Tensor, h: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        x = self.conv0(torch.cat(inputs, dim=1))
        hx = self.conv1(torch.cat([x, h], dim=1))
        return self.small_gru(h, x, hx) * att + self.large_gru(h, x, hx) * (1 - att)


class DisparityHead(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            EdgeNeXtConvBlock(channels), EdgeNeXtConvBlock(channels),
            nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _pool2x(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=2, padding=1)


def _resize_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, ref.shape[2:], mode="bilinear", align_corners=True)


class SelectiveMultiLevelUpdate(nn.Module):
    def __init__(self, hidden: int, lookup_channels: int, n_gru_layers: int):
        super().__init__()
        self.n_gru_layers = n_gru_layers
        self.encoder = MotionEncoder(lookup_channels, hidden)
        if n_gru_layers == 3:
            self.gru16 = SelectiveConvGRU(hidden, hidden * 2)
        if n_gru_layers >= 2:
            self.gru08 = SelectiveConvGRU(hidden, hidden * (n_gru_layers == 3) + hidden * 2)
        self.gru04 = SelectiveConvGRU(hidden, hidden * (n_gru_layers > 1) + hidden * 2)
        self.disp_head = DisparityHead(hidden)
        self.mask = nn.Sequential(nn.Conv2d(hidden, 64, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, net: List[torch.Tensor], inp: Sequence[torch.Tensor], lookup: torch.Tensor,
                disp: torch.Tensor, att: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
        net = list(net)
        if self.n_gru_layers == 3:
            net[2] = self.gru16(att[2], net[2], inp[2], _pool2x(net[1]))
        if self.n_gru_layers >= 2:
            if self.n_gru_layers > 2:
                net[1] = self.gru08(att[1], net[1], inp[1], _pool2x(net[0]), _resize_like(net[2], net[1]))
            else:
                net[1] = self.gru08(att[1], net[1], inp[1], _pool2x(net[0]))
        motion = torch.cat([inp[0], self.encoder(disp, lookup)], dim=1)
        if self.n_gru_layers > 1:
            net[0] = self.gru04(att[0], net[0], motion, _resize_like(net[1], net[0]))
        else:
            net[0] = self.gru04(att[0], net[0], motion)
        delta = self.disp_head(net[0])
        mask_features = 0.25 * self.mask(net[0])  # scaled as in training to balance gradients
        return net, mask_features, delta
