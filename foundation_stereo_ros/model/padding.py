"""Pad images to a multiple of 32 (the network's coarsest stride) and crop results back."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


class InputPadder:
    """Replicate-pad (B, C, H, W) tensors so H and W are multiples of ``multiple``.

    The padding is split as evenly as possible, the extra pixel going right/bottom, as the
    reference implementation does; ``unpad`` crops it away again.
    """

    def __init__(self, height: int, width: int, multiple: int = 32):
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        pad_h = (-height) % multiple
        pad_w = (-width) % multiple
        self.height, self.width = height, width
        self.left, self.right = pad_w // 2, pad_w - pad_w // 2
        self.top, self.bottom = pad_h // 2, pad_h - pad_h // 2

    @property
    def padded_size(self) -> Tuple[int, int]:
        return self.height + self.top + self.bottom, self.width + self.left + self.right

    def pad(self, *tensors: torch.Tensor):
        out = [F.pad(t, (self.left, self.right, self.top, self.bottom), mode="replicate") for t in tensors]
        return out[0] if len(out) == 1 else out

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return x[..., self.top:h - self.bottom, self.left:w - self.right]
