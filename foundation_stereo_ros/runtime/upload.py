"""Host-to-device transfer of camera images through one reused page-locked (pinned) buffer."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch


class PinnedUpload:
    """Host-to-device transfer of images of one size through one reused page-locked buffer.

    On CUDA the K images (a pair, or the pairs of several cameras) are written straight into a
    pinned (K, H, W, C) uint8 buffer (one host copy each) and leave in one asynchronous copy; the
    buffer is reallocated only when the shape changes. Elsewhere the images are stacked and
    returned on the host (without a copy when they already are the consecutive slices of one
    array, as the rectifier writes a pair). The caller must finish with the device copy (any device-to-host copy of
    a result does) before the next call, which overwrites the buffer.
    """

    def __init__(self, device: Union[str, torch.device]) -> None:
        self.device = torch.device(device)
        self._buffer: Optional[torch.Tensor] = None
        self.allocations = 0  # how many pinned buffers were made (one per shape)

    def __call__(self, *images: np.ndarray) -> torch.Tensor:
        """(K, H, W, C) uint8 tensor of the K images (left, right: K = 2) on the device."""
        if not images:
            raise ValueError("nothing to upload: give at least one image")
        if self.device.type != "cuda":
            stacked = stacked_array(images)  # e.g. the rectifier's pair: no copy at all
            return torch.from_numpy(stacked if stacked is not None else np.stack(images))
        shape = (len(images),) + tuple(images[0].shape)
        if self._buffer is None or tuple(self._buffer.shape) != shape:
            self._buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self.allocations += 1
        host = self._buffer.numpy()
        for i, image in enumerate(images):
            host[i] = image
        return self._buffer.to(self.device, non_blocking=True)


def stacked_array(images) -> Optional[np.ndarray]:
    """The C-ordered (K, ...) array whose K consecutive slices are exactly ``images``, or None."""
    base = images[0].base
    if not isinstance(base, np.ndarray) or not base.flags.c_contiguous or base.ndim == 0:
        return None
    if base.shape != (len(images),) + images[0].shape or base.dtype != images[0].dtype:
        return None
    start, step = base.__array_interface__["data"][0], base.strides[0]
    for i, image in enumerate(images):
        if (image.shape != base.shape[1:] or image.dtype != base.dtype or not image.flags.c_contiguous
                or image.__array_interface__["data"][0] != start + i * step):
            return None
    return base
