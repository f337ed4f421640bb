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


def resolve_device(name: Optional[str]) -> Any:
    """The torch.device of a ``--device`` value; None or 'auto': CUDA when PyTorch has it, else
    the CPU. ValueError when CUDA is asked for and PyTorch has none."""
    import torch  # here, not at the top: the tools that can run SGBM only work without PyTorch

    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available to PyTorch on this machine (use --device cpu)")
    return device


def default_device_name() -> str:
    """'cuda' where PyTorch is installed and sees a GPU, else 'cpu' (also without PyTorch)."""
    try:
        return str(resolve_device("auto"))
    except ImportError:
        return "cpu"


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
