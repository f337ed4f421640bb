"""Disparity estimators with a numpy interface, for the node: PyTorch fast path and ONNX Runtime.

Both take a rectified RGB uint8 pair ``(H, W, 3)`` and return the network's float32 ``(H, W)``
disparity in pixels (``x_left - x_right``) through :meth:`disparity` (also ``__call__``), with
the padding to multiples of 32 and the crop back done inside. :meth:`compute` follows the
pipeline's backend convention: the same disparity with NaN where it is negative or where the
match would fall left of the right image (``u - d < 0``).
"""
from __future__ import annotations

import abc
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..model.padding import InputPadder


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


def invalidate(disparity: np.ndarray) -> np.ndarray:
    """NaN where the disparity is negative or points left of the right image (in place)."""
    u = np.arange(disparity.shape[1], dtype=np.float32)[None, :]
    disparity[(disparity < 0) | (u - disparity < 0)] = np.nan
    return disparity


class _NumpyBackend(abc.ABC):
    max_disp: float = 0.0

    @abc.abstractmethod
    def disparity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """(H, W) float32 network disparity of an (H, W, 3) uint8 RGB pair."""

    def __call__(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return self.disparity(left, right)

    def compute(self, left: np.ndarray, right: np.ndarray, grey: bool = False) -> np.ndarray:
        """Raw disparity with NaN where invalid (``grey`` is accepted for interface parity)."""
        return invalidate(self.disparity(left, right))

    def search_range(self, width: int) -> Tuple[float, float]:
        return 0.0, float(self.max_disp)

    @property
    def delta_d(self) -> float:
        return 0.0  # continuous output

    def valid_window(self, width: int, height: int) -> Tuple[int, int, int, int]:
        return 0, 0, width, height


class PinnedUpload:
    """Host-to-device transfer of an image pair through one reused page-locked buffer.

    On CUDA the two images are written straight into a pinned (2, H, W, C) uint8 buffer (one
    host copy each) and leave in one asynchronous copy; the buffer is reallocated only when the
    size changes. Elsewhere the pair is stacked and returned on the host. The caller must finish
    with the device copy (any device-to-host copy of a result does) before the next call, which
    overwrites the buffer.
    """

    def __init__(self, device) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self._buffer: Optional["torch.Tensor"] = None
        self.allocations = 0  # how many pinned buffers were made (one per size)

    def __call__(self, left: np.ndarray, right: np.ndarray):
        """(2, H, W, C) uint8 tensor of the pair on the device."""
        torch = self._torch
        if self.device.type != "cuda":
            return torch.from_numpy(np.stack([left, right]))
        shape = (2,) + tuple(left.shape)
        if self._buffer is None or tuple(self._buffer.shape) != shape:
            self._buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self.allocations += 1
        host = self._buffer.numpy()
        host[0] = left
        host[1] = right
        return self._buffer.to(self.device, non_blocking=True)


class TorchDisparity(_NumpyBackend):
    """The PyTorch network in one :class:`~.fastpath.NetworkRunner` execution mode.

    On CUDA the pair is staged in a pinned host buffer (reused per size), uploaded as uint8 with
    one asynchronous copy, padded and converted on the GPU; one copy brings the disparity back.
    """

    name = "foundation_stereo_torch"

    def __init__(self, model, iters: int = 32, precision: str = "fp32", execution: str = "eager",
                 compile_backend: str = "inductor"):
        import torch

        from .fastpath import NetworkRunner

        self._torch = torch
        self.runner = NetworkRunner(model, iters, precision, execution, compile_backend=compile_backend)
        self.device = self.runner.device
        self.max_disp = float(model.cfg.max_disp)
        self._upload = PinnedUpload(self.device)

    def warmup(self, height: int, width: int) -> None:
        """Compile / capture for camera images of this size (call at node start)."""
        ph, pw = InputPadder(height, width).padded_size
        self.runner.warmup(ph, pw)

    def disparity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        h, w = check_pair(left, right)
        padder = InputPadder(h, w)
        with self._torch.no_grad():
            pair = self._upload(left, right).permute(0, 3, 1, 2).float()  # (2, 3, H, W)
            lp, rp = padder.pad(pair[:1], pair[1:])
            out = padder.unpad(self.runner(lp, rp))  # (1, 1, H, W)
            return out[0, 0].float().cpu().numpy()


PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: Sequence[str], requested: Optional[Sequence[str]] = None) -> List[str]:
    """Execution providers in the order ONNX Runtime should try them.

    ``requested=None``: TensorRT, then CUDA, then CPU, those that ``available`` has. Otherwise
    the requested names in order; ValueError if one of them is not available.
    """
    if requested is None:
        chosen = [p for p in PROVIDER_PREFERENCE if p in available]
        return chosen or list(available)
    missing = [p for p in requested if p not in available]
    if missing:
        raise ValueError(f"ONNX Runtime execution provider(s) {missing} not available; this onnxruntime has "
                         f"{list(available)} (onnxruntime-gpu brings CUDA/TensorRT)")
    if not requested:
        raise ValueError("requested providers list is empty")
    return list(requested)


class OnnxRuntimeDisparity(_NumpyBackend):
    """A network exported by :func:`~.onnx_export.export_onnx`, run through ONNX Runtime.

    Providers: TensorRT (fp16 unless ``trt_fp16=False``; engines cached in ``trt_cache_dir``),
    then CUDA, then CPU, as far as the installed onnxruntime has them, unless ``providers``
    names them. Camera images must pad (to multiples of 32) to the graph's input size.
    """

    name = "foundation_stereo_onnxruntime"

    def __init__(self, path: Union[str, os.PathLike], providers: Optional[Sequence[str]] = None,
                 device_id: int = 0, trt_fp16: bool = True, trt_cache_dir: Optional[str] = None,
                 trt_workspace_bytes: int = 4 << 30, intra_op_threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ValueError("the ONNX Runtime backend needs the 'onnxruntime' package "
                             "(onnxruntime-gpu, or NVIDIA's wheel on Jetson)") from None
        from ..analysis.onnx_export import read_export_metadata

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: ONNX model not found (make one with foundation-stereo-export)")
        chosen = choose_providers(ort.get_available_providers(), providers)
        options: List[Dict[str, object]] = []
        for p in chosen:
            if p == "TensorrtExecutionProvider":
                opt: Dict[str, object] = {"device_id": device_id, "trt_fp16_enable": trt_fp16,
                                          "trt_max_workspace_size": int(trt_workspace_bytes)}
                if trt_cache_dir:
                    opt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir))
                options.append(opt)
            elif p == "CUDAExecutionProvider":
                options.append({"device_id": device_id})
            else:
                options.append({})
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads > 0:
            so.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(path, sess_options=so, providers=chosen, provider_options=options)
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

    def disparity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
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
