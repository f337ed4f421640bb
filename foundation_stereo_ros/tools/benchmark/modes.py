"""The grid a benchmark run covers: presets, and the EXECUTION-PRECISION mode names."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Tuple

from ...vocabulary import EXECUTIONS, PRECISIONS

PRESETS: Dict[str, Dict[str, Any]] = {
    # Finishes in about a minute on a 2-core CPU.
    "cpu-smoke": dict(variants=["vits"], sizes=[(64, 96), (96, 128)], iters=[8], modes=["eager-fp32"],
                      repeats=3, warmup=1),
    # One GPU configuration in every mode: the figure the issue asks for, in a few minutes.
    "gpu-quick": dict(variants=["vitl"], sizes=[(480, 640)], iters=[16],
                      modes=["eager-fp32", "eager-fp16", "eager-bf16", "cudagraph-fp16", "cudagraph-bf16",
                             "compile-bf16"],
                      repeats=20, warmup=3),
    # The full matrix of the issue (long: torch.compile per shape takes minutes for ViT-L).
    "gpu-full": dict(variants=["vits", "vitl"], sizes=[(320, 480), (480, 640), (720, 1280)], iters=[8, 16, 32],
                     modes=["eager-fp32", "eager-fp16", "eager-bf16", "cudagraph-bf16", "compile-bf16",
                            "compile-cudagraph-bf16"],
                     repeats=20, warmup=3),
}


def parse_mode(text: str) -> Tuple[str, str]:
    """'cudagraph-bf16' -> ('cudagraph', 'bf16'); 'onnxruntime' -> ('onnxruntime', 'fp32')."""
    if text == "onnxruntime":
        return "onnxruntime", "fp32"
    execution, _, precision = text.rpartition("-")
    if execution not in EXECUTIONS or precision not in PRECISIONS:
        raise argparse.ArgumentTypeError(
            f"mode must be EXECUTION-PRECISION with EXECUTION in {list(EXECUTIONS)} and PRECISION in "
            f"{sorted(PRECISIONS)}, or 'onnxruntime'; got {text!r}")
    return execution, precision


def mode_name(execution: str, precision: str) -> str:
    """The inverse of :func:`parse_mode`: ('eager', 'fp32') -> 'eager-fp32'."""
    return "onnxruntime" if execution == "onnxruntime" else f"{execution}-{precision}"
