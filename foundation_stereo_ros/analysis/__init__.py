"""Offline analysis of the network, apart from the node's hot path: per-stage timing, the
simulated CUDA device (memory traces and FLOP counts without a GPU), the ONNX export and the
check of an export against TensorRT's ONNX parser rules.

Modules:
  stages          per-stage timing of the real forward pass (CUDA events or perf_counter)
  simulated       the forward pass on shape-only CUDA tensors: peak memory and FLOP counts
  host_traffic    the same pass checked op by op for host-device copies, synchronisation and
                  tensors made on the host (what CUDA-graph capture refuses)
  onnx_export     an ONNX graph for one input size and iteration count, with its metadata
  tensorrt_check  what TensorRT's ONNX parser (8.6 at opset 17, 10 otherwise) would refuse
"""
from ..runtime.onnx_runner import read_export_metadata
from .onnx_export import export_onnx
from .stages import NETWORK_STAGES, StageClock, staged_forward

__all__ = ["NETWORK_STAGES", "StageClock", "export_onnx", "read_export_metadata", "staged_forward"]
