"""The network's forward pass split into named stages, for per-stage timing.

:func:`staged_forward` calls the sub-modules of :class:`~foundation_stereo_ros.model.FoundationStereo`
in the same order, with the same autocast regions, as ``FoundationStereo.forward`` does, and lets
a :class:`StageClock` mark the end of each stage. On CUDA the clock records events on the
current stream, so timing adds no host-device synchronisation until the durations are read
once at the end; on the CPU it reads ``time.perf_counter``.

The split of ``SideTuningFeatures.forward`` into the monocular branch and the CNN is repeated
here because the model offers no hook between them; ``test/test_benchmark.py`` checks that the
staged path gives the same disparity as ``model.forward``, so a change of the model that this
module does not follow fails there.
"""
from __future__ import annotations

import contextlib
import time
from typing import ContextManager, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..model import FoundationStereo
from ..model.cost_volume import concat_volume, group_correlation_volume, soft_argmin
from ..model.geometry import GeometryEncodingVolume

PRECISION_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}

# Stage names in execution order; "gru_<i>" repeats once per iteration (numbered from 0).
NETWORK_STAGES = ("normalize", "monocular", "cnn_features", "cost_volume", "aggregation", "context",
                  "geometry_volume", "gru", "upsample")


def autocast_for(device: torch.device, precision: str) -> ContextManager:
    """The autocast region the model uses for ``precision`` (no-op for fp32).

    fp16/bf16 exist only on CUDA here, as in ``FoundationStereo.forward``.
    """
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {sorted(PRECISION_DTYPES)}, got {precision!r}")
    dtype = PRECISION_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device; use fp32 on {device.type}")
    return torch.autocast("cuda", dtype=dtype)


class StageClock:
    """Marks stage boundaries; CUDA events on a GPU, ``perf_counter`` on the CPU.

    ``start()`` opens a measurement, ``mark(name)`` closes the stage that ran since the previous
    mark, ``durations_ms()`` returns ``[(name, ms), ...]`` (synchronising once on CUDA).
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: List[Tuple[str, object]] = []

    def _now(self) -> object:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._marks = [("", self._now())]

    def mark(self, name: str) -> None:
        if not self._marks:
            raise ValueError("StageClock.mark() called before start()")
        self._marks.append((name, self._now()))

    def durations_ms(self) -> List[Tuple[str, float]]:
        if len(self._marks) < 2:
            return []
        if self.cuda:
            self._marks[-1][1].synchronize()
            return [(name, float(prev.elapsed_time(cur)))
                    for (_, prev), (name, cur) in zip(self._marks, self._marks[1:])]
        return [(name, (cur - prev) * 1e3) for (_, prev), (name, cur) in zip(self._marks, self._marks[1:])]


class _NoClock:
    def mark(self, name: str) -> None:
        pass


def staged_forward(model: FoundationStereo, left: torch.Tensor, right: torch.Tensor, iters: int,
                   precision: str = "fp32", clock: Optional[StageClock] = None) -> torch.Tensor:
    """Disparity (B, 1, H, W) of ``model.forward(left, right, iters, precision=precision)``.

    ``left``/``right``: (B, 3, H, W) RGB 0..255, H and W multiples of 32. ``clock`` (already
    started) gets one mark per stage of :data:`NETWORK_STAGES`, ``gru_<i>`` per iteration.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if left.shape != right.shape or left.ndim != 4 or left.shape[1] != 3:
        raise ValueError(f"left and right must both be (B, 3, H, W); got {tuple(left.shape)} and "
                         f"{tuple(right.shape)}")
    if left.shape[-2] % 32 or left.shape[-1] % 32:
        raise ValueError(f"staged_forward needs H and W that are multiples of 32, got "
                         f"{left.shape[-2]}x{left.shape[-1]}; pad with InputPadder first")
    clk = clock if clock is not None else _NoClock()
    cfg = model.cfg
    b = left.shape[0]
    max_disp = cfg.max_disp // 4
    amp = autocast_for(left.device, precision)
    feature = model.feature

    left_n, right_n = model.normalize(left), model.normalize(right)
    clk.mark("normalize")
    with amp:
        images = torch.cat([left_n, right_n], dim=0)  # (2B, 3, H, W)
        mono = feature.dino(images)  # (2B, C_mono, H/4, W/4)
    clk.mark("monocular")
    with amp:
        x4 = feature.stages[0](feature.stem(images))
        x8 = feature.stages[1](x4)
        x16 = feature.stages[2](x8)
        x32 = feature.stages[3](x16)
        x16 = feature.deconv32_16(x32, x16)
        x8 = feature.deconv16_8(x16, x8)
        x4 = feature.deconv8_4(x8, x4)
        x4 = feature.conv4(torch.cat([x4, mono], dim=1))
        features = [x4, x8, x16, x32]
        feat_l = [f[:b] for f in features]
        feat_r = [f[b:] for f in features]
        stem = model.stem_2(left_n)  # (B, 32, H/2, W/2)
    clk.mark("cnn_features")
    with amp:
        gwc = group_correlation_volume(feat_l[0], feat_r[0], max_disp, cfg.correlation_groups)
        cat = concat_volume(model.proj_cmb(feat_l[0]), model.proj_cmb(feat_r[0]), max_disp)
        volume = torch.cat([gwc.to(cat.dtype), cat], dim=1)  # (B, 32, D/4, H/4, W/4)
    clk.mark("cost_volume")
    with amp:
        volume = model.corr_stem(volume)
        volume = model.corr_feature_att(volume, feat_l[0])
        volume = model.cost_agg(volume, feat_l)  # (B, 28, D/4, H/4, W/4)
        prob = F.softmax(model.classifier(volume).squeeze(1), dim=1)  # (B, D/4, H/4, W/4)
        init = soft_argmin(prob)
    clk.mark("aggregation")
    with amp:
        context = model.cnet(left_n, mono[:b])
        net = [torch.tanh(level[0]) for level in context]
        inp = [torch.relu(level[1]) for level in context]
        inp = [model.cam(x) * x for x in inp]
        att = [model.sam(x) for x in inp]
    clk.mark("context")
    lookup = GeometryEncodingVolume(feat_l[0], feat_r[0], volume, cfg.corr_levels, cfg.corr_radius)
    clk.mark("geometry_volume")
    disp = init.float()
    mask_features = None
    for i in range(iters):
        geo = lookup(disp)
        with amp:
            net, mask_features, delta = model.update_block(net, inp, geo, disp, att)
        disp = disp + delta.float()
        clk.mark(f"gru_{i}")
    with amp:
        up = model.upsample_disparity(disp, mask_features.float(), stem.float())
    clk.mark("upsample")
    return up


def group_stage_times(durations: List[Tuple[str, float]]) -> Dict[str, float]:
    """Sum ``gru_<i>`` entries into ``gru`` (and keep the others): ``{stage: ms}``."""
    out: Dict[str, float] = {}
    for name, ms in durations:
        key = "gru" if name.startswith("gru_") else name
        out[key] = out.get(key, 0.0) + ms
    return out
