"""Disparity estimators behind one small interface: FoundationStereo (the network) and OpenCV SGBM.

A backend turns a rectified RGB pair into the *raw* disparity ``x_left - x_right`` in pixels of
the input resolution (float32, NaN where it has no valid match) and describes its search range,
sub-pixel step and valid window. The principal-point adjustment and everything after it is done
by :class:`~.processor.StereoProcessor`, identically for every backend.
"""
from __future__ import annotations

import abc
import os
import sys
import time
from typing import Any, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .config import ProcessorConfig
from .errors import FrameError, InferenceMemoryError, StereoInputError


class BackendError(ValueError):
    """A backend that cannot be built from the configuration (bad checkpoint, missing CUDA ...).

    :class:`foundation_stereo_ros.model.CheckpointError` is raised as is (it is a ValueError too).
    """


class ExecutionModeError(FrameError, RuntimeError):
    """The configured execution mode could not be prepared for the first frame's size.

    Problem: ``execution_failed``. That frame is skipped and later frames run eager; the error
    says why (a compiler missing for torch.compile, CUDA-graph capture refused ...).
    """


class DisparityBackend(abc.ABC):
    """Interface of a disparity estimator (see module doc). Not thread-safe: one caller at a time."""

    name: str = ""
    #: Whether the last :meth:`compute` ran the prepared fast execution mode (None: the backend has
    #: none configured). False means it fell back to eager for that frame (another input size).
    last_fast: Optional[bool] = None
    #: Things the user should know about this backend, logged once when it is built (for
    #: example the ONNX providers chosen, or a parameter that does not apply).
    notes: Tuple[str, ...] = ()
    #: Resolution relative to the camera image at which the last :meth:`compute` matched (None: the
    #: backend has no notion of scale), and how many out-of-memory retries that call needed.
    last_scale: Optional[float] = None
    last_oom_retries: int = 0

    @abc.abstractmethod
    def compute(self, left: np.ndarray, right: np.ndarray, grey: bool = False) -> np.ndarray:
        """Raw disparity (H, W) float32, NaN where invalid, for rectified (H, W, 3) RGB uint8 images."""

    @abc.abstractmethod
    def search_range(self, width: int) -> Tuple[float, float]:
        """(smallest, largest) raw disparity that the estimator can report, px."""

    @property
    @abc.abstractmethod
    def delta_d(self) -> float:
        """Smallest disparity increment, px (0: continuous output)."""

    def valid_window(self, width: int, height: int) -> Tuple[int, int, int, int]:
        """(x, y, width, height) of the region where valid disparities can occur."""
        return 0, 0, width, height

    def prepare(self, width: int, height: int) -> bool:
        """Get ready for camera images of this size before the first frame (compile, capture a
        CUDA graph, build an engine). Returns whether there was anything to do. Raises
        :class:`BackendError` when the backend cannot run at that size."""
        return False


_SGBM_MODES = {"sgbm": cv2.STEREO_SGBM_MODE_SGBM, "hh": cv2.STEREO_SGBM_MODE_HH,
               "sgbm_3way": cv2.STEREO_SGBM_MODE_SGBM_3WAY, "hh4": cv2.STEREO_SGBM_MODE_HH4}


class SGBMBackend(DisparityBackend):
    """OpenCV semi-global block matching on the grey images (CPU), 1/16 px steps.

    Invalid output (no unique match, failed left-right check, speckles, the left border where
    the search range leaves the right image) becomes NaN.
    """

    name = "sgbm"

    def __init__(self, config: ProcessorConfig) -> None:
        bs = config.sgbm_block_size
        # OpenCV's recommended smoothness penalties for one channel.
        p1 = config.sgbm_p1 or 8 * bs * bs
        p2 = config.sgbm_p2 or 32 * bs * bs
        self.min_disparity = config.sgbm_min_disparity
        self.num_disparities = config.sgbm_num_disparities
        self.block_size = bs
        self._matcher = cv2.StereoSGBM_create(
            minDisparity=self.min_disparity, numDisparities=self.num_disparities, blockSize=bs, P1=p1, P2=p2,
            disp12MaxDiff=config.sgbm_disp12_max_diff, preFilterCap=config.sgbm_pre_filter_cap,
            uniquenessRatio=config.sgbm_uniqueness_ratio, speckleWindowSize=config.sgbm_speckle_window_size,
            speckleRange=config.sgbm_speckle_range, mode=_SGBM_MODES[config.sgbm_mode])

    def compute(self, left: np.ndarray, right: np.ndarray, grey: bool = False) -> np.ndarray:
        if left.shape[1] <= self.num_disparities + self.block_size:
            raise StereoInputError("image_too_small", f"image width {left.shape[1]} must exceed "
                                                      f"sgbm_num_disparities + sgbm_block_size "
                                                      f"({self.num_disparities + self.block_size})")
        if grey:  # the three channels are equal: any one is the grey image
            gl, gr = np.ascontiguousarray(left[..., 0]), np.ascontiguousarray(right[..., 0])
        else:
            gl, gr = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY), cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)
        fixed = self._matcher.compute(gl, gr)  # (H, W) int16, 1/16 px, (min-1)*16 where invalid
        disparity = fixed.astype(np.float32)
        disparity *= np.float32(1.0 / 16.0)
        disparity[fixed < self.min_disparity * 16] = np.nan
        return disparity

    def search_range(self, width: int) -> Tuple[float, float]:
        return float(self.min_disparity), float(self.min_disparity + self.num_disparities - 1)

    @property
    def delta_d(self) -> float:
        return 1.0 / 16.0

    def valid_window(self, width: int, height: int) -> Tuple[int, int, int, int]:
        roi = (0, 0, width, height)
        x, y, w, h = cv2.getValidDisparityROI(roi, roi, self.min_disparity, self.num_disparities, self.block_size)
        return int(x), int(y), max(int(w), 0), max(int(h), 0)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator failure: ``torch.cuda.OutOfMemoryError`` (torch's
    ``OutOfMemoryError``) or a RuntimeError whose message says "out of memory" (older PyTorch,
    cuDNN/cuBLAS workspace allocations)."""
    torch = sys.modules.get("torch")  # never imported here: SGBM users need no torch
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


class FoundationStereoBackend(DisparityBackend):
    """The FoundationStereo network via :func:`foundation_stereo_ros.model.load_model`.

    The network sees the images resized by ``scale`` (area filter when shrinking); its disparity
    is resized back to the camera resolution and multiplied by ``width / network_width``
    (= 1/scale up to rounding). Pixels whose match would lie outside the right image
    (``u - d < 0``) or whose disparity is negative are invalid (NaN).

    Out of memory (another process took the GPU, a larger image than planned): the frame's
    tensors are released, the CUDA cache is emptied and the frame is retried at half the scale,
    then a quarter ..., down to ``oom_min_scale_factor * scale``; below that
    :class:`~.errors.InferenceMemoryError` is raised (the frame is skipped). Later frames start at
    the reduced scale that worked, and every ``oom_probe_period_s`` one tries the configured scale
    again, so the full resolution comes back as soon as the memory does. :attr:`last_scale` and
    :attr:`last_oom_retries` tell the caller what happened to the last frame.

    Execution modes (``config.execution``, see :mod:`foundation_stereo_ros.runtime.fastpath`):
    ``eager`` runs :meth:`FoundationStereo.infer`; the others run a
    :class:`~foundation_stereo_ros.runtime.fastpath.NetworkRunner` prepared for one padded
    network input size, by :meth:`prepare` (``warmup_width`` x ``warmup_height``) or on the first
    frame at the configured scale. Frames of any other size (out-of-memory fallback, a camera
    that changed mode) run eager, so they never trigger minutes of recompilation mid-stream.
    On CUDA the pair is uploaded through one reused pinned buffer.
    """

    name = "foundation_stereo"
    #: torch.compile backend of the compiled execution modes.
    compile_backend = "inductor"

    def __init__(self, config: ProcessorConfig, model: Any = None) -> None:
        if model is None and not config.checkpoint:
            raise BackendError("the checkpoint parameter is empty: give the path of a FoundationStereo checkpoint "
                               "(model_best_bp2.pth or its folder, with cfg.yaml beside it), or use backend 'sgbm'")
        import torch  # after the cheap checks: importing torch takes seconds

        if model is None:
            from ..model import load_model

            if config.device.startswith("cuda") and not torch.cuda.is_available():
                raise BackendError(f"device {config.device!r} requested but CUDA is not available to PyTorch; "
                                   f"set device to 'cpu' (slow) or use backend 'sgbm'")
            model = load_model(config.checkpoint, device=config.device)
        self.model = model
        self.source = (config.checkpoint, config.device)  # what the loaded network came from
        self.device = torch.device(config.device)
        self.iters = config.iters
        self.hierarchical = config.hierarchical
        self.precision = config.precision
        self.scale = config.scale
        self.min_scale = config.scale * config.oom_min_scale_factor
        self.probe_period_s = config.oom_probe_period_s
        self.max_disp = float(model.cfg.max_disp)
        self.execution = config.execution
        self.warmup_size = (config.warmup_width, config.warmup_height) if config.warmup_width else None
        self._torch = torch
        self._runner: Any = None  # NetworkRunner of a non-eager execution mode, once prepared
        self._fast_size: Optional[Tuple[int, int]] = None  # padded (H, W) the runner is prepared for
        self._fast_error: Optional[str] = None  # why preparing the runner failed (then: eager)
        self._upload: Any = None  # runtime.PinnedUpload, made on first use
        self._fallback_scale: Optional[float] = None  # the reduced scale in use after an out-of-memory error
        self._last_probe = 0.0  # time.monotonic() of the last attempt at the configured scale
        self.last_scale = None
        self.last_oom_retries = 0

    def with_options(self, config: ProcessorConfig) -> "FoundationStereoBackend":
        """A backend sharing this one's loaded network, with the per-call options of ``config``;
        also its prepared execution mode when that is unaffected by the change."""
        backend = FoundationStereoBackend(config, model=self.model)
        backend.source = self.source
        backend._upload = self._upload
        if backend._runner_key() == self._runner_key() and backend.scale == self.scale:
            backend._runner, backend._fast_size, backend._fast_error = self._runner, self._fast_size, self._fast_error
        return backend

    def _runner_key(self) -> Tuple:
        return self.execution, self.precision, self.iters, self.warmup_size

    @property
    def prepared_size(self) -> Optional[Tuple[int, int]]:
        """Padded network input (H, W) the execution mode is prepared for (None: not yet, or eager)."""
        return self._fast_size

    def prepare(self, width: int, height: int) -> bool:
        if self.execution == "eager" or self.hierarchical:
            return False
        try:
            self._prepare_runner(width, height)
        except Exception as e:  # noqa: BLE001 - compile / capture failures come in many types
            raise BackendError(f"execution {self.execution!r} could not be prepared for {width}x{height} images: "
                               f"{type(e).__name__}: {_first_line(e)} (use execution 'eager')") from None
        return True

    def _prepare_runner(self, width: int, height: int) -> None:
        from ..model.padding import InputPadder
        from ..runtime.fastpath import NetworkRunner

        nw, nh = self.network_size(width, height)
        size = InputPadder(nh, nw).padded_size
        if self._runner is None:
            self._runner = NetworkRunner(self.model, self.iters, self.precision, self.execution,
                                         compile_backend=self.compile_backend)
        self._runner.warmup(*size)
        self._fast_size = size

    def network_size(self, width: int, height: int, scale: Optional[float] = None) -> Tuple[int, int]:
        """(width, height) of the network input for a camera image of this size (at ``scale``,
        default the configured one)."""
        scale = self.scale if scale is None else scale
        return max(int(round(width * scale)), 8), max(int(round(height * scale)), 8)

    def compute(self, left: np.ndarray, right: np.ndarray, grey: bool = False) -> np.ndarray:
        return self._with_memory_fallback(lambda scale: self._infer(left, right, scale))

    def upload(self, left: np.ndarray, right: np.ndarray) -> Any:
        """(2, H, W, 3) uint8 tensor of an (H, W, 3) uint8 pair on the network's device, through
        one reused pinned buffer on CUDA (finish with it before the next call)."""
        if self._upload is None:
            from ..runtime.backends import PinnedUpload

            self._upload = PinnedUpload(self.device)
        return self._upload(left, right)

    def compute_on_device(self, images: Any) -> Any:
        """:meth:`compute` for a (2, 3, H, W) float tensor of the left and right image (0..255) on
        the network's device: the (H, W) float32 raw disparity stays there, NaN where invalid.
        Resizing for ``scale`` happens on the device too (area filter when shrinking, bilinear
        otherwise, as OpenCV does on the host)."""
        if images.ndim != 4 or images.shape[0] != 2 or images.shape[1] != 3:
            raise ValueError(f"images must be (2, 3, H, W), got {tuple(images.shape)}")
        return self._with_memory_fallback(lambda scale: self._infer_tensor(images, scale))

    def _with_memory_fallback(self, attempt: Any) -> Any:
        """``attempt(scale)`` at the configured (or fallback) scale, halving it on out-of-memory errors."""
        now = time.monotonic()
        start = self.scale
        if self._fallback_scale is not None and now - self._last_probe < self.probe_period_s:
            start = self._fallback_scale
        if start == self.scale:
            self._last_probe = now
        scale, retries = start, 0
        while True:
            failure: Optional[BaseException] = None
            try:
                disparity = attempt(scale)
            except Exception as e:  # noqa: BLE001 - anything but an allocator failure is re-raised
                if not is_out_of_memory(e):
                    raise
                failure = e
            if failure is None:
                break
            # Outside the except block, so the traceback no longer pins the frame's tensors.
            message = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
            del failure
            self._free_memory()
            retries += 1
            self.last_oom_retries = retries
            if scale / 2.0 < self.min_scale * (1.0 - 1e-9):
                self._fallback_scale = None  # nothing worked: the next frame starts from the top again
                self.last_scale = None
                raise InferenceMemoryError(
                    "out_of_memory", f"out of memory at every network scale from {start:g} down to {scale:g} "
                                     f"(oom_min_scale_factor {self.min_scale / self.scale:g}): {message}")
            scale /= 2.0
        self._fallback_scale = scale if scale < self.scale else None
        self.last_scale = scale
        self.last_oom_retries = retries
        return disparity

    def _free_memory(self) -> None:
        # The failed attempt's tensors are already unreferenced; hand their cached blocks back to
        # the driver so the retry (and other processes on the GPU) can use them.
        if self._torch.cuda.is_initialized():
            self._torch.cuda.empty_cache()

    def _infer(self, left: np.ndarray, right: np.ndarray, scale: float) -> np.ndarray:
        from ..runtime.backends import invalidate

        torch = self._torch
        h, w = left.shape[:2]
        nw, nh = self.network_size(w, h, scale)
        if (nw, nh) != (w, h):
            interp = cv2.INTER_AREA if nw < w else cv2.INTER_LINEAR
            left = cv2.resize(left, (nw, nh), interpolation=interp)
            right = cv2.resize(right, (nw, nh), interpolation=interp)
        with torch.no_grad():
            pair = self.upload(left, right).permute(0, 3, 1, 2).float()  # (2, 3, h, w)
            disparity = self._network(pair, w, h, scale)[0, 0].float().cpu().numpy()
        if (nw, nh) != (w, h):
            disparity = cv2.resize(disparity, (w, h), interpolation=cv2.INTER_LINEAR)
            disparity *= np.float32(w / nw)
        return invalidate(disparity)  # negative, or a match left of the right image

    def _network(self, pair: Any, width: int, height: int, scale: float) -> Any:
        """(1, 1, h, w) disparity of a (2, 3, h, w) pair at network size, for camera images of
        ``width`` x ``height`` matched at ``scale``: the prepared execution mode when the size is
        the prepared one, eager otherwise."""
        nh, nw = pair.shape[-2:]
        runner = self._fast_runner(width, height, nw, nh, scale)
        if self.execution != "eager" and not self.hierarchical:
            self.last_fast = runner is not None
        if runner is not None:
            padder = runner[1]
            lp, rp = padder.pad(pair[:1], pair[1:])
            return padder.unpad(runner[0](lp, rp))
        return self.model.infer(pair[:1], pair[1:], iters=self.iters, hierarchical=self.hierarchical,
                                precision=self.precision)

    def _infer_tensor(self, images: Any, scale: float) -> Any:
        torch = self._torch
        import torch.nn.functional as F

        h, w = images.shape[-2:]
        nw, nh = self.network_size(w, h, scale)
        with torch.no_grad():
            pair = images
            if (nw, nh) != (w, h):
                if nw < w:
                    pair = F.interpolate(images, size=(nh, nw), mode="area")
                else:
                    pair = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False)
            disp = self._network(pair, w, h, scale).float()  # (1, 1, nh, nw)
            if (nw, nh) != (w, h):
                disp = F.interpolate(disp, size=(h, w), mode="bilinear", align_corners=False) * (w / nw)
            d = disp[0, 0]
            columns = torch.arange(w, device=d.device, dtype=torch.float32)
            return d.masked_fill((d < 0) | (d > columns), float("nan"))  # match left of the right image

    def _fast_runner(self, width: int, height: int, nw: int, nh: int, scale: float):
        """(runner, padder) when this frame's network size is the prepared one, else None (eager)."""
        if self.execution == "eager" or self.hierarchical or self._fast_error is not None:
            return None
        from ..model.padding import InputPadder

        padder = InputPadder(nh, nw)
        if self._fast_size is None and scale == self.scale:
            try:  # the first frame at the configured scale decides the size
                self._prepare_runner(width, height)
            except Exception as e:  # noqa: BLE001 - compile / capture failures come in many types
                if is_out_of_memory(e):
                    raise  # the caller retries at a lower scale, eager
                self._fast_error = f"{type(e).__name__}: {_first_line(e)}"
                raise ExecutionModeError("execution_failed", f"execution {self.execution!r} could not be prepared "
                                                             f"for {width}x{height} images ({self._fast_error}); "
                                                             f"this frame is skipped and later frames run eager") from None
        if padder.padded_size != self._fast_size:
            return None
        return self._runner, padder

    def search_range(self, width: int) -> Tuple[float, float]:
        nw, _ = self.network_size(width, 1, self.last_scale)  # the scale the last frame really used
        return 0.0, self.max_disp * width / nw

    @property
    def delta_d(self) -> float:
        return 0.0


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def default_trt_cache_dir() -> str:
    """``$ROS_HOME/foundation_stereo_trt`` (ROS_HOME defaults to ``~/.ros``)."""
    ros_home = os.environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros")
    return os.path.join(ros_home, "foundation_stereo_trt")


_ONNX_PROVIDER_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                        "cpu": "CPUExecutionProvider"}


def onnx_provider_list(provider: str, device: str, available: Sequence[str]) -> List[str]:
    """ONNX Runtime providers, in order, for the ``onnx_provider`` and ``device`` parameters.

    'auto' takes TensorRT, then CUDA, then the CPU, as far as ``available`` has them ('cpu' only
    on device 'cpu'). 'tensorrt' and 'cuda' add the providers after them in that order as the
    fallback for nodes they cannot run. ValueError when a named provider is not installed.
    """
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


class OnnxBackend(DisparityBackend):
    """The network exported by ``foundation-stereo-export``, run by ONNX Runtime
    (:class:`foundation_stereo_ros.runtime.OnnxRuntimeDisparity`).

    The graph has a fixed input size and GRU iteration count. Camera images that pad to its
    input size run as they are; others are resized to the image size the graph was exported for
    (area filter when shrinking) and the disparity is resized back and multiplied by
    ``width / export_width``, as ``scale`` does for the PyTorch backend. An allocation failure
    in ONNX Runtime raises :class:`~.errors.InferenceMemoryError` (the frame is skipped).
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
        from ..runtime.backends import OnnxRuntimeDisparity

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
        self.runner = OnnxRuntimeDisparity(config.onnx_model, providers=providers, device_id=device_id,
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
        if self.iters and self.iters != config.iters:
            notes.append(f"the ONNX model runs {self.iters} GRU iterations (fixed at export); the iters parameter "
                         f"({config.iters}) does not apply")
        self.notes = tuple(notes)
        self.source = config.backend_key()
        self.last_scale = None
        self.last_oom_retries = 0

    def prepare(self, width: int, height: int) -> bool:
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
        from ..model.padding import InputPadder

        if InputPadder(height, width).padded_size == self.input_size:
            return width, height
        return self.image_size[1], self.image_size[0]

    def compute(self, left: np.ndarray, right: np.ndarray, grey: bool = False) -> np.ndarray:
        from ..runtime.backends import invalidate

        return invalidate(self.network_disparity(left, right))  # negative, or left of the right image

    def network_disparity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """The network's disparity at the camera resolution, camera px, before invalid pixels become NaN."""
        h, w = left.shape[:2]
        nw, nh = self.network_size(w, h)
        if (nw, nh) != (w, h):
            interp = cv2.INTER_AREA if nw * nh < w * h else cv2.INTER_LINEAR
            left = cv2.resize(left, (nw, nh), interpolation=interp)
            right = cv2.resize(right, (nw, nh), interpolation=interp)
        try:
            disparity = self.runner.disparity(left, right)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            text = str(e).lower()
            if "allocate" in text or "out of memory" in text:
                raise InferenceMemoryError("out_of_memory", f"ONNX Runtime ran out of memory: {_first_line(e)}") from None
            raise
        if (nw, nh) != (w, h):
            disparity = cv2.resize(disparity, (w, h), interpolation=cv2.INTER_LINEAR)
            disparity *= np.float32(w / nw)
        self.last_scale = nw / w
        return disparity

    def search_range(self, width: int) -> Tuple[float, float]:
        if not self.max_disp:  # an export without metadata: anything up to the image width
            return 0.0, float(width - 1)
        return 0.0, self.max_disp / (self.last_scale or 1.0)  # network px -> camera px

    @property
    def delta_d(self) -> float:
        return 0.0


def make_backend(config: ProcessorConfig, previous: Optional[DisparityBackend] = None) -> DisparityBackend:
    """The backend ``config`` asks for; reuses ``previous``'s loaded network when the checkpoint and
    device are unchanged. Raises CheckpointError / BackendError (ValueErrors) when it cannot be built."""
    if config.backend == "sgbm":
        return SGBMBackend(config)
    if config.backend == "onnx":
        if isinstance(previous, OnnxBackend) and previous.source == config.backend_key():
            return previous
        return OnnxBackend(config)
    if isinstance(previous, FoundationStereoBackend) and previous.source == (config.checkpoint, config.device):
        return previous.with_options(config)
    return FoundationStereoBackend(config)
