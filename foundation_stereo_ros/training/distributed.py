"""Fine-tuning over several processes with PyTorch's own machinery: ``torchrun`` starts the
processes and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``torch.distributed`` (NCCL on
CUDA, gloo on the CPU) connects them; ``DistributedDataParallel`` averages the gradients and
``DistributedSampler`` shards each epoch's permutation. This module only reads torchrun's
environment, bounds every wait with a timeout and groups the few collectives the trainer needs.

The global batch of one optimizer step is ``batch_size x world_size x accumulate`` samples; the
loss is the mean over the valid pixels of that whole global batch, so N processes with batch B
train exactly as one process with batch N x B (up to float rounding) when the dataset size is a
multiple of N (DistributedSampler pads the last shard otherwise).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.distributed as dist

#: Default bound on any wait for another process (a collective, the start-up rendezvous). Rank 0
#: validates and writes checkpoints while the others wait, so it must cover a validation pass.
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits among torchrun's processes."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistributedContext(rank=0, world_size=1, local_rank=0)


def launched_by_torchrun() -> bool:
    """True when torchrun (or an equivalent launcher) set a world of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S
                          ) -> Tuple[DistributedContext, torch.device]:
    """Join torchrun's process group (NCCL for CUDA, gloo for the CPU) and return this process's
    context and device (``cuda:LOCAL_RANK`` for CUDA). A single process gets ``SINGLE`` and its
    ``device`` unchanged."""
    if not launched_by_torchrun():
        return SINGLE, device
    if timeout_s <= 0:
        raise ValueError(f"the distributed timeout must be positive, got {timeout_s}")
    ctx = DistributedContext(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                             local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return ctx, device


def lost_contact(error: BaseException) -> bool:
    """Whether ``error`` says another process died or stopped answering (rather than a bug)."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return any(k in text for k in ("connection closed", "connection reset", "timed out", "timeout", "broken pipe",
                                   "gloo"))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def all_sum(values: Sequence[float], ctx: DistributedContext, device: torch.device) -> List[float]:
    """Element-wise sum of ``values`` over all processes (float64)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if ctx.world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: object, ctx: DistributedContext) -> List[object]:
    """Every process's ``obj``, in rank order (on every process)."""
    if ctx.world_size == 1:
        return [obj]
    out: List[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
