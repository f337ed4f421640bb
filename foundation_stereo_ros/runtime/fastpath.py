"""Execution modes of the network for a fixed camera resolution: eager, torch.compile, CUDA graphs.

A :class:`NetworkRunner` takes padded (B, 3, H, W) RGB 0..255 tensors (H, W multiples of 32)
already on the model's device and returns the (B, 1, H, W) float32 disparity. Every mode runs
``FoundationStereo.forward`` itself (the model has no host-device synchronisation in its forward
pass, so the whole pass can be compiled with ``fullgraph=True`` or captured in one CUDA graph):

- ``eager``: the plain PyTorch path.
- ``compile``: ``torch.compile(fullgraph=True, dynamic=False)``; the first call at a new size
  compiles (minutes for ViT-L), so call :meth:`NetworkRunner.warmup` at node start.
- ``cudagraph``: one CUDA graph per input size, captured after a few eager warm-up passes;
  inputs are copied into static buffers and the graph replayed (one launch per frame).
- ``compile-cudagraph``: ``torch.compile(mode="reduce-overhead")``, inductor kernels replayed
  through CUDA graphs.

Each mode combines with a precision: ``fp32``, or autocast ``fp16`` / ``bf16`` (CUDA only; the
model keeps the geometry lookup, the disparity accumulation and the upsampled output in fp32).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from ..model import FoundationStereo
from ..model.foundation_stereo import PRECISION_DTYPES
from ..vocabulary import EXECUTIONS

# Accepted (mean, max) |d - d_eager_fp32| in px per precision, on the small test pairs of
# test/runtime/test_fastpath.py and test/model/test_paths.py (deterministic test weights). fp32 modes differ
# only in summation order. The fp16/bf16 bounds are provisional: no GPU run has measured them yet.
# The CPU's bf16 autocast over the same autocast regions measured a mean of 0.14 px and a max of
# 0.71 px (64x96, 2 iterations; test/model/test_paths.py); the CUDA tests print their figures.
PARITY_TOLERANCE_PX = {"fp32": (1e-3, 2e-2), "fp16": (0.25, 4.0), "bf16": (0.5, 8.0)}


def mode_unavailable_reason(execution: str, precision: str, device: torch.device | str) -> Optional[str]:
    """Why ``execution`` at ``precision`` cannot run on ``device`` here, or None when it can."""
    device = torch.device(device)
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {list(EXECUTIONS)}, got {execution!r}")
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {sorted(PRECISION_DTYPES)}, got {precision!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available to PyTorch on this machine"
    if precision != "fp32" and device.type != "cuda":
        return (f"{precision} autocast runs on CUDA only (FoundationStereo.forward refuses it on "
                f"{device.type})")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support"
    if execution in ("cudagraph", "compile-cudagraph") and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    return None


class NetworkRunner:
    """The network in one execution mode, for repeated calls at a fixed input size."""

    def __init__(self, model: FoundationStereo, iters: int, precision: str = "fp32", execution: str = "eager",
                 compile_backend: str = "inductor", graph_warmup: int = 3):
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        device = next(model.parameters()).device
        reason = mode_unavailable_reason(execution, precision, device)
        if reason is not None:
            raise ValueError(f"execution {execution!r} with {precision} on {device}: {reason}")
        self.model = model.eval()
        self.iters = iters
        self.precision = precision
        self.execution = execution
        self.device = device
        self.graph_warmup = max(int(graph_warmup), 1)
        self._fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self._forward
        if execution == "compile":
            self._fn = torch.compile(self._forward, backend=compile_backend, fullgraph=True, dynamic=False)
        elif execution == "compile-cudagraph":
            if compile_backend == "inductor":
                self._fn = torch.compile(self._forward, backend="inductor", mode="reduce-overhead",
                                         fullgraph=True, dynamic=False)
            else:
                # Other backends ignore ``mode``; dynamo's "cudagraphs" backend captures by itself.
                self._fn = torch.compile(self._forward, backend=compile_backend, fullgraph=True, dynamic=False)
        self._graphs: Dict[Tuple[int, ...], Tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def name(self) -> str:
        return f"{self.execution}-{self.precision}"

    def _forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.model(left, right, iters=self.iters, precision=self.precision).disparity

    def _check(self, left: torch.Tensor, right: torch.Tensor) -> None:
        if left.shape != right.shape or left.ndim != 4 or left.shape[1] != 3:
            raise ValueError(f"left and right must both be (B, 3, H, W); got {tuple(left.shape)} and "
                             f"{tuple(right.shape)}")
        if left.shape[-2] % 32 or left.shape[-1] % 32:
            raise ValueError(f"input size {left.shape[-2]}x{left.shape[-1]} is not a multiple of 32; pad first")
        if left.device != self.device or right.device != self.device:
            raise ValueError(f"inputs are on {left.device}/{right.device}, the model on {self.device}")

    def _capture(self, left: torch.Tensor, right: torch.Tensor):
        static_l, static_r = left.clone(), right.clone()
        # Warm-up on a side stream, as CUDA-graph capture requires (lazy init, cuDNN autotuning).
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.graph_warmup):
                self._forward(static_l, static_r)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(static_l, static_r)
        return graph, static_l, static_r, static_out

    @torch.no_grad()
    def __call__(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) float32 disparity of padded (B, 3, H, W) RGB 0..255 inputs."""
        self._check(left, right)
        if self.execution != "cudagraph":
            out = self._fn(left, right)
            # reduce-overhead returns graph-owned memory that the next replay overwrites.
            return out.clone() if self.execution == "compile-cudagraph" else out
        key = tuple(left.shape)
        if key not in self._graphs:
            self._graphs[key] = self._capture(left, right)
        graph, static_l, static_r, static_out = self._graphs[key]
        static_l.copy_(left)
        static_r.copy_(right)
        graph.replay()
        return static_out.clone()

    def warmup(self, height: int, width: int, batch: int = 1, runs: int = 2) -> None:
        """Compile / capture for this padded input size so the first camera frame is not slow."""
        if height % 32 or width % 32:
            raise ValueError(f"warm-up size {height}x{width} must be a multiple of 32 (the padded size)")
        gen = torch.Generator(device="cpu").manual_seed(0)
        left = (torch.rand(batch, 3, height, width, generator=gen) * 255).to(self.device)
        right = (torch.rand(batch, 3, height, width, generator=gen) * 255).to(self.device)
        for _ in range(max(runs, 1)):
            self(left, right)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
