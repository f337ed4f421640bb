"""The network's hot path in the node: *runners* that take the network's input and return its raw
disparity, and the upload that feeds them.

- :class:`NetworkRunner` (``fastpath``): the PyTorch network in one execution mode (eager,
  torch.compile, CUDA graphs) on padded device tensors.
- :class:`OnnxRunner` (``onnx_runner``): an ONNX export in an ONNX Runtime session on numpy images,
  with the GPU providers' memory options chosen by :func:`memory_plan` for the device (Jetson boards).
- :class:`PinnedUpload` (``upload``): a pair (or several cameras' pairs) to the device through one
  reused pinned buffer.

The pipeline's *backends* (:mod:`foundation_stereo_ros.pipeline.backends`) build on these; the
runners never import the pipeline. Nothing here changes the network; every path is checked against
``FoundationStereo.forward`` (``test/runtime/test_fastpath.py``, ``test/runtime/test_onnx_export.py``).
Offline analysis (stage timing, the simulated CUDA device, the ONNX export and its TensorRT check)
lives in :mod:`foundation_stereo_ros.analysis`. Importing this package imports torch but not onnx /
onnxruntime (those load on first use).
"""
from .fastpath import EXECUTIONS, NetworkRunner, mode_unavailable_reason
from .onnx_runner import MemoryPlan, OnnxRunner, memory_plan, read_export_metadata
from .upload import PinnedUpload

__all__ = ["EXECUTIONS", "MemoryPlan", "NetworkRunner", "OnnxRunner", "PinnedUpload", "memory_plan",
           "mode_unavailable_reason", "read_export_metadata"]
