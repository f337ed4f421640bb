"""The network exported by ``foundation-stereo-export``, run by ONNX Runtime, as a disparity backend;
and the one policy that turns the ``onnx_provider`` and ``device`` parameters into the execution
providers ONNX Runtime tries.

onnxruntime (and, through the runner, torch) is imported when the backend is built, never when
this module is.
"""
from __future__ import annotations

import copy
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..config import ProcessorConfig
from ..errors import FrameError, InferenceMemoryError
from ..consistency import left_right_check
from .base import BackendError, DisparityBackend, first_line, invalidate
from .resize import infer_at_network_size


def default_trt_cache_dir() -> str:
    """``$ROS_HOME/foundation_stereo_trt`` (ROS_HOME defaults to ``~/.ros``)."""
    ros_home = os.environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros")
    return os.path.join(ros_home, "foundation_stereo_trt")


_ONNX_PROVIDER_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                        "cpu": "CPUExecutionProvider"}


def onnx_provider_list(provider: str, device: str, available: Optional[Sequence[str]] = None) -> List[str]:
    """ONNX Runtime providers, in order, for the ``onnx_provider`` and ``device`` parameters.

    'auto' takes TensorRT, then CUDA, then the CPU, as far as ``available`` (default: what the
    installed onnxruntime has) has them ('cpu' only on device 'cpu'). 'tensorrt' and 'cuda' add
    the providers after them in that order as the fallback for nodes they cannot run.
    BackendError when a named provider is not installed.
    """
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    order = [_ONNX_PROVIDER_NAMES[p] for p in ("tensorrt", "cuda", "cpu")]
    if provider == "auto":
        wanted = ["CPUExecutionProvider"] if device == "cpu" else order
        return [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    first = _ONNX_PROVIDER_NAMES[provider]
    if first not in available:
        raise BackendError(f"onnx_provider {provider!r}: this onnxruntime has no {first} (it has "
                           f"{', '.join(available)}); install onnxruntime-gpu (NVIDIA's wheel on Jetson) or set "
                           f"onnx_provider 'auto'")
    return [first] + [p for p in order[order.index(first) + 1:] if p in available]


def _lr_check_note(tolerance: float) -> str:
    return (f"lr_check {tolerance:g} px: the ONNX graph has batch 1, so each frame runs it twice (the pair, then "
            f"the mirrored swapped pair): about twice the network time")


class OnnxBackend(DisparityBackend):
    """The network exported by ``foundation-stereo-export``, run by ONNX Runtime
    (:class:`foundation_stereo_ros.runtime.OnnxRunner`).

    The graph has a fixed input size and GRU iteration count. Camera images that pad to its
    input size run as they are; others are resized to the image size the graph was exported for
    (area filter when shrinking) and the disparity is resized back and multiplied by
    ``width / export_width``, as ``scale`` does for the PyTorch backend. An allocation failure
    in ONNX Runtime raises :class:`~foundation_stereo_ros.pipeline.errors.InferenceMemoryError`
    (the frame is skipped).

    The left-right check (``lr_check`` > 0) runs the graph twice, on the pair and on the mirrored,
    swapped pair (the exported graph has batch 1), then masks as
    :class:`~foundation_stereo_ros.pipeline.backends.FoundationStereoBackend` does; batches
    (:meth:`compute_batch`) run pair by pair.
    """

    name = "onnx"

    def __init__(self, config: ProcessorConfig) -> None:
        if not config.onnx_model:
            raise BackendError("backend 'onnx' needs the onnx_model parameter: the .onnx file made by "
                               "foundation-stereo-export")
        if not os.path.isfile(config.onnx_model):
            raise BackendError(f"onnx_model {config.onnx_model!r}: no such file (make one with "
                               f"foundation-stereo-export --checkpoint ... --height H --width W --output FILE)")
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("backend 'onnx' needs the 'onnxruntime' package (onnxruntime-gpu for CUDA/TensorRT, "
                               "NVIDIA's wheel on Jetson)") from None
        from ...runtime.onnx_runner import OnnxRunner

        available = ort.get_available_providers()
        providers = onnx_provider_list(config.onnx_provider, config.device, available)
        device_id = int(config.device.split(":")[1]) if config.device.startswith("cuda:") else 0
        cache = None
        if "TensorrtExecutionProvider" in providers:
            cache = config.onnx_trt_cache_dir or default_trt_cache_dir()
            try:
                os.makedirs(cache, exist_ok=True)
            except OSError as e:
                raise BackendError(f"onnx_trt_cache_dir {cache!r} cannot be created: {e}") from None
        self.runner = OnnxRunner(config.onnx_model, providers, device_id=device_id,
                                 trt_fp16=config.precision == "fp16", trt_cache_dir=cache)
        meta = self.runner.metadata
        self.input_size = self.runner.input_size  # (H, W) of the graph, multiples of 32
        ih, iw = self.input_size
        self.image_size = (int(meta.get("image_height", ih)), int(meta.get("image_width", iw)))
        self.max_disp = self.runner.max_disp
        self.iters = self.runner.iters
        self.providers = tuple(self.runner.providers)
        notes = [f"ONNX Runtime providers: {', '.join(self.providers)}"
                 + (f" (TensorRT engines cached in {cache})" if cache else "")]
        if config.device != "cpu" and self.providers[0] == "CPUExecutionProvider":
            notes.append(f"device {config.device!r} asked for, but this onnxruntime has no GPU provider "
                         f"({', '.join(available)}): the network runs on the CPU, slowly")
        if config.precision == "fp16" and self.providers[0] == "TensorrtExecutionProvider":
            notes.append("TensorRT fp16 through ONNX Runtime may compute the lookup positions and the disparity in "
                         "fp16 (ONNX Runtime cannot constrain single layers): steps of up to 0.125 px at quarter "
                         "resolution, 0.5 px in the output at 640 px width; use precision fp32 (TensorRT's TF32) or "
                         "the PyTorch backend's fp16, which keep them fp32, where sub-pixel accuracy matters "
                         "(docs/deployment.md)")
        if config.lr_check > 0:
            notes.append(_lr_check_note(config.lr_check))
        if self.iters and self.iters != config.iters:
            notes.append(f"the ONNX model runs {self.iters} GRU iterations (fixed at export); the iters parameter "
                         f"({config.iters}) does not apply")
        self.notes = tuple(notes)
        self.lr_check = config.lr_check
        self.source = config.backend_key()
        self.last_scale = None
        self.last_oom_retries = 0

    def with_options(self, config: ProcessorConfig) -> "OnnxBackend":
        """This backend (its ONNX Runtime session) with the per-call options of ``config``
        (``lr_check``); ``config`` must have this backend's :attr:`source`."""
        if config.backend_key() != self.source:
            raise ValueError("with_options keeps the ONNX session: the model, provider and device must not change")
        if config.lr_check == self.lr_check:
            return self
        backend = copy.copy(self)
        backend.lr_check = config.lr_check
        backend.notes = tuple(n for n in self.notes if n != _lr_check_note(self.lr_check))
        if config.lr_check > 0:
            backend.notes += (_lr_check_note(config.lr_check),)
        return backend

    def prepare(self, width: int, height: int, batch: int = 1) -> bool:
        # The first run builds the TensorRT engine (or loads it from the cache): do it now.
        gen = np.random.default_rng(0)
        left = gen.integers(0, 256, (height, width, 3), dtype=np.uint8)
        try:
            self.compute(left, left.copy())
        except FrameError as e:
            raise BackendError(f"the ONNX model cannot run on {width}x{height} images: {e}") from None
        return True

    def network_size(self, width: int, height: int) -> Tuple[int, int]:
        """(width, height) the camera images are matched at."""
        from ...model.padding import InputPadder

        if InputPadder(height, width).padded_size == self.input_size:
            return width, height
        return self.image_size[1], self.image_size[0]

    def compute(self, left: np.ndarray, right: np.ndarray, grey: bool = False) -> np.ndarray:
        disparity = invalidate(self.network_disparity(left, right))  # negative, or left of the right image
        if self.lr_check > 0:
            # The mirrored, swapped pair's disparity flipped back: the right view's, in its columns.
            mirrored = self.network_disparity(np.ascontiguousarray(right[:, ::-1]),
                                              np.ascontiguousarray(left[:, ::-1]))
            left_right_check(disparity, np.ascontiguousarray(mirrored[:, ::-1]), self.lr_check)
        return disparity

    def network_disparity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """The network's disparity at the camera resolution, camera px, before invalid pixels become NaN."""
        h, w = left.shape[:2]
        nw, nh = self.network_size(w, h)
        disparity = infer_at_network_size(self._run, left, right, (nw, nh), area=nw * nh < w * h)
        self.last_scale = nw / w
        return disparity

    def _run(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        try:
            return self.runner(left, right)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            text = str(e).lower()
            if "allocate" in text or "out of memory" in text:
                raise InferenceMemoryError("out_of_memory", f"ONNX Runtime ran out of memory: {first_line(e)}") from None
            raise

    def search_range(self, width: int) -> Tuple[float, float]:
        if not self.max_disp:  # an export without metadata: anything up to the image width
            return 0.0, float(width - 1)
        return 0.0, self.max_disp / (self.last_scale or 1.0)  # network px -> camera px

    @property
    def delta_d(self) -> float:
        return 0.0
