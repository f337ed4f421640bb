"""The network's hot path in the node: execution modes, the ONNX Runtime runner, device-side geometry.

Nothing here changes the network; every path is checked against ``FoundationStereo.forward``
(``test/runtime/test_fastpath.py``, ``test/runtime/test_onnx_export.py``). Offline analysis
(stage timing, the simulated CUDA device, the ONNX export and its TensorRT check) lives in
:mod:`foundation_stereo_ros.analysis`. Importing this package imports torch but not onnx /
onnxruntime (those load on first use).
"""
from .backends import OnnxRuntimeDisparity, TorchDisparity, choose_providers
from .fastpath import EXECUTIONS, NetworkRunner, mode_unavailable_reason

__all__ = ["EXECUTIONS", "NetworkRunner", "OnnxRuntimeDisparity", "TorchDisparity", "choose_providers",
           "mode_unavailable_reason"]
