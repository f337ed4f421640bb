"""Frozen monocular prior of the side-tuning adapter (Sec. 3.1): DepthAnything V2.

A DINOv2 ViT (patch 14, layer scale, no register tokens) built from timm's transformer
blocks, and the DPT head of DepthAnything V2. FoundationStereo uses the head's
``output_conv1`` features (``dpt_features/2`` channels at the ViT input resolution); the
depth output (``output_conv2``) is kept for checkpoint compatibility but never computed.

The published network upsamples those features to the ViT input resolution and then resamples
them to 1/4 of the camera image, both bilinearly with aligned corners. Each output pixel of
the two steps is a fixed blend of at most 4 x 4 input pixels, so :func:`resize_bilinear_twice`
computes it in one pass of gathers without the full-resolution map (1 GiB of float32 for
ViT-L at 720x1280).
"""
from __future__ import annotations

import math
from functools import partial
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block


class DinoV2(nn.Module):
    """DINOv2 vision transformer with the original position-embedding interpolation."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int = 14,
                 pretrain_grid: int = 37):
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(img_size=patch_size * pretrain_grid, patch_size=patch_size,
                                      in_chans=3, embed_dim=embed_dim, strict_img_size=False,
                                      dynamic_img_pad=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid + 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # masked-modelling token: unused here
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio=4.0, qkv_bias=True, init_values=1.0, norm_layer=norm)
            for _ in range(depth)])
        self.norm = norm(embed_dim)

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Bicubic resize of the 37x37 table as DINOv2 does it: by scale factor
        ``(n + 0.1) / 37`` rather than by output size, which samples at slightly other places."""
        pos = self.pos_embed.float()
        n = pos.shape[1] - 1
        side = int(math.sqrt(n))
        if grid_h == side and grid_w == side:
            return self.pos_embed
        table = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, 37, 37)
        table = F.interpolate(table, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
                              mode="bicubic", antialias=False)
        table = table.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((pos[:, :1], table), dim=1).to(self.pos_embed.dtype)

    def intermediate_layers(self, x: torch.Tensor, layers: Sequence[int]) -> List[torch.Tensor]:
        """Normalised patch tokens (B, N, C) after each block in ``layers``."""
        b, _, h, w = x.shape
        grid_h, grid_w = h // self.patch_size, w // self.patch_size
        tokens = self.patch_embed(x)  # (B, N, C)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_embed(grid_h, grid_w).to(tokens.dtype)
        out = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in layers:
                out.append(self.norm(tokens)[:, 1:])
        return out


class _ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _FusionBlock(nn.Module):
    """DPT feature fusion: add the refined skip, refine, upsample (align_corners), project."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        self.resConfUnit1 = _ResidualConvUnit(features)
        self.resConfUnit2 = _ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: Tuple[int, int] | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """DepthAnything V2 dense prediction head (reassemble, fuse, output convolutions)."""

    def __init__(self, in_channels: int, features: int, out_channels: Sequence[int]):
        super().__init__()
        self.projects = nn.ModuleList([nn.Conv2d(in_channels, c, kernel_size=1) for c in out_channels])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
        ])
        scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(scratch, f"layer{i}_rn", nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(scratch, f"refinenet{i}", _FusionBlock(features))
        scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        # The depth output of DepthAnything: in the checkpoints, not used by FoundationStereo.
        scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, kernel_size=3, padding=1), nn.ReLU(True),
            nn.Conv2d(32, 1, kernel_size=1), nn.ReLU(True), nn.Identity())
        self.scratch = scratch

    def forward(self, tokens: Sequence[torch.Tensor], grid_h: int, grid_w: int, patch_size: int) -> torch.Tensor:
        """``output_conv1`` features at the ViT input resolution (grid x patch size)."""
        return F.interpolate(self.fused_features(tokens, grid_h, grid_w), size=(grid_h * patch_size, grid_w * patch_size),
                             mode="bilinear", align_corners=True)

    def fused_features(self, tokens: Sequence[torch.Tensor], grid_h: int, grid_w: int) -> torch.Tensor:
        """``output_conv1`` features before the last upsampling: (B, features/2, 8 grid_h, 8 grid_w)."""
        layers = []
        for i, t in enumerate(tokens):
            x = t.permute(0, 2, 1).reshape(t.shape[0], t.shape[-1], grid_h, grid_w)
            layers.append(self.resize_layers[i](self.projects[i](x)))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i + 1}_rn")(x) for i, x in enumerate(layers))
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)
        return s.output_conv1(path)


class DepthAnythingV2(nn.Module):
    """DINOv2 + DPT head; ``forward`` returns the fused-feature map (B, features/2, H, W)."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, dpt_features: int,
                 dpt_out_channels: Sequence[int], intermediate_layers: Sequence[int], patch_size: int = 14):
        super().__init__()
        self.intermediate = tuple(intermediate_layers)
        self.pretrained = DinoV2(embed_dim, depth, num_heads, patch_size=patch_size)
        self.depth_head = DPTHead(embed_dim, dpt_features, dpt_out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = self.pretrained.patch_size
        tokens = self.pretrained.intermediate_layers(x, self.intermediate)
        return self.depth_head(tokens, h // p, w // p, p)

    def features_resized(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """``forward(x)`` resampled to ``size`` (bilinear, aligned corners) without making it:
        (B, features/2, size[0], size[1]) in float32."""
        h, w = x.shape[-2:]
        p = self.pretrained.patch_size
        tokens = self.pretrained.intermediate_layers(x, self.intermediate)
        fused = self.depth_head.fused_features(tokens, h // p, w // p)
        return resize_bilinear_twice(fused, ((h // p) * p, (w // p) * p), size)


def _two_step_taps(n_in: int, n_mid: int, n_out: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices (long) and float32 weights, both (n_out, 4), of bilinear resizing
    n_in -> n_mid -> n_out along one axis, both steps with aligned corners as ``F.interpolate``
    computes them. Made with device ops from the sizes alone: no host-to-device copy."""

    def source(n_src: int, n_dst: int, dst: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = dst * ((n_src - 1) / (n_dst - 1) if n_dst > 1 else 0.0)
        lo = pos.floor().clamp(max=n_src - 1)
        return lo, (lo + 1).clamp(max=n_src - 1), pos - lo

    j0, j1, a = source(n_mid, n_out, torch.arange(n_out, device=device, dtype=torch.float32))
    k00, k01, b0 = source(n_in, n_mid, j0)
    k10, k11, b1 = source(n_in, n_mid, j1)
    index = torch.stack([k00, k01, k10, k11], dim=1).long()
    weight = torch.stack([(1 - a) * (1 - b0), (1 - a) * b0, a * (1 - b1), a * b1], dim=1)
    return index, weight


def resize_bilinear_twice(x: torch.Tensor, mid: Tuple[int, int], out: Tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(F.interpolate(x, mid), out)`` (bilinear, aligned corners), in float32, as
    four gathers and weighted sums per axis: no tensor of size ``mid`` is made."""
    result = x
    for dim, n_mid, n_out in ((2, mid[0], out[0]), (3, mid[1], out[1])):
        index, weight = _two_step_taps(result.shape[dim], n_mid, n_out, x.device)
        shape = [1, 1, 1, 1]
        shape[dim] = n_out
        acc = None
        for tap in range(4):
            term = result.index_select(dim, index[:, tap]).float() * weight[:, tap].reshape(shape)
            acc = term if acc is None else acc + term
        result = acc
    return result


def monocular_input_size(height: int, width: int, multiple: int, max_side: int) -> Tuple[int, int]:
    """Size the ViT sees: each side rounded up to ``multiple``; if that exceeds ``max_side``,
    the longer side becomes ``max_side`` and the other keeps the aspect ratio (rounded up)."""

    def round_up(v: float) -> int:
        return int(math.ceil(v / multiple) * multiple)

    h, w = round_up(height), round_up(width)
    if h > max_side or w > max_side:
        if h > w:
            h, w = max_side, round_up(w * max_side / h)
        else:
            h, w = round_up(h * max_side / w), max_side
    return h, w


class FrozenMonocularPrior(nn.Module):
    """DepthAnything V2 run frozen on a resized copy of the (normalised) images.

    Returns its features resampled to 1/4 of the input: (B, dpt_features/2, H/4, W/4).
    """

    def __init__(self, embed_dim: int, depth: int, num_heads: int, dpt_features: int,
                 dpt_out_channels: Sequence[int], intermediate_layers: Sequence[int],
                 patch_size: int, max_side: int):
        super().__init__()
        self.multiple = math.lcm(patch_size, 16)  # ViT patches and the DPT head's 1/16 path
        self.max_side = max_side
        self.depth_anything = DepthAnythingV2(embed_dim, depth, num_heads, dpt_features,
                                              dpt_out_channels, intermediate_layers, patch_size)
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenMonocularPrior":
        return super().train(False)  # frozen: batch statistics and dropout never change it

    def _vit_input(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        vit_h, vit_w = monocular_input_size(h, w, self.multiple, self.max_side)
        return F.interpolate(images, size=(vit_h, vit_w), mode="bicubic", align_corners=False)

    def vit_resolution_features(self, images: torch.Tensor) -> torch.Tensor:
        """DPT features at the ViT's input resolution: (B, C, vit_h, vit_w)."""
        with torch.no_grad():
            return self.depth_anything(self._vit_input(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``vit_resolution_features`` resampled bilinearly (aligned corners) to 1/4 of the
        input, in one step: (B, C, H/4, W/4) in float32."""
        h, w = images.shape[-2:]
        with torch.no_grad():
            return self.depth_anything.features_resized(self._vit_input(images), (h // 4, w // 4))
