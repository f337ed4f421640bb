"""Fast inference paths for the network: staged timing, execution modes, ONNX export and runners,
and a simulated CUDA device (``runtime.simulated``) for memory traces and FLOP counts without a GPU.

Nothing here changes the network; every path is checked against ``FoundationStereo.forward``
(``test/test_fastpath.py``, ``test/test_onnx_export.py``, ``test/test_benchmark.py``).
Importing this package imports torch but not onnx / onnxruntime (those load on first use).
"""
from .backends import OnnxRuntimeDisparity, TorchDisparity, choose_providers
from .fastpath import EXECUTIONS, NetworkRunner, mode_unavailable_reason
from .onnx_export import export_onnx, read_export_metadata
from .stages import NETWORK_STAGES, StageClock, staged_forward

__all__ = ["EXECUTIONS", "NETWORK_STAGES", "NetworkRunner", "OnnxRuntimeDisparity", "StageClock", "TorchDisparity",
           "choose_providers", "export_onnx", "mode_unavailable_reason", "read_export_metadata", "staged_forward"]
