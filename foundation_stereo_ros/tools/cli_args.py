"""argparse value types shared by the command-line tools."""
from __future__ import annotations

import argparse
from typing import Any, Optional, Tuple


def positive_int(text: str) -> int:
    """An integer >= 1, or an argparse error that says what was wrong."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def torch_device(name: Optional[str]) -> Tuple[Any, Optional[str]]:
    """(torch.device, None) for a ``--device`` value (None: CUDA when available, else the CPU),
    or (None, error message) when CUDA is asked for and PyTorch has none."""
    import torch

    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        return None, f"device {device} requested but CUDA is not available to PyTorch"
    return device, None
