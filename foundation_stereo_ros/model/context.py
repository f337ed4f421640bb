"""Context network (Sec. 3.4): initial GRU states and context features at 1/4, 1/8, 1/16.

A RAFT-Stereo multi-level encoder on the left image whose 1/4 features are fused with the
monocular prior before the three output heads.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ConvNormLeakyReLU, ResidualBlock


class ContextEncoder(nn.Module):
    def __init__(self, monocular_channels: int, output_dims: Sequence[Sequence[int]], norm: str = "batch"):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(64)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=1, padding=3)
        self._in = 64
        self.layer1 = self._make_layer(64, 1, norm)
        self.layer2 = self._make_layer(96, 2, norm)
        self.layer3 = self._make_layer(128, 2, norm)
        self.layer4 = self._make_layer(128, 2, norm)
        self.layer5 = self._make_layer(128, 2, norm)
        # In the checkpoints but not on the forward path of the published network.
        self.down = nn.Sequential(nn.Conv2d(128, 128, kernel_size=4, stride=4), nn.BatchNorm2d(128))
        self.conv2 = ConvNormLeakyReLU(128 + monocular_channels, 128, norm="batch", kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(256)  # likewise unused
        self.outputs04 = nn.ModuleList([
            nn.Sequential(ResidualBlock(128, 128, norm), nn.Conv2d(128, d[2], 3, padding=1)) for d in output_dims])
        self.outputs08 = nn.ModuleList([
            nn.Sequential(ResidualBlock(128, 128, norm), nn.Conv2d(128, d[1], 3, padding=1)) for d in output_dims])
        self.outputs16 = nn.ModuleList([nn.Conv2d(128, d[0], 3, padding=1) for d in output_dims])

    def _make_layer(self, dim: int, stride: int, norm: str) -> nn.Sequential:
        layers = nn.Sequential(ResidualBlock(self._in, dim, norm, stride=stride), ResidualBlock(dim, dim, norm))
        self._in = dim
        return layers

    def forward(self, image: torch.Tensor, monocular: torch.Tensor) -> Tuple[List[torch.Tensor], ...]:
        """Returns per level (1/4, 1/8, 1/16) the list [hidden-state features, context features]."""
        x = F.relu(self.norm1(self.conv1(image)))
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 128, H/4, W/4)
        x = self.conv2(torch.cat([x, monocular], dim=1))
        out04 = [f(x) for f in self.outputs04]
        y = self.layer4(x)
        out08 = [f(y) for f in self.outputs08]
        z = self.layer5(y)
        out16 = [f(z) for f in self.outputs16]
        return out04, out08, out16
