"""Side-tuning feature extractor (Sec. 3.1): EdgeNeXt-small CNN + frozen monocular prior.

The CNN (timm's EdgeNeXt-small, built without downloading weights) gives a 1/4..1/32 pyramid;
a U-Net style decoder fuses it back to 1/4, where the DepthAnything V2 features are
concatenated and mixed. Left and right go through the network as one batch.

EdgeNeXt's Fourier positional encoding is replaced by :class:`FourierPositionalEncoding`, the
same numbers and the same ``token_projection`` weights, made on the device: timm's builds its
mask on the host and copies it over in every pass (a synchronising host-to-device copy, and an
error inside CUDA-graph capture).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.models.edgenext import PositionalEncodingFourier

from .layers import ConvNormLeakyReLU, ResidualBlock, UpsampleConcatConv
from .monocular import FrozenMonocularPrior


class FourierPositionalEncoding(nn.Module):
    """EdgeNeXt's positional encoding of a (B, H, W) grid: sine/cosine features of the row and
    column positions (normalised to (0, 2 pi]) at ``hidden_dim`` frequencies, mixed to ``dim``
    channels by the 1x1 ``token_projection``. Every tensor is made on the weights' device."""

    def __init__(self, token_projection: nn.Conv2d, hidden_dim: int, temperature: float):
        super().__init__()
        self.token_projection = token_projection  # (dim, 2 hidden_dim, 1, 1): a published weight
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.scale = 2 * math.pi

    @classmethod
    def from_timm(cls, module: PositionalEncodingFourier) -> "FourierPositionalEncoding":
        """Takes over timm's module and its projection (no new weights, no random draws)."""
        return cls(module.token_projection, module.hidden_dim, module.temperature)

    def forward(self, shape: Tuple[int, int, int]) -> torch.Tensor:
        """Encoding of a (B, H, W) grid: (B, dim, H, W) in the projection's dtype."""
        weight = self.token_projection.weight
        ones = torch.ones(shape, dtype=torch.float32, device=weight.device)  # (B, H, W)
        # Positions 1..n as running sums, divided by n (+eps): the same float32 arithmetic as
        # timm's masked cumsum, so the same numbers.
        rows, cols = ones.cumsum(1), ones.cumsum(2)
        rows = rows / (rows[:, -1:, :] + 1e-6) * self.scale
        cols = cols / (cols[:, :, -1:] + 1e-6) * self.scale
        index = torch.arange(self.hidden_dim, dtype=torch.float32, device=weight.device)
        freq = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / self.hidden_dim)
        encoded = []
        for position in (rows, cols):
            angle = position[..., None] / freq  # (B, H, W, hidden): sin on even, cos on odd
            encoded.append(torch.stack((angle[..., 0::2].sin(), angle[..., 1::2].cos()), dim=4).flatten(3))
        table = torch.cat(encoded, dim=3).permute(0, 3, 1, 2)  # (B, 2 hidden, H, W)
        return self.token_projection(table.to(weight.dtype))


class SideTuningFeatures(nn.Module):
    """Fused feature pyramid (1/4, 1/8, 1/16, 1/32) and the 1/4 monocular features."""

    def __init__(self, edgenext_channels: Sequence[int], monocular_channels: int, vit_spec: dict,
                 patch_size: int, vit_max_side: int):
        super().__init__()
        c = list(edgenext_channels)
        backbone = timm.create_model("edgenext_small", pretrained=False)
        if [s.blocks[0].mlp.fc2.out_features for s in backbone.stages] != c:
            raise ValueError(f"timm's edgenext_small stage widths differ from {c}")
        self.stem = backbone.stem
        self.stages = backbone.stages
        for block in list(self.stages.modules()):
            if isinstance(getattr(block, "pos_embd", None), PositionalEncodingFourier):
                block.pos_embd = FourierPositionalEncoding.from_timm(block.pos_embd)
        self.dino = FrozenMonocularPrior(
            vit_spec["embed_dim"], vit_spec["depth"], vit_spec["num_heads"], vit_spec["dpt_features"],
            vit_spec["dpt_out_channels"], vit_spec["intermediate_layers"], patch_size, vit_max_side)
        self.deconv32_16 = UpsampleConcatConv(c[3], c[2], norm="instance", fuse="residual_instance")
        self.deconv16_8 = UpsampleConcatConv(c[2] * 2, c[1], norm="instance", fuse="residual_instance")
        self.deconv8_4 = UpsampleConcatConv(c[1] * 2, c[0], norm="instance", fuse="residual_instance")
        fused = c[0] * 2 + monocular_channels
        self.conv4 = nn.Sequential(
            ConvNormLeakyReLU(fused, fused, norm="instance", kernel_size=3, stride=1, padding=1),
            ResidualBlock(fused, fused, norm="instance"),
            ResidualBlock(fused, fused, norm="instance"),
        )
        self.out_channels = (fused, c[1] * 2, c[2] * 2, c[3])

    def forward(self, images: torch.Tensor,
                on_stage: Optional[Callable[[str], None]] = None) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """images: normalised (N, 3, H, W), H and W multiples of 32."""
        mono = self.dino(images)  # (N, C_mono, H/4, W/4)
        if on_stage is not None:
            on_stage("monocular")
        x4 = self.stages[0](self.stem(images))
        x8 = self.stages[1](x4)
        x16 = self.stages[2](x8)
        x32 = self.stages[3](x16)
        x16 = self.deconv32_16(x32, x16)
        x8 = self.deconv16_8(x16, x8)
        x4 = self.deconv8_4(x8, x4)
        x4 = self.conv4(torch.cat([x4, mono], dim=1))
        return [x4, x8, x16, x32], mono
