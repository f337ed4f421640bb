"""The network on a simulated CUDA device: shape-only ("fake") tensors, no GPU needed.

The real forward pass runs on ``FakeTensorMode`` tensors placed on ``cuda``: every op computes
the shape and dtype of its result and nothing else, so a ViT-L pass at 720x1280 takes seconds
on a laptop CPU. What a GPU would decide is kept: CUDA's autocast rules (PyTorch turns CUDA
autocast off when no device is present; here it stays on) and the fused attention kernels a GPU
picks (a device-less dispatch would fall back to the math kernel, which materialises the L x L
weights). Two tools use it:

- ``foundation-stereo-memory`` traces the peak of live tensor storage (``--device simulated-cuda``);
- :func:`count_flops` counts the network's floating-point work per stage with PyTorch's FLOP
  counter, which the benchmark relates to measured latency (its "x floor" column).

What it cannot tell: cuDNN workspaces, allocator rounding, the CUDA context, and time.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ..model import FoundationStereo, FoundationStereoConfig

__all__ = ["count_flops", "is_simulated", "simulated_cuda", "simulated_cuda_model", "simulation_problem"]


def _cuda_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cuda")
    except TypeError:  # PyTorch < 2.4: no device argument, and the answer is CUDA's
        return torch.is_autocast_enabled()


def _cuda_autocast_dtype() -> torch.dtype:
    getter = getattr(torch, "get_autocast_dtype", None)
    return getter("cuda") if getter is not None else torch.get_autocast_gpu_dtype()  # PyTorch < 2.4


def _gpu_attention(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                   is_causal: bool = False, scale: Optional[float] = None, **_: Any) -> Any:
    """``F.scaled_dot_product_attention`` as a GPU runs it, for shape-only tensors: the fused
    kernels (flash attention for fp16/bf16, memory-efficient attention otherwise)."""
    if _cuda_autocast_enabled():  # SDPA is on CUDA autocast's lower-precision list
        dtype = _cuda_autocast_dtype()
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256:
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, 0.0, is_causal, False,
                                                                  scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, False, 0.0,
                                                                  is_causal, scale=scale)[0]


@contextlib.contextmanager
def simulated_cuda(mode: Any = None) -> Iterator[Any]:
    """Enter ``mode`` (a ``FakeTensorMode``; a new one if None) with CUDA autocast allowed and
    attention on the GPU's fused kernels; everything patched is restored on exit."""
    amp_common = torch.cuda.amp.common
    saved = (amp_common.amp_definitely_not_available, torch.cuda.is_bf16_supported, F.scaled_dot_product_attention)
    amp_common.amp_definitely_not_available = lambda: False
    torch.cuda.is_bf16_supported = lambda *a, **k: True
    F.scaled_dot_product_attention = _gpu_attention
    try:
        with (mode if mode is not None else FakeTensorMode()) as active:
            yield active
    finally:
        amp_common.amp_definitely_not_available, torch.cuda.is_bf16_supported, F.scaled_dot_product_attention = saved


@functools.lru_cache(maxsize=1)
def simulation_problem() -> Optional[str]:
    """None where this PyTorch can simulate a CUDA device, else why not (PyTorch 2.3, for one,
    initialises CUDA for a fake CUDA tensor and so needs a driver)."""
    try:
        with simulated_cuda():
            torch.empty(1, device="cuda")
    except Exception as e:  # noqa: BLE001 - whatever stops it, the answer is "cannot"
        first = str(e).splitlines()[0] if str(e) else ""
        return f"PyTorch {torch.__version__} cannot simulate a CUDA device here ({type(e).__name__}: {first})"
    return None


def simulated_cuda_model(config: Union[str, FoundationStereoConfig]) -> FoundationStereo:
    """The network (a variant name or a full config) with shape-only CUDA weights; built on the
    meta device, so it takes no memory and no initialisation time."""
    problem = simulation_problem()
    if problem is not None:
        raise RuntimeError(problem)
    cfg = FoundationStereoConfig(vit_size=config) if isinstance(config, str) else config
    with torch.device("meta"):
        model = FoundationStereo(cfg).eval()
    with simulated_cuda():
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = torch.nn.Parameter(
                        torch.empty(p.shape, dtype=p.dtype, device="cuda"), requires_grad=False)
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device="cuda")
    return model


def is_simulated(tensor: Any) -> bool:
    return isinstance(tensor, FakeTensor)


def simulated_inputs(height: int, width: int, batch: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """A shape-only left/right pair; call inside :func:`simulated_cuda` with the model's mode."""
    return (torch.empty(batch, 3, height, width, device="cuda"), torch.empty(batch, 3, height, width, device="cuda"))


class _OpCounter:
    """Counts the ops that do work on the device (not views): about one kernel launch each in
    eager mode (a few ops launch more than one kernel, e.g. cuDNN convolutions)."""

    def __init__(self) -> None:
        counter = self
        self.count = 0

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                # prim ops (e.g. prim.device) answer metadata questions: no device work.
                if not getattr(func, "is_view", False) and func.namespace != "prim":
                    counter.count += 1
                return func(*args, **(kwargs or {}))

        self.mode = _Mode()


def count_flops(config: Union[str, FoundationStereoConfig, FoundationStereo], height: int, width: int,
                iters: int, precision: str = "fp32") -> Dict[str, Any]:
    """Floating-point operations of one forward pass at a padded size (multiples of 32), counted
    by PyTorch's FLOP counter (matmuls, convolutions, attention; 2 per multiply-add) on the
    simulated device: ``total``, ``stages`` (as the model's ``on_stage`` hook names them;
    ``gru`` summed over the iterations) and ``gru_iteration``; also ``device_ops``, the number
    of non-view ops the pass dispatches at ``precision`` (about one kernel launch each in eager
    mode; fp16/bf16 add autocast's casts of activations), in total and per GRU iteration. Counted
    as every pass after the first runs: the fp16/bf16 weight copies are made before counting."""
    if height % 32 or width % 32:
        raise ValueError(f"count_flops takes a padded size (multiples of 32), got {height}x{width}")
    model = config if isinstance(config, FoundationStereo) else simulated_cuda_model(config)
    marks = []
    ops = _OpCounter()
    with simulated_cuda(next(model.parameters()).fake_mode):
        model.prepare(precision)
        left, right = simulated_inputs(height, width)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter, ops.mode:
            model(left, right, iters=iters, precision=precision,
                  on_stage=lambda name: marks.append((name, counter.get_total_flops(), ops.count)))
    stages: Dict[str, int] = {}
    gru_ops = 0
    previous, previous_ops = 0, 0
    for name, total, op_count in marks:
        stages[name] = stages.get(name, 0) + total - previous
        if name == "gru":
            gru_ops += op_count - previous_ops
        previous, previous_ops = total, op_count
    total = counter.get_total_flops()
    return dict(total=int(total), stages=stages, gru_iteration=stages.get("gru", 0) // iters,
                device_ops=ops.count, device_ops_per_gru_iteration=gru_ops // iters,
                height=height, width=width, iters=iters, precision=precision)
