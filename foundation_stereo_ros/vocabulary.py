"""Names that several layers accept, defined once: network precisions, execution modes, and what
a camera namespace may be called.

This module imports only the standard library, so the pipeline (whose SGBM backend needs no torch), the model, the
runtime and the tools all take these names from here.
"""
import re

#: Network arithmetic: float32, or float16 / bfloat16 autocast (the model maps them to dtypes).
PRECISIONS = ("fp32", "fp16", "bf16")
#: How the PyTorch network runs (see :mod:`foundation_stereo_ros.runtime.fastpath`).
EXECUTIONS = ("eager", "compile", "cudagraph", "compile-cudagraph")

#: A relative ROS namespace: parts of letters, digits and '_', each starting with a letter or '_'.
_NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


def is_camera_namespace(name: str, absolute: bool = False) -> bool:
    """Whether ``name`` can name a camera's namespace (the node's ``cameras``, make-bag's
    ``--cameras``); ``absolute``: a leading '/' is allowed too."""
    return bool(_NAMESPACE.fullmatch(name[1:] if absolute and name.startswith("/") else name))
