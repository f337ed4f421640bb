"""argparse value types shared by the command-line tools."""
from __future__ import annotations

import argparse
from typing import Any, Callable, List, Optional, Tuple


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


def parse_size(text: str) -> Tuple[int, int]:
    """'480x640' -> (480, 640): height x width."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH (e.g. 480x640), got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32, got {text!r}")
    return h, w


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], List[Any]]:
    """An argparse type: a comma-separated list, each item converted by ``kind``."""
    def parse(text: str) -> List[Any]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return [kind(t) for t in items]
    return parse
