"""Typed architecture of the FoundationStereo network (Wen et al., CVPR 2025, Sec. 3).

The published checkpoints ship a ``cfg.yaml`` beside ``model_best_bp2.pth`` that holds the
training configuration; :meth:`FoundationStereoConfig.from_mapping` keeps the architecture
keys of it and ignores the training-only ones.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Tuple

import yaml

# Channel widths of the DepthAnything V2 DPT head per ViT size (its ``features`` and the
# four ``out_channels`` of the reassemble projections), and the DINOv2 backbone shapes.
VIT_SPECS = {
    "vits": dict(embed_dim=384, depth=12, num_heads=6, dpt_features=64,
                 dpt_out_channels=(48, 96, 192, 384), intermediate_layers=(2, 5, 8, 11)),
    "vitb": dict(embed_dim=768, depth=12, num_heads=12, dpt_features=128,
                 dpt_out_channels=(96, 192, 384, 768), intermediate_layers=(2, 5, 8, 11)),
    "vitl": dict(embed_dim=1024, depth=24, num_heads=16, dpt_features=256,
                 dpt_out_channels=(256, 512, 1024, 1024), intermediate_layers=(4, 11, 17, 23)),
}

# Published variants: the folder names of the released checkpoints.
PUBLISHED_VARIANTS = {"23-51-11": "vitl", "11-33-40": "vits"}


@dataclasses.dataclass(frozen=True)
class FoundationStereoConfig:
    """Architecture of one FoundationStereo variant.

    The first block of fields is read from ``cfg.yaml``; the second block is fixed by the
    published architecture and only named here so the code has no unexplained numbers.
    """

    vit_size: str = "vitl"
    max_disp: int = 416  # largest disparity (px, full resolution) the cost volume spans
    hidden_dims: Tuple[int, ...] = (128, 128, 128)  # ConvGRU hidden widths at 1/4, 1/8, 1/16
    n_gru_layers: int = 3  # number of ConvGRU resolutions (1/4 [, 1/8 [, 1/16]])
    corr_radius: int = 4  # lookup radius of the geometry volume (taps = 2r+1)
    corr_levels: int = 2  # pyramid levels of the geometry volume lookup
    n_downsample: int = 2  # features at 1/2**n of the input; the published model uses 1/4

    volume_channels: int = 28  # channels of the filtered hybrid cost volume
    correlation_groups: int = 8  # groups of the group-wise correlation volume
    concat_channels: int = 12  # per-view projected feature channels of the concat volume
    disparity_kernel: int = 17  # disparity extent of the axial-planar convolutions
    transformer_layers: int = 4  # disparity-transformer encoder layers
    transformer_heads: int = 4  # heads of the disparity-transformer self-attention
    vit_patch_size: int = 14  # DINOv2 patch size
    vit_max_side: int = 1344  # the monocular branch never sees an image larger than this
    edgenext_channels: Tuple[int, ...] = (48, 96, 160, 304)  # EdgeNeXt-small stage widths

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        object.__setattr__(self, "edgenext_channels", tuple(self.edgenext_channels))
        if self.vit_size not in VIT_SPECS:
            raise ValueError(f"vit_size must be one of {sorted(VIT_SPECS)}, got {self.vit_size!r}")
        if self.max_disp <= 0 or self.max_disp % 32:
            raise ValueError(
                f"max_disp must be a positive multiple of 32 (the 1/4 cost volume is halved three "
                f"times by the hourglass), got {self.max_disp}")
        if self.n_downsample != 2:
            raise ValueError(f"only n_downsample=2 (1/4-resolution features) exists in the published "
                             f"architecture, got {self.n_downsample}")
        if not 1 <= self.n_gru_layers <= 3:
            raise ValueError(f"n_gru_layers must be 1, 2 or 3, got {self.n_gru_layers}")
        if len(self.hidden_dims) < self.n_gru_layers or any(h != 128 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must be 128 for each GRU level (the update block is built "
                             f"for 128 channels), got {list(self.hidden_dims)}")
        if self.corr_radius < 0 or self.corr_levels < 1:
            raise ValueError(f"corr_radius must be >= 0 and corr_levels >= 1, got "
                             f"{self.corr_radius}, {self.corr_levels}")

    @property
    def vit(self) -> dict:
        return VIT_SPECS[self.vit_size]

    @property
    def monocular_channels(self) -> int:
        """Channels of the DPT head's output that are fused into the CNN features."""
        return self.vit["dpt_features"] // 2

    @property
    def feature_channels(self) -> Tuple[int, int, int, int]:
        """Channels of the fused left/right feature pyramid at 1/4, 1/8, 1/16, 1/32."""
        c = self.edgenext_channels
        return (c[0] * 2 + self.monocular_channels, c[1] * 2, c[2] * 2, c[3])

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "FoundationStereoConfig":
        """Architecture fields from a ``cfg.yaml`` mapping; other keys are training settings."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in cfg.items() if k in names}
        if "vit_size" not in kwargs:
            kwargs["vit_size"] = "vitl"  # the ViT-L release predates the key
        if "hidden_dims" in kwargs:
            kwargs["hidden_dims"] = tuple(kwargs["hidden_dims"])
        for key in ("max_disp", "n_gru_layers", "corr_radius", "corr_levels", "n_downsample"):
            if key in kwargs:
                try:
                    kwargs[key] = int(kwargs[key])
                except (TypeError, ValueError):
                    raise ValueError(f"cfg key {key!r} must be an integer, got {kwargs[key]!r}") from None
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "FoundationStereoConfig":
        try:
            with open(path) as f:
                cfg = yaml.safe_load(f)
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{path} must hold a mapping of configuration keys")
        try:
            return cls.from_mapping(cfg)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_mapping(self) -> dict:
        """The ``cfg.yaml`` keys of this configuration (what the reference code reads)."""
        return dict(vit_size=self.vit_size, max_disp=self.max_disp, hidden_dims=list(self.hidden_dims),
                    n_gru_layers=self.n_gru_layers, corr_radius=self.corr_radius,
                    corr_levels=self.corr_levels, n_downsample=self.n_downsample)
