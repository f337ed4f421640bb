"""The FoundationStereo network (Wen et al., CVPR 2025): the whole forward pass (Fig. 2).

Inputs are RGB images holding 0..255 values. ``forward`` needs sizes that are multiples of
32; ``infer`` takes any size (pads and crops) and can run hierarchically.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .aggregation import CostVolumeHourglass, FeatureGuidedExcitation
from .config import FoundationStereoConfig
from .context import ContextEncoder
from .cost_volume import concat_volume, group_correlation_volume, soft_argmin
from .features import SideTuningFeatures
from .geometry import GeometryEncodingVolume
from .layers import BiasFreeResidualBlock, ConvNormLeakyReLU, UpsampleConcatConv
from .padding import InputPadder
from .precision import CastWeights, compiling
from .update import SelectiveMultiLevelUpdate
from .upsample import convex_upsample, image_stem
from ..vocabulary import PRECISIONS

#: The autocast dtype of each of the names in vocabulary.PRECISIONS (None: float32, no autocast).
PRECISION_DTYPES = dict(zip(PRECISIONS, (None, torch.float16, torch.bfloat16)))
# Stages of ``FoundationStereo.forward`` in order ("gru" once per iteration), for timing hooks.
STAGES = ("normalize", "monocular", "cnn_features", "cost_volume", "aggregation", "context",
          "geometry_volume", "gru", "upsample")


def _no_stage(name: str) -> None:
    pass


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool) + MLP(maxpool)), per channel."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1, bias=False), nn.ReLU(),
                                nn.Conv2d(channels // reduction, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Global max as amax, not adaptive_max_pool2d: the same numbers, and torch.onnx's exporter in
        # torch <= 2.11 has no translation of adaptive_max_pool2d.
        return torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)) + self.fc(x.amax(dim=(2, 3), keepdim=True)))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(conv7x7([mean_c, max_c])), per pixel."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.samconv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.samconv(pooled))


@dataclass
class StereoOutput:
    disparity: torch.Tensor  # (B, 1, H, W) final full-resolution disparity
    init_disparity: torch.Tensor  # (B, 1, H/4, W/4) soft-argmin of the filtered volume
    iterations: Optional[List[torch.Tensor]] = None  # (B, 1, H, W) after each GRU iteration


def _refresh_cast_weights(model: "FoundationStereo", incompatible_keys) -> None:
    model.cast_weights.refresh_existing(model)  # new weights reach captured graphs too


class FoundationStereo(nn.Module):
    def __init__(self, cfg: FoundationStereoConfig):
        super().__init__()
        self.cfg = cfg
        vc = cfg.volume_channels
        hidden = cfg.hidden_dims
        self.feature = SideTuningFeatures(cfg.edgenext_channels, cfg.monocular_channels, cfg.vit,
                                          cfg.vit_patch_size, cfg.vit_max_side)
        feat = self.feature.out_channels
        self.cnet = ContextEncoder(cfg.monocular_channels, [hidden, hidden])
        lookup_channels = cfg.corr_levels * (2 * cfg.corr_radius + 1) * (vc + 1)
        self.update_block = SelectiveMultiLevelUpdate(hidden[0], lookup_channels, cfg.n_gru_layers)
        self.sam = SpatialAttention()
        self.cam = ChannelAttention(hidden[0])
        # In the checkpoints, unused by the published forward pass (the selective GRUs take no
        # context biases).
        self.context_zqr_convs = nn.ModuleList([
            nn.Conv2d(hidden[i], hidden[i] * 3, 3, padding=1) for i in range(cfg.n_gru_layers)])
        self.proj_cmb = nn.Conv2d(feat[0], cfg.concat_channels, 1)
        self.stem_2 = image_stem(3, 32)
        self.stem_4 = image_stem(32, 48)  # in the checkpoints, unused
        self.spx_2_gru = UpsampleConcatConv(32, 32, norm=None, fuse="conv")
        self.spx_gru = nn.Sequential(nn.ConvTranspose2d(2 * 32, 9, kernel_size=4, stride=2, padding=1))
        self.corr_stem = nn.Sequential(
            nn.Conv3d(cfg.correlation_groups + 2 * cfg.concat_channels, vc, kernel_size=1),
            ConvNormLeakyReLU(vc, vc, dims=3, norm="batch", kernel_size=3, padding=1),
            BiasFreeResidualBlock(vc, dims=3), BiasFreeResidualBlock(vc, dims=3))
        self.corr_feature_att = FeatureGuidedExcitation(vc, feat[0])
        self.cost_agg = CostVolumeHourglass(vc, feat, cfg.max_disp, cfg.disparity_kernel,
                                            cfg.transformer_heads, cfg.transformer_layers)
        self.classifier = nn.Sequential(
            ConvNormLeakyReLU(vc, vc // 2, dims=3, norm="batch", kernel_size=3, padding=1),
            BiasFreeResidualBlock(vc // 2, dims=3),
            nn.Conv3d(vc // 2, 1, kernel_size=7, padding=3))
        # ImageNet statistics of the DINOv2 / EdgeNeXt inputs.
        self.register_buffer("rgb_mean", torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1), persistent=False)
        # fp16/bf16 copies of the convolution and linear weights, made once (model/precision.py).
        self.cast_weights = CastWeights()
        self.register_load_state_dict_post_hook(_refresh_cast_weights)

    # ------------------------------------------------------------------ helpers
    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """0..255 RGB -> ImageNet-normalised (as (x/255 - mean)/std)."""
        return ((image / 255.0 - self.rgb_mean) / self.rgb_std).contiguous()

    def _autocast(self, device: torch.device, precision: str):
        dtype = PRECISION_DTYPES[precision]
        if dtype is None:
            return contextlib.nullcontext()
        if device.type != "cuda":
            raise ValueError(f"precision {precision!r} needs a CUDA device; use fp32 on {device.type}")
        # Autocast's own cast cache stays off: the weights arrive cast (``cast_weights``), and a
        # cache is not allowed in CUDA-graph capture.
        return torch.autocast("cuda", dtype=dtype, cache_enabled=False)

    def _weights_at(self, precision: str):
        """The convolution and linear weights in the autocast dtype of ``precision`` while the
        block runs (nothing to do for fp32, or while torch.compile traces)."""
        dtype = PRECISION_DTYPES[precision]
        if dtype is None or compiling():
            return contextlib.nullcontext()
        return self.cast_weights.swapped_in(self, dtype)

    def prepare(self, precision: str) -> None:
        """Makes the weight copies that ``forward`` runs with at ``precision`` now (the first
        pass makes them otherwise): before timing, counting or capturing a CUDA graph."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        dtype = PRECISION_DTYPES[precision]
        if dtype is not None:
            with torch.no_grad():  # the copies of inference: of every weight
                self.cast_weights.refresh(self, dtype)

    def hybrid_cost_volume(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Group-wise correlation and projected-feature concatenation of the 1/4 features. Its
        parts are freed on return: they are not kept alive through the cost filtering."""
        max_disp = self.cfg.max_disp // 4
        gwc = group_correlation_volume(left, right, max_disp, self.cfg.correlation_groups)
        cat = concat_volume(self.proj_cmb(left), self.proj_cmb(right), max_disp)
        return torch.cat([gwc.to(cat.dtype), cat], dim=1)

    def upsample_disparity(self, disp: torch.Tensor, mask_features: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        x = self.spx_2_gru(mask_features, stem)  # (B, 64, H/2, W/2)
        weights = F.softmax(self.spx_gru(x), dim=1)  # (B, 9, H, W)
        return convex_upsample(disp * 4.0, weights).float()

    # ------------------------------------------------------------------ forward
    def forward(self, left: torch.Tensor, right: torch.Tensor, iters: int = 12,
                init_disp: Optional[torch.Tensor] = None, all_iterations: bool = False,
                precision: str = "fp32", on_stage: Optional[Callable[[str], None]] = None) -> StereoOutput:
        """left, right: (B, 3, H, W) RGB 0..255 with H, W multiples of 32.

        ``on_stage(name)``, if given, is called as each stage ends (``STAGES`` in order, ``gru``
        once per iteration): the benchmark's hook for per-stage timing.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        b = left.shape[0]
        cfg = self.cfg
        stage = on_stage if on_stage is not None else _no_stage
        left_n, right_n = self.normalize(left), self.normalize(right)
        stage("normalize")
        compute_dtype = PRECISION_DTYPES[precision] or torch.float32
        # One autocast region for the whole pass, the weights already in its dtype; the geometry
        # lookup, the disparity and its updates stay float32.
        with self._autocast(left.device, precision), self._weights_at(precision):
            features, mono = self.feature(torch.cat([left_n, right_n], dim=0), on_stage=stage)
            feat_l = [f[:b] for f in features]
            feat_r = [f[b:] for f in features]
            stem = self.stem_2(left_n)  # (B, 32, H/2, W/2)
            stage("cnn_features")
            volume = self.hybrid_cost_volume(feat_l[0], feat_r[0])  # (B, 32, D/4, H/4, W/4)
            stage("cost_volume")
            volume = self.corr_stem(volume)
            volume = self.corr_feature_att(volume, feat_l[0])
            volume = self.cost_agg(volume, feat_l)  # (B, 28, D/4, H/4, W/4)
            prob = F.softmax(self.classifier(volume).squeeze(1), dim=1)  # (B, D/4, H/4, W/4)
            init = soft_argmin(prob) if init_disp is None else init_disp
            stage("aggregation")
            context = self.cnet(left_n, mono[:b])
            net = [torch.tanh(level[0]) for level in context]
            inp = [torch.relu(level[1]) for level in context]
            inp = [self.cam(x) * x for x in inp]
            att = [self.sam(x) for x in inp]
            stage("context")

            lookup = GeometryEncodingVolume(feat_l[0], feat_r[0], volume, cfg.corr_levels, cfg.corr_radius)
            stage("geometry_volume")
            disp = init.float()
            outputs: List[torch.Tensor] = []
            up = disp
            for i in range(iters):
                disp = disp.detach()  # as in training: each update is supervised on its own
                geo = lookup(disp, compute_dtype)  # sampled in float32, handed on in the convs' dtype
                net, mask_features, delta = self.update_block(net, inp, geo, disp, att)
                disp = disp + delta  # float32: type promotion, without a copy of delta
                stage("gru")
                if all_iterations or i == iters - 1:
                    up = self.upsample_disparity(disp, mask_features, stem)
                    outputs.append(up)
                    stage("upsample")
        return StereoOutput(disparity=up, init_disparity=init.float(),
                            iterations=outputs if all_iterations else None)

    @torch.no_grad()
    def infer(self, left: torch.Tensor, right: torch.Tensor, iters: int = 32, hierarchical: bool = False,
              small_ratio: float = 0.5, precision: str = "fp32") -> torch.Tensor:
        """Disparity (B, 1, H, W) for RGB 0..255 images of any size."""
        if left.shape != right.shape or left.ndim != 4 or left.shape[1] != 3:
            raise ValueError(f"left and right must both be (B, 3, H, W); got {tuple(left.shape)} and "
                             f"{tuple(right.shape)}")
        if hierarchical:
            return self._infer_hierarchical(left, right, iters, small_ratio, precision)
        padder = InputPadder(left.shape[-2], left.shape[-1])
        lp, rp = padder.pad(left.float(), right.float())
        out = self.forward(lp, rp, iters=iters, precision=precision).disparity
        return padder.unpad(out)

    def _infer_hierarchical(self, left: torch.Tensor, right: torch.Tensor, iters: int, small_ratio: float,
                            precision: str) -> torch.Tensor:
        """Coarse-to-fine as the reference's ``run_hierachical``: a pass at ``small_ratio``
        scale gives the initial 1/4 disparity of the full-resolution pass."""
        if not 0.0 < small_ratio < 1.0:
            raise ValueError(f"small_ratio must be in (0, 1), got {small_ratio}")
        h, w = left.shape[-2:]
        left, right = left.float(), right.float()
        small_l = F.interpolate(left, scale_factor=small_ratio, mode="bilinear", align_corners=False)
        small_r = F.interpolate(right, scale_factor=small_ratio, mode="bilinear", align_corners=False)
        small_pad = InputPadder(small_l.shape[-2], small_l.shape[-1])
        sl, sr = small_pad.pad(small_l, small_r)
        disp_small = small_pad.unpad(self.forward(sl, sr, iters=iters, precision=precision).disparity)
        disp_up = F.interpolate(disp_small, size=(h, w), mode="bilinear", align_corners=True) / small_ratio
        disp_up = disp_up.clamp(min=0)
        padder = InputPadder(h, w)
        lp, rp, dp = padder.pad(left, right, disp_up)
        # The reference adds the left padding width to the initial disparity here; the
        # published results were made that way, so it is kept for parity.
        dp = dp + padder.left
        init = F.interpolate(dp, scale_factor=0.25, mode="bilinear", align_corners=True) * 0.25
        out = self.forward(lp, rp, iters=iters, init_disp=init, precision=precision).disparity
        return padder.unpad(out)
