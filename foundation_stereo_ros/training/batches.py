"""Training batches that do not depend on how they are loaded: data order and augmentation are
functions of (seed, epoch, sample index), so a resumed run sees the same batches as an
uninterrupted one, whatever the number of loader workers; under torchrun each process takes its
shard of every epoch from PyTorch's ``DistributedSampler``.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .augment import StereoAugmentor
from .data import StereoDataset, StereoSample
from .distributed import SINGLE, DistributedContext


def sample_to_tensors(sample: StereoSample) -> Dict[str, object]:
    def img(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()  # (3, H, W) 0..255

    return {"left": img(sample.left), "right": img(sample.right),
            "disparity": torch.from_numpy(np.ascontiguousarray(sample.disparity))[None].float(),
            "valid": torch.from_numpy(np.ascontiguousarray(sample.valid))[None], "name": sample.name}


class AugmentedDataset(torch.utils.data.Dataset):
    """Indexable by ``(epoch, index)``: loads a sample and augments it with a generator seeded
    from (seed, epoch, index), which makes every crop reproducible."""

    def __init__(self, base: StereoDataset, augmentor: StereoAugmentor, seed: int = 0):
        self.base, self.augmentor, self.seed = base, augmentor, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Dict[str, object]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        return sample_to_tensors(self.augmentor(self.base[index], rng))


class ShardedBatches(torch.utils.data.Sampler):
    """This process's batches of ``(epoch, index)`` for steps ``start .. steps-1``.

    Epoch e is ``DistributedSampler``'s shuffled shard for ``set_epoch(e)``; each step takes the
    next ``per_step`` indices of it (``batch_size x accumulate``), the last step of an epoch
    possibly fewer (the same number on every process). Step s always gets the same batch, so a
    resumed run sees the batches an uninterrupted one would have."""

    def __init__(self, size: int, per_step: int, seed: int, start: int, steps: int,
                 ctx: DistributedContext = SINGLE):
        self.per_step, self.start, self.steps = per_step, start, steps
        self.sampler = torch.utils.data.DistributedSampler(range(size), num_replicas=ctx.world_size, rank=ctx.rank,
                                                           shuffle=True, seed=seed, drop_last=False)
        self.per_epoch = max(1, math.ceil(self.sampler.num_samples / per_step))
        self._epoch: Optional[int] = None
        self._order: List[int] = []

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def position(self, step: int) -> Tuple[int, int]:
        """(epoch, batch within the epoch) of step ``step``."""
        return divmod(step, self.per_epoch)

    def batch(self, step: int) -> List[Tuple[int, int]]:
        epoch, b = self.position(step)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)  # the epoch advances: a new permutation, sharded anew
            self._epoch, self._order = epoch, list(self.sampler)
        return [(epoch, int(i)) for i in self._order[b * self.per_step:(b + 1) * self.per_step]]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for step in range(self.start, self.steps):
            yield self.batch(step)


def collate(items: Sequence[Dict[str, object]]) -> Dict[str, object]:
    out: Dict[str, object] = {k: torch.stack([it[k] for it in items]) for k in ("left", "right", "disparity", "valid")}
    out["name"] = [it["name"] for it in items]
    return out
