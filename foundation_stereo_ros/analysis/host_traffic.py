"""What the forward pass asks of the host, checked op by op on the simulated CUDA device.

A pass that a CUDA graph can capture, and that never makes the host wait in eager mode, has no
traffic with the host at all. :func:`forward_host_traffic` runs the real forward pass on the
simulated device (shape-only tensors on ``cuda``, CUDA's autocast rules; see
:mod:`.simulated`) and reports every op that

- copies between host and device, either way (a pageable copy synchronises the stream, and
  CUDA-graph capture refuses it: "operation not permitted when stream is capturing");
- needs a value or a data-dependent size back on the host (``.item()``, ``nonzero``,
  ``unique``, ``masked_select``, boolean-mask indexing ...);
- makes or reads a tensor on the host (``torch.zeros(shape)`` without a device, say): its
  contents reach the device only through a copy, or are baked into a captured graph.

A test on the CPU cannot see the first and last kinds: there every tensor is on the host.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Any, List, Optional, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..model import FoundationStereo, FoundationStereoConfig
from .simulated import simulated_cuda, simulated_cuda_model, simulated_inputs

__all__ = ["HostTraffic", "HostTrafficRecorder", "SYNCHRONISING_OPS", "forward_host_traffic", "synchronises"]

#: ATen ops that make the host wait for a value (or a data-dependent size) from the device.
SYNCHRONISING_OPS = frozenset({
    "_local_scalar_dense", "item", "nonzero", "masked_select", "is_nonzero", "equal", "allclose",
    "repeat_interleave", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
    "unique_dim_consecutive", "bincount", "histc", "_assert_async", "to_sparse"})

_INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
_TORCH_DIR = os.path.dirname(torch.__file__)
_THIS_FILE = os.path.abspath(__file__)


@dataclass(frozen=True)
class HostTraffic:
    kind: str  # "host-to-device copy", "device-to-host copy", "synchronisation" or "host tensor"
    op: str  # the ATen op, e.g. "aten._to_copy.default"
    after: str  # the last stage of the forward pass that had ended ("start" before the first)
    where: str  # file:line and function of the Python code that called it

    def __str__(self) -> str:
        return f"{self.kind}: {self.op} after stage {self.after!r}, at {self.where}"


def _caller() -> str:
    """The innermost frame outside PyTorch and this module: the network code that issued the op."""
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if path != _THIS_FILE and not path.startswith(_TORCH_DIR):
            return f"{frame.filename}:{frame.lineno} ({frame.name})"
    return "?"


def synchronises(func: Any, args: tuple) -> bool:
    """Whether the ATen op ``func`` on ``args`` makes the host wait for the device."""
    name = func.overloadpacket.__name__
    if name in SYNCHRONISING_OPS:
        return True
    if name in _INDEXING and len(args) > 1 and isinstance(args[1], (list, tuple)):
        # Boolean-mask indexing: the size of the result depends on the mask's values.
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    return False


def _device_types(tree: Any) -> set:
    return {t.device.type for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)}


class HostTrafficRecorder(TorchDispatchMode):
    """Records each op that crosses between host and device (see the module docstring) in
    ``findings``. ``stage`` is set from outside (the model's ``on_stage`` hook) to the stage
    that ended last."""

    def __init__(self, device_type: str = "cuda") -> None:
        super().__init__()
        self.device_type = device_type
        self.findings: List[HostTraffic] = []
        self.stage = "start"

    def _record(self, kind: str, func: Any) -> None:
        self.findings.append(HostTraffic(kind, str(func), self.stage, _caller()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "prim":  # metadata questions (prim.device ...): no device work
            return func(*args, **kwargs)
        if synchronises(func, args):
            self._record("synchronisation", func)  # before running it: a fake tensor cannot answer
        out = func(*args, **kwargs)
        inputs, outputs = _device_types((args, kwargs)), _device_types(out)
        if "cpu" in inputs and self.device_type in outputs:
            self._record("host-to-device copy", func)
        elif self.device_type in inputs and "cpu" in outputs:
            self._record("device-to-host copy", func)
        elif "cpu" in inputs or "cpu" in outputs:
            self._record("host tensor", func)
        return out


def forward_host_traffic(config: Union[str, FoundationStereoConfig, FoundationStereo], height: int, width: int,
                         iters: int = 2, precision: str = "fp32", hierarchical: bool = False,
                         init_disp: bool = False) -> List[HostTraffic]:
    """Every op of one forward pass on the simulated CUDA device that copies between host and
    device, synchronises, or makes or reads a host tensor: an empty list for a pass that CUDA
    graphs can capture. ``hierarchical`` runs ``infer`` (padding, the coarse pass and the fine
    pass) instead of ``forward``; ``init_disp`` passes an initial disparity to ``forward``.
    An op that needs a value on the host stops the pass there (shape-only tensors hold none);
    it is the last finding."""
    if height % 32 or width % 32:
        raise ValueError(f"forward_host_traffic takes a padded size (multiples of 32), got {height}x{width}")
    model = config if isinstance(config, FoundationStereo) else simulated_cuda_model(config)
    recorder = HostTrafficRecorder()

    def on_stage(name: str) -> None:
        recorder.stage = name

    with simulated_cuda(next(model.parameters()).fake_mode):
        left, right = simulated_inputs(height, width)
        init: Optional[torch.Tensor] = torch.empty(1, 1, height // 4, width // 4, device="cuda") if init_disp else None
        try:
            with torch.no_grad(), recorder:
                if hierarchical:
                    model.infer(left, right, iters=iters, hierarchical=True, precision=precision)
                else:
                    model(left, right, iters=iters, init_disp=init, precision=precision, on_stage=on_stage)
        except Exception:  # noqa: BLE001 - a value the shape-only tensors cannot give ends the pass
            if not recorder.findings or recorder.findings[-1].kind != "synchronisation":
                raise
    return recorder.findings

