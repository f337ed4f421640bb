"""Host-to-device transfer of a camera pair through one reused page-locked (pinned) buffer."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch


class PinnedUpload:
    """Host-to-device transfer of an image pair through one reused page-locked buffer.

    On CUDA the two images are written straight into a pinned (2, H, W, C) uint8 buffer (one
    host copy each) and leave in one asynchronous copy; the buffer is reallocated only when the
    size changes. Elsewhere the pair is stacked and returned on the host. The caller must finish
    with the device copy (any device-to-host copy of a result does) before the next call, which
    overwrites the buffer.
    """

    def __init__(self, device: Union[str, torch.device]) -> None:
        self.device = torch.device(device)
        self._buffer: Optional[torch.Tensor] = None
        self.allocations = 0  # how many pinned buffers were made (one per size)

    def __call__(self, left: np.ndarray, right: np.ndarray) -> torch.Tensor:
        """(2, H, W, C) uint8 tensor of the pair on the device."""
        if self.device.type != "cuda":
            return torch.from_numpy(np.stack([left, right]))
        shape = (2,) + tuple(left.shape)
        if self._buffer is None or tuple(self._buffer.shape) != shape:
            self._buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self.allocations += 1
        host = self._buffer.numpy()
        host[0] = left
        host[1] = right
        return self._buffer.to(self.device, non_blocking=True)
