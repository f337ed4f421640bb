"""The network exported by :func:`~foundation_stereo_ros.analysis.onnx_export.export_onnx`, run by
ONNX Runtime on numpy images.

An :class:`OnnxRunner` takes a rectified RGB uint8 pair ``(H, W, 3)`` whose size pads (to
multiples of 32) to the graph's input size and returns the network's raw float32 ``(H, W)``
disparity in pixels (``x_left - x_right``); the padding and the crop back are done inside.
Which execution providers to try is the caller's choice (the node's policy is
:func:`foundation_stereo_ros.pipeline.backends.onnx_provider_list`). onnx and onnxruntime are
imported on first use.

How much memory the GPU providers may take comes from :func:`memory_plan`, by the device's
memory: on a Jetson Orin (8 or 16 GB, shared by the CPU and the GPU) TensorRT's builder gets a
smaller workspace, ONNX Runtime's CUDA arena grows only by what is asked for and stops below the
board's memory less a reserve for the system and ROS, and cuDNN picks its algorithms without
trying the ones that need the largest workspaces.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..model.padding import InputPadder

#: Prefix of the metadata entries an export records (iterations, variant, max_disp, sizes).
METADATA_PREFIX = "foundation_stereo."


def read_export_metadata(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """The ``foundation_stereo.*`` metadata of an exported file (prefix removed); {} if none."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def check_pair(left: np.ndarray, right: np.ndarray) -> Tuple[int, int]:
    """(H, W) of a valid RGB uint8 pair; ValueError naming the problem otherwise."""
    for name, img in (("left", left), ("right", right)):
        if not isinstance(img, np.ndarray):
            raise ValueError(f"{name} image must be a numpy array, got {type(img).__name__}")
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"{name} image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    if left.shape != right.shape:
        raise ValueError(f"left and right images differ in size: {left.shape[:2]} vs {right.shape[:2]}")
    h, w = left.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image ({h}x{w})")
    return h, w


def pad_to_network(image: np.ndarray, padder: InputPadder) -> np.ndarray:
    """(1, 3, H', W') float32 of an (H, W, 3) uint8 image, edge-padded as InputPadder pads tensors."""
    padded = np.pad(image, ((padder.top, padder.bottom), (padder.left, padder.right), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)


GIB = 1 << 30


@dataclass(frozen=True)
class MemoryPlan:
    """How much memory ONNX Runtime's GPU providers may use (see :func:`memory_plan`)."""

    trt_workspace_bytes: int  # TensorRT builder scratch memory (trt_max_workspace_size)
    gpu_mem_limit_bytes: Optional[int]  # CUDA provider arena cap (None: no cap)
    arena_extend_strategy: str  # "kNextPowerOfTwo" (ONNX Runtime's default) or "kSameAsRequested"
    cudnn_conv_algo_search: str  # "EXHAUSTIVE" (default) or "HEURISTIC"
    cudnn_max_workspace: bool  # let cuDNN take its largest workspace (ONNX Runtime's default)
    cpu_arena: bool  # ONNX Runtime's CPU memory arena


def memory_plan(total_bytes: Optional[int]) -> MemoryPlan:
    """The plan for a device with ``total_bytes`` of memory (None: unknown, a desktop GPU).

    8 GB boards (Orin Nano / NX 8 GB): 1 GiB TensorRT workspace, the CUDA arena capped at the
    memory less 2.5 GiB; 16 GB boards (Orin NX 16 GB): 2 GiB and less 3 GiB; both grow the arena
    by what is asked for (the power-of-two default can double a 2 GiB arena for one more MiB),
    choose cuDNN algorithms heuristically with bounded workspaces, and keep no CPU arena (the
    CPU's memory is the GPU's). Larger devices: 4 GiB workspace and ONNX Runtime's defaults."""
    if total_bytes is not None and total_bytes <= 17 * GIB:
        small = total_bytes <= 9 * GIB
        reserve = int(2.5 * GIB) if small else 3 * GIB
        return MemoryPlan(trt_workspace_bytes=(1 if small else 2) * GIB,
                          gpu_mem_limit_bytes=max(total_bytes - reserve, GIB),
                          arena_extend_strategy="kSameAsRequested", cudnn_conv_algo_search="HEURISTIC",
                          cudnn_max_workspace=False, cpu_arena=False)
    return MemoryPlan(trt_workspace_bytes=4 * GIB, gpu_mem_limit_bytes=None, arena_extend_strategy="kNextPowerOfTwo",
                      cudnn_conv_algo_search="EXHAUSTIVE", cudnn_max_workspace=True, cpu_arena=True)


def device_memory_bytes(device_id: int = 0) -> Optional[int]:
    """Total memory of CUDA device ``device_id`` as PyTorch sees it; on a Jetson (whose GPU
    shares the system memory) the system memory when PyTorch has no CUDA; None otherwise."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device_id).total_memory)
    if os.path.exists("/etc/nv_tegra_release"):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def provider_options(providers: Sequence[str], device_id: int, plan: MemoryPlan, trt_fp16: bool,
                     trt_cache_dir: Optional[str], cuda_tf32: bool) -> List[Dict[str, object]]:
    """ONNX Runtime's options for each provider in ``providers`` (the documented option names)."""
    options: List[Dict[str, object]] = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            opt: Dict[str, object] = {"device_id": device_id, "trt_fp16_enable": trt_fp16,
                                      "trt_max_workspace_size": int(plan.trt_workspace_bytes),
                                      # fp16 engines keep LayerNormalization in fp32 (overflow otherwise)
                                      "trt_layer_norm_fp32_fallback": bool(trt_fp16)}
            if trt_cache_dir:
                opt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir),
                           trt_timing_cache_enable=True, trt_timing_cache_path=str(trt_cache_dir))
            options.append(opt)
        elif p == "CUDAExecutionProvider":
            opt = {"device_id": device_id, "arena_extend_strategy": plan.arena_extend_strategy,
                   "cudnn_conv_algo_search": plan.cudnn_conv_algo_search,
                   "cudnn_conv_use_max_workspace": "1" if plan.cudnn_max_workspace else "0",
                   "use_tf32": "1" if cuda_tf32 else "0"}
            if plan.gpu_mem_limit_bytes is not None:
                opt["gpu_mem_limit"] = int(plan.gpu_mem_limit_bytes)
            options.append(opt)
        else:
            options.append({})
    return options


class OnnxRunner:
    """An exported network in an ONNX Runtime session, for repeated calls at its fixed input size.

    ``providers``: the execution providers to try, in order (each must be installed). TensorRT
    runs fp16 unless ``trt_fp16=False`` and caches its engines and timing cache in
    ``trt_cache_dir``. ``memory``: what the GPU providers may use (default: :func:`memory_plan`
    of the device's memory). ``cuda_tf32=False`` makes the CUDA provider's fp32 convolutions and
    matrix products true fp32 (for parity checks; TF32 is ONNX Runtime's default).
    """

    def __init__(self, path: Union[str, os.PathLike], providers: Sequence[str], device_id: int = 0,
                 trt_fp16: bool = True, trt_cache_dir: Optional[str] = None, memory: Optional[MemoryPlan] = None,
                 cuda_tf32: bool = True, intra_op_threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ValueError("the ONNX Runtime runner needs the 'onnxruntime' package "
                             "(onnxruntime-gpu, or NVIDIA's wheel on Jetson)") from None

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: ONNX model not found (make one with foundation-stereo-export)")
        providers = list(providers)
        if not providers:
            raise ValueError("the providers list is empty")
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(f"ONNX Runtime execution provider(s) {missing} not available; this onnxruntime has "
                             f"{list(available)} (onnxruntime-gpu brings CUDA/TensorRT)")
        gpu = any(p != "CPUExecutionProvider" for p in providers)
        if memory is None:
            memory = memory_plan(device_memory_bytes(device_id) if gpu else None)
        self.memory = memory
        options = provider_options(providers, device_id, memory, trt_fp16, trt_cache_dir, cuda_tf32)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_cpu_mem_arena = memory.cpu_arena
        if intra_op_threads > 0:
            so.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(path, sess_options=so, providers=providers, provider_options=options)
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph ...)
            raise ValueError(f"{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0] if str(e) else e}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != {"left", "right"}:
            raise ValueError(f"{path}: expected inputs 'left' and 'right', found {sorted(inputs)}")
        shape = inputs["left"].shape
        if len(shape) != 4 or not all(isinstance(s, int) for s in shape[2:]):
            raise ValueError(f"{path}: expected a fixed (1, 3, H, W) input, found {shape}")
        self.input_size = (int(shape[2]), int(shape[3]))
        self.metadata = read_export_metadata(path)
        self.iters = int(self.metadata.get("iters", 0))
        self.max_disp = float(self.metadata.get("max_disp", 0.0))
        self.providers = self.session.get_providers()

    def __call__(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """(H, W) float32 network disparity of an (H, W, 3) uint8 RGB pair."""
        h, w = check_pair(left, right)
        padder = InputPadder(h, w)
        if padder.padded_size != self.input_size:
            ih, iw = self.input_size
            raise ValueError(f"this ONNX model was exported for {ih}x{iw} network input (camera images that pad "
                             f"to it, e.g. {self.metadata.get('image_height', ih)}x"
                             f"{self.metadata.get('image_width', iw)}); got {h}x{w} images. Export again with "
                             f"foundation-stereo-export --height {h} --width {w}")
        out = self.session.run(["disparity"], {"left": pad_to_network(left, padder),
                                               "right": pad_to_network(right, padder)})[0]  # (1, 1, H', W')
        ph, pw = self.input_size
        return np.ascontiguousarray(out[0, 0, padder.top:ph - padder.bottom, padder.left:pw - padder.right],
                                    dtype=np.float32)
