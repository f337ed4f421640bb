"""Execution modes of the network for a fixed camera resolution: eager, torch.compile, CUDA graphs.

A :class:`NetworkRunner` takes padded (B, 3, H, W) RGB 0..255 tensors (H, W multiples of 32)
already on the model's device and returns the (B, 1, H, W) float32 disparity. Every mode runs
``FoundationStereo.forward`` itself (the model has no host-device synchronisation in its forward
pass, so the whole pass can be captured in one CUDA graph):

- ``eager``: the plain PyTorch path.
- ``compile``: regional compilation. Each part of the network (feature encoder, cost filtering,
  GRU update block, ...) is compiled on its own with ``fullgraph=True, dynamic=False`` and the
  forward pass calls the compiled parts, so the GRU update is compiled once and reused for every
  iteration. Compiling the whole pass as one graph would unroll all iterations into one graph
  (minutes of compilation for ViT-L at 16-32 iterations). The first call at a new size
  compiles, so call :meth:`NetworkRunner.warmup` at node start. The model itself is not
  changed: the compiled parts live in a view of it that shares its weights.
- ``cudagraph``: one CUDA graph per input size, captured after a few eager warm-up passes;
  inputs are copied into static buffers and the graph replayed (one launch per frame).
- ``compile-cudagraph``: the compiled parts of ``compile``, captured (after warm-up, which
  compiles) into one CUDA graph as ``cudagraph`` does.

Each mode combines with a precision: ``fp32``, or autocast ``fp16`` / ``bf16`` (CUDA only; the
model keeps the geometry lookup, the disparity accumulation and the upsampled output in fp32).

Capture and replay run under the model's device (``cuda:1`` stays ``cuda:1`` whatever the
current device is) on a stream made on that device, in ``thread_local`` capture mode (the
node's other threads may copy results back while the worker captures); a failed capture leaves
the thread on the stream it was on.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import importlib.util
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import torch

from ..model import FoundationStereo
from ..model.attention import flash_attention_available
from ..model.foundation_stereo import PRECISION_DTYPES
from ..vocabulary import EXECUTIONS

# Accepted (mean, max) |d - d_eager_fp32| in px per precision, on the small test pairs of
# test/runtime/test_fastpath.py and test/model/test_paths.py (deterministic test weights). fp32 modes differ
# only in summation order (the GPU tests turn TF32 off). The fp16/bf16 bounds are provisional:
# no GPU run has measured them yet.
# The CPU's bf16 autocast over the same autocast regions measured a mean of 0.14 px and a max of
# 0.71 px (64x96, 2 iterations; test/model/test_paths.py); the CUDA tests print their figures.
PARITY_TOLERANCE_PX = {"fp32": (1e-3, 2e-2), "fp16": (0.25, 4.0), "bf16": (0.5, 8.0)}

COMPILED_EXECUTIONS = ("compile", "compile-cudagraph")
GRAPH_EXECUTIONS = ("cudagraph", "compile-cudagraph")
#: flash-attn releases before this one are not registered as torch custom ops: dynamo cannot trace
#: them, and a ``fullgraph=True`` region that calls them fails to compile.
FLASH_ATTN_TRACEABLE = (2, 6)


def _version_tuple(text: str) -> Tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _flash_attn_version() -> Optional[str]:
    try:
        return importlib.metadata.version("flash-attn")
    except importlib.metadata.PackageNotFoundError:
        return None


CompileBackend = Union[str, Callable[..., Any]]  # a torch.compile backend: a name or a callable


def compile_unavailable_reason(precision: str, device: torch.device | str,
                               compile_backend: CompileBackend = "inductor") -> Optional[str]:
    """Why ``torch.compile`` of the network cannot work here (None when it can): inductor
    generates its CUDA kernels with Triton, which is not installed on Jetson (JetPack) PyTorch;
    flash-attn older than 2.6 (used for fp16/bf16 attention on CUDA) is not traceable."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    if compile_backend == "inductor" and importlib.util.find_spec("triton") is None:
        return ("torch.compile's inductor backend generates its CUDA kernels with Triton, which is not installed "
                "(JetPack's PyTorch has none); use execution 'cudagraph'")
    if precision != "fp32" and flash_attention_available():
        version = _flash_attn_version()
        if version is not None and _version_tuple(version) < FLASH_ATTN_TRACEABLE:
            return (f"flash-attn {version} is older than 2.6 and cannot be traced by torch.compile (its kernels "
                    f"are not torch custom ops); upgrade it (pip install 'flash-attn>=2.6'), uninstall it, or use "
                    f"execution 'cudagraph'")
    return None


def mode_unavailable_reason(execution: str, precision: str, device: torch.device | str,
                            compile_backend: CompileBackend = "inductor") -> Optional[str]:
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
    if execution in GRAPH_EXECUTIONS and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if execution in COMPILED_EXECUTIONS:
        return compile_unavailable_reason(precision, device, compile_backend)
    return None


#: Compiled graphs that one part's code may accumulate in a process. Dynamo keys its graphs by
#: code object, which every instance of a part's class shares: each network built (another
#: variant, a reloaded checkpoint) and each prepared size adds a graph for the same ``forward``.
#: Dynamo's default of 8 then makes a ``fullgraph`` part fail in a process that prepares several
#: (the benchmark's size sweep, a test suite).
COMPILED_PARTS_RECOMPILE_LIMIT = 64


def _allow_recompiles(limit: int) -> None:
    import torch._dynamo  # noqa: F401 - only the compiled modes need the compiler loaded

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # before 2.6
    if getattr(config, name) < limit:
        setattr(config, name, limit)


def compiled_view(model: FoundationStereo, backend: CompileBackend = "inductor") -> FoundationStereo:
    """A view of ``model`` whose parts (its direct sub-modules) are each compiled on their own.

    The view shares the model's parameters and buffers (no copy of the weights) and runs the
    same ``forward``; only the sub-modules it calls are compiled. A part called several times
    with the same shapes (the GRU update block, once per iteration) is compiled once. The model
    itself keeps running eager (other sizes, the out-of-memory fallback).
    """
    _allow_recompiles(COMPILED_PARTS_RECOMPILE_LIMIT)
    view = copy.copy(model)  # shares _parameters and _buffers
    view._modules = {name: torch.compile(child, backend=backend, fullgraph=True, dynamic=False)
                     for name, child in model._modules.items()}
    return view


@contextlib.contextmanager
def _on_device_stream(device: torch.device) -> Iterator[torch.cuda.Stream]:
    """Inside: ``device`` is the current CUDA device and a new side stream of it the current
    stream. On the way out, whatever happened inside (a capture that failed between its begin
    and end leaves ``torch.cuda.graph`` on its capture stream), the previous stream is current
    again and waits for the side stream's work."""
    with torch.cuda.device(device):
        previous = torch.cuda.current_stream(device)
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(previous)
        torch.cuda.set_stream(stream)
        try:
            yield stream
        except BaseException:
            torch.cuda.set_stream(previous)
            with contextlib.suppress(Exception):  # never hide the capture's own error
                previous.wait_stream(stream)
            raise
        torch.cuda.set_stream(previous)
        previous.wait_stream(stream)


class NetworkRunner:
    """The network in one execution mode, for repeated calls at a fixed input size."""

    def __init__(self, model: FoundationStereo, iters: int, precision: str = "fp32", execution: str = "eager",
                 compile_backend: CompileBackend = "inductor", graph_warmup: int = 3):
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        device = next(model.parameters()).device
        reason = mode_unavailable_reason(execution, precision, device, compile_backend)
        if reason is not None:
            raise ValueError(f"execution {execution!r} with {precision} on {device}: {reason}")
        self.model = model.eval()
        self.iters = iters
        self.precision = precision
        self.execution = execution
        self.device = device
        self.graph_warmup = max(int(graph_warmup), 1)
        self._network = compiled_view(self.model, compile_backend) if execution in COMPILED_EXECUTIONS else self.model
        self._graphs: Dict[Tuple[int, ...], Tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def name(self) -> str:
        return f"{self.execution}-{self.precision}"

    def _forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self._network(left, right, iters=self.iters, precision=self.precision).disparity

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
        # Warm-up on a side stream of the model's device, as CUDA-graph capture requires (lazy
        # init, cuDNN autotuning, and compilation in compile-cudagraph), then capture on it.
        with _on_device_stream(self.device) as stream:
            for _ in range(self.graph_warmup):
                self._forward(static_l, static_r)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                static_out = self._forward(static_l, static_r)
        return graph, static_l, static_r, static_out

    @torch.no_grad()
    def __call__(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) float32 disparity of padded (B, 3, H, W) RGB 0..255 inputs."""
        self._check(left, right)
        if self.execution not in GRAPH_EXECUTIONS:
            return self._forward(left, right)
        key = tuple(left.shape)
        if key not in self._graphs:
            self._graphs[key] = self._capture(left, right)
        graph, static_l, static_r, static_out = self._graphs[key]
        with torch.cuda.device(self.device):  # replay() launches on the current device's stream
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
