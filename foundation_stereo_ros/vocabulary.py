"""Names that several layers accept, defined once: network precisions and execution modes.

This module imports nothing, so the pipeline (whose SGBM backend needs no torch), the model, the
runtime and the tools all take these names from here.
"""

#: Network arithmetic: float32, or float16 / bfloat16 autocast (the model maps them to dtypes).
PRECISIONS = ("fp32", "fp16", "bf16")
#: How the PyTorch network runs (see :mod:`foundation_stereo_ros.runtime.fastpath`).
EXECUTIONS = ("eager", "compile", "cudagraph", "compile-cudagraph")
