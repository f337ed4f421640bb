"""Reduced precision (fp16 / bf16): the convolution and linear weights, cast once.

CUDA autocast runs convolutions and matrix products in fp16/bf16 and casts their float32 weight
and bias on every call: one extra kernel per weight and call, 78 for each GRU iteration and some
700 per ViT-L pass (its frozen ViT's too). :class:`CastWeights` keeps one copy of those weights per
dtype and puts it into the modules for the length of a forward pass, so autocast finds them in
its dtype and casts nothing. A copy is made by the same rounding autocast applies, so the
results are those of plain autocast, bit for bit.

Only convolution and linear weights are copied: autocast computes layer and group norms in
float32, and layer scales and embeddings are added in float32 (their products promote), so
those stay float32. Weights a gradient may reach (grad mode on and ``requires_grad``) are left
to autocast; the frozen monocular branch is copied in training too.

A copy is checked against its weight at every pass (the weight's version counter and storage:
``load_state_dict``, optimiser steps and ``.to()`` all change one of them) and refreshed in place,
so a CUDA graph captured over the copies keeps valid addresses; it sees new weights once a
pass, :meth:`CastWeights.refresh` or ``load_state_dict`` has refreshed them. Memory: one copy per
dtype used (bf16: 118 MiB for ViT-S, 711 MiB for ViT-L, whose simulated bf16 peak at 480x640 rises
from 2.1 to 2.8 GiB, what fp32 needs); :meth:`CastWeights.clear` frees them. A model whose weights
are swapped in is not for concurrent passes from several threads.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["CAST_MODULES", "CastWeights", "compiling"]

#: Modules whose weight and bias CUDA autocast casts to fp16/bf16 on every call.
CAST_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                nn.Linear)


@dataclass
class _Copy:
    source: torch.Tensor  # the parameter it was made from
    version: int  # the parameter's version counter then
    storage: int  # and its storage
    tensor: torch.Tensor  # the copy in the reduced dtype


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def compiling() -> bool:
    """True while torch.compile traces: a compiled graph casts the weights itself."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else bool(torch._dynamo.is_compiling())


class CastWeights:
    """Copies of a network's convolution and linear weights in reduced-precision dtypes."""

    def __init__(self) -> None:
        self._slots: Optional[List[Tuple[nn.Module, str]]] = None
        self._copies: Dict[torch.dtype, List[Optional[_Copy]]] = {}

    def _slots_of(self, root: nn.Module) -> List[Tuple[nn.Module, str]]:
        if self._slots is None:
            self._slots = [(m, name) for m in root.modules() if isinstance(m, CAST_MODULES)
                           for name in ("weight", "bias") if m._parameters.get(name) is not None]
        return self._slots

    def refresh(self, root: nn.Module, dtype: torch.dtype) -> List[Optional[torch.Tensor]]:
        """Brings the copies in ``dtype`` up to date (makes them the first time) and returns them,
        one per weight of :data:`CAST_MODULES` in ``root``; None for a weight that is in ``dtype``
        already or that a gradient may reach now."""
        slots = self._slots_of(root)
        copies = self._copies.setdefault(dtype, [None] * len(slots))
        grad = torch.is_grad_enabled()
        out: List[Optional[torch.Tensor]] = []
        with torch.no_grad():
            for i, (module, name) in enumerate(slots):
                p = module._parameters[name]
                if p is None or p.dtype == dtype or not p.is_floating_point() or (grad and p.requires_grad):
                    out.append(None)
                    continue
                c = copies[i]
                if c is None or c.source is not p or c.version != p._version or c.storage != _storage(p):
                    if c is not None and c.tensor.shape == p.shape and c.tensor.device == p.device:
                        c.tensor.copy_(p)  # in place: the same rounding as .to(), the same address
                        tensor = c.tensor
                    else:
                        tensor = p.detach().to(dtype)
                    c = copies[i] = _Copy(p, p._version, _storage(p), tensor)
                out.append(c.tensor)
        return out

    @torch.no_grad()
    def refresh_existing(self, root: nn.Module) -> None:
        """Refreshes the copies of every dtype made so far (after new weights were loaded)."""
        for dtype in list(self._copies):
            self.refresh(root, dtype)

    @contextlib.contextmanager
    def swapped_in(self, root: nn.Module, dtype: torch.dtype) -> Iterator[None]:
        """The copies in ``dtype`` stand in for the weights of ``root`` while the block runs."""
        swapped = []
        try:
            for (module, name), copy in zip(self._slots_of(root), self.refresh(root, dtype)):
                if copy is not None:
                    swapped.append((module, name, module._parameters[name]))
                    module._parameters[name] = copy
            yield
        finally:
            for module, name, p in reversed(swapped):
                module._parameters[name] = p

    def tensors(self) -> List[torch.Tensor]:
        """The copies (for memory accounting: they live as long as the model)."""
        return [c.tensor for copies in self._copies.values() for c in copies if c is not None]

    def nbytes(self) -> int:
        """Bytes held by the copies."""
        return sum(t.nbytes for t in self.tensors())

    def clear(self) -> None:
        """Frees the copies (a captured CUDA graph that reads them must not be replayed after)."""
        self._copies.clear()
