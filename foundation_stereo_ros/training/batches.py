"""Training batches that do not depend on how they are loaded: data order and augmentation are
functions of (seed, epoch, sample index), so a resumed run sees the same batches as an
uninterrupted one, whatever the number of loader workers.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Sequence, Tuple, Union

import numpy as np
import torch

from .augment import StereoAugmentor
from .data import StereoDataset, StereoSample


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


class EpochBatches(torch.utils.data.Sampler):
    """Batches of (epoch, index) for steps ``start .. steps-1``; epoch e is a permutation seeded
    by (seed, e). Step s always gets the same batch, resumed or not."""

    def __init__(self, size: int, batch_size: int, seed: int, start: int, steps: int):
        self.size, self.batch_size, self.seed, self.start, self.steps = size, batch_size, seed, start, steps
        self.per_epoch = max(1, math.ceil(size / batch_size))

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def batch(self, step: int) -> List[Tuple[int, int]]:
        epoch, b = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return [(epoch, int(i)) for i in order[b * self.batch_size:(b + 1) * self.batch_size]]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for step in range(self.start, self.steps):
            yield self.batch(step)


def collate(items: Sequence[Dict[str, object]]) -> Dict[str, object]:
    out: Dict[str, object] = {k: torch.stack([it[k] for it in items]) for k in ("left", "right", "disparity", "valid")}
    out["name"] = [it["name"] for it in items]
    return out
