"""Per-stage timing of the network's forward pass.

``FoundationStereo.forward`` calls an ``on_stage(name)`` hook as each stage ends (``STAGES``
in order, ``gru`` once per iteration). :func:`staged_forward` runs the forward pass with a
:class:`StageClock` on that hook. On CUDA the clock records events on the current stream, so
timing adds no host-device synchronisation until the durations are read once at the end; on
the CPU it reads ``time.perf_counter``.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import torch

from ..model import FoundationStereo
from ..model.foundation_stereo import PRECISION_DTYPES
from ..model.foundation_stereo import STAGES as NETWORK_STAGES

__all__ = ["NETWORK_STAGES", "PRECISION_DTYPES", "StageClock", "group_stage_times", "staged_forward"]


class StageClock:
    """Marks stage boundaries; CUDA events on a GPU, ``perf_counter`` on the CPU.

    ``start()`` opens a measurement, ``mark(name)`` closes the stage that ran since the previous
    mark, ``durations_ms()`` returns ``[(name, ms), ...]`` (synchronising once on CUDA).
    """

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
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
        pairs = list(zip(self._marks, self._marks[1:]))
        if self.cuda:
            self._marks[-1][1].synchronize()
            return [(name, float(prev.elapsed_time(cur))) for (_, prev), (name, cur) in pairs]
        return [(name, (cur - prev) * 1e3) for (_, prev), (name, cur) in pairs]


def staged_forward(model: FoundationStereo, left: torch.Tensor, right: torch.Tensor, iters: int,
                   precision: str = "fp32", clock: Optional[StageClock] = None) -> torch.Tensor:
    """Disparity (B, 1, H, W) of ``model.forward(left, right, iters, precision=precision)``, timed per stage.

    ``left``/``right``: (B, 3, H, W) RGB 0..255, H and W multiples of 32. ``clock`` (already
    started) gets one mark per stage of ``NETWORK_STAGES``, ``gru_<i>`` for iteration i.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if left.shape != right.shape or left.ndim != 4 or left.shape[1] != 3:
        raise ValueError(f"left and right must both be (B, 3, H, W); got {tuple(left.shape)} and "
                         f"{tuple(right.shape)}")
    if left.shape[-2] % 32 or left.shape[-1] % 32:
        raise ValueError(f"staged_forward needs H and W that are multiples of 32, got "
                         f"{left.shape[-2]}x{left.shape[-1]}; pad with InputPadder first")
    if clock is None:
        return model(left, right, iters=iters, precision=precision).disparity
    gru_done = 0

    def on_stage(name: str) -> None:
        nonlocal gru_done
        if name == "gru":
            clock.mark(f"gru_{gru_done}")
            gru_done += 1
        else:
            clock.mark(name)

    return model(left, right, iters=iters, precision=precision, on_stage=on_stage).disparity


def group_stage_times(durations: List[Tuple[str, float]]) -> Dict[str, float]:
    """Sum ``gru_<i>`` entries into ``gru`` (and keep the others): ``{stage: ms}``."""
    out: Dict[str, float] = {}
    for name, ms in durations:
        key = "gru" if name.startswith("gru_") else name
        out[key] = out.get(key, 0.0) + ms
    return out
