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
    returned on the host. The caller must finish with the device copy (any device-to-host copy of
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
            return torch.from_numpy(np.stack(images))
        shape = (len(images),) + tuple(images[0].shape)
        if self._buffer is None or tuple(self._buffer.shape) != shape:
            self._buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self.allocations += 1
        host = self._buffer.numpy()
        for i, image in enumerate(images):
            host[i] = image
        return self._buffer.to(self.device, non_blocking=True)
