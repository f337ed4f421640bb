"""FoundationStereo (the PyTorch network) as a disparity backend: scale, execution modes and
out-of-memory fallback.

torch is imported when the backend is built, never when this module is: SGBM users need no torch.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional, Tuple

import numpy as np

from ..config import ProcessorConfig
from ..errors import FrameError, InferenceMemoryError
from .base import BackendError, DisparityBackend, ExecutionModeError, first_line, invalidate
from .resize import infer_at_network_size, infer_at_network_size_on_device


#: Words of the allocator failures that the CUDA libraries report in a RuntimeError's message:
#: the CUDA runtime ("CUDA error: out of memory", cudaErrorMemoryAllocation), cuDNN
#: (CUDNN_STATUS_ALLOC_FAILED; cuDNN 9's CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED),
#: cuBLAS (CUBLAS_STATUS_ALLOC_FAILED, e.g. when creating a handle or its workspace), cuFFT and
#: cuSOLVER (*_ALLOC_FAILED). CUDNN_STATUS_INTERNAL_ERROR is not one: it has other causes.
OUT_OF_MEMORY_MARKERS = ("out of memory", "cudaerrormemoryallocation", "alloc_failed", "allocation_failed")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator failure: ``torch.cuda.OutOfMemoryError`` (torch's
    ``OutOfMemoryError``), or a RuntimeError whose message names one (older PyTorch, cuDNN and
    cuBLAS allocations: :data:`OUT_OF_MEMORY_MARKERS`), also when another error wraps it
    (``raise ... from``, as torch.compile does)."""
    torch = sys.modules.get("torch")  # never imported here: SGBM users need no torch
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if oom_type is not None and isinstance(error, oom_type):
            return True
        if isinstance(error, RuntimeError):
            text = str(error).lower()
            if any(marker in text for marker in OUT_OF_MEMORY_MARKERS):
                return True
        error = error.__cause__
    return False


class ModelLoadError(FrameError, RuntimeError):
    """A checkpoint accepted by a parameter change could not be loaded when the first frame needed
    it (problem ``model_load_failed``); every frame is skipped with this message until the
    parameters change again."""


class _DeferredModel:
    """The network of a checkpoint that replaces a loaded one: checked when the parameter changes
    (:func:`~foundation_stereo_ros.model.checkpoint.check_checkpoint`, no weights loaded),
    loaded by the first frame that needs it. So the loading happens in the worker thread, never
    beside a CUDA-graph capture of the old network, and after the old network has been let go:
    one network in memory at a time, not two."""

    def __init__(self, checkpoint: str, device: str) -> None:
        from ...model.checkpoint import check_checkpoint

        self.checkpoint, self.device = checkpoint, device
        self.cfg = check_checkpoint(checkpoint)  # CheckpointError (a ValueError) now, in the caller's thread
        self._model: Any = None
        self._error: Optional[ModelLoadError] = None

    def get(self) -> Any:
        if self._model is None:
            if self._error is not None:
                raise self._error
            self._model = self._load()
        return self._model

    def _load(self) -> Any:
        import gc

        import torch

        from ...model import load_model

        gc.collect()  # the network this one replaces, if nothing holds it any more
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        try:
            return load_model(self.checkpoint, device=self.device)
        except Exception as e:  # noqa: BLE001 - reported per frame, named
            if is_out_of_memory(e):  # memory may come back: the next frame tries again
                raise InferenceMemoryError("out_of_memory", f"loading {self.checkpoint} on {self.device} ran out of "
                                                            f"memory: {first_line(e)}") from None
            self._error = ModelLoadError("model_load_failed", f"checkpoint {self.checkpoint} could not be loaded: "
                                                              f"{type(e).__name__}: {first_line(e)}")
            raise self._error from None


class FoundationStereoBackend(DisparityBackend):
    """The FoundationStereo network via :func:`foundation_stereo_ros.model.load_model`.

    The network sees the images resized by ``scale`` (area filter when shrinking); its disparity
    is resized back to the camera resolution and multiplied by ``width / network_width``
    (= 1/scale up to rounding). Pixels whose match would lie outside the right image
    (``u - d < 0``) or whose disparity is negative are invalid (NaN).

    Out of memory (another process took the GPU, a larger image than planned): the frame's
    tensors are released, the CUDA cache is emptied and the frame is retried at half the scale,
    then a quarter ..., down to ``oom_min_scale_factor * scale``; below that
    :class:`~foundation_stereo_ros.pipeline.errors.InferenceMemoryError` is raised (the frame is
    skipped). Later frames start at the reduced scale that worked, and every
    ``oom_probe_period_s`` one tries the configured scale again, so the full resolution comes
    back as soon as the memory does. :attr:`last_scale` and
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

    def __init__(self, config: ProcessorConfig, model: Any = None, defer_load: bool = False) -> None:
        """``model``: an already loaded network (else the checkpoint's is loaded); ``defer_load``:
        only check the checkpoint now and load it on the first frame (see :class:`_DeferredModel`)."""
        if model is None and not config.checkpoint:
            raise BackendError("the checkpoint parameter is empty: give the path of a FoundationStereo checkpoint "
                               "(model_best_bp2.pth or its folder, with cfg.yaml beside it), or use backend 'sgbm'")
        import torch  # after the cheap checks: importing torch takes seconds

        if model is None:
            from ...model import load_model

            if config.device.startswith("cuda") and not torch.cuda.is_available():
                raise BackendError(f"device {config.device!r} requested but CUDA is not available to PyTorch; "
                                   f"set device to 'cpu' (slow) or use backend 'sgbm'")
            model = (_DeferredModel(config.checkpoint, config.device) if defer_load
                     else load_model(config.checkpoint, device=config.device))
        self._model = model  # the network, or a _DeferredModel until the first frame loads it
        if isinstance(model, _DeferredModel) and model._model is None:
            self.notes = (f"checkpoint {config.checkpoint} checked; the next frame loads it on {config.device}, after "
                          f"the previous network is released (that frame is slow)",)
        self.source = (config.checkpoint, config.device)  # what the loaded network came from
        self.device = torch.device(config.device)
        self.iters = config.iters
        self.hierarchical = config.hierarchical
        self.precision = config.precision
        self.scale = config.scale
        self.min_scale = config.scale * config.oom_min_scale_factor
        self.probe_period_s = config.oom_probe_period_s
        self.max_disp = float(model.cfg.max_disp)  # a _DeferredModel knows its cfg too
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

    @property
    def model(self) -> Any:
        """The network (loaded here by the first caller when its loading was deferred)."""
        if isinstance(self._model, _DeferredModel):
            return self._model.get()
        return self._model

    @property
    def model_loaded(self) -> bool:
        return not isinstance(self._model, _DeferredModel) or self._model._model is not None

    def _ensure_model(self) -> None:
        """Load a deferred network now: in the worker's thread, before any out-of-memory retry."""
        if isinstance(self._model, _DeferredModel):
            self._model.get()

    def with_options(self, config: ProcessorConfig) -> "FoundationStereoBackend":
        """A backend sharing this one's network (loaded or still deferred), with the per-call
        options of ``config``; also its prepared execution mode when that is unaffected by the change."""
        backend = FoundationStereoBackend(config, model=self._model)
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
            self._ensure_model()
            self._prepare_runner(width, height)
        except Exception as e:  # noqa: BLE001 - compile / capture failures come in many types
            raise BackendError(f"execution {self.execution!r} could not be prepared for {width}x{height} images: "
                               f"{type(e).__name__}: {first_line(e)} (use execution 'eager')") from None
        return True

    def _prepare_runner(self, width: int, height: int) -> None:
        from ...model.padding import InputPadder
        from ...runtime.fastpath import NetworkRunner

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
        self._ensure_model()
        return self._with_memory_fallback(lambda scale: self._infer(left, right, scale))

    def upload(self, left: np.ndarray, right: np.ndarray) -> Any:
        """(2, H, W, 3) uint8 tensor of an (H, W, 3) uint8 pair on the network's device, through
        one reused pinned buffer on CUDA (finish with it before the next call)."""
        if self._upload is None:
            from ...runtime.upload import PinnedUpload

            self._upload = PinnedUpload(self.device)
        return self._upload(left, right)

    def compute_on_device(self, images: Any) -> Any:
        """:meth:`compute` for a (2, 3, H, W) float tensor of the left and right image (0..255) on
        the network's device: the (H, W) float32 raw disparity stays there, NaN where invalid.
        Resizing for ``scale`` happens on the device too (area filter when shrinking, bilinear
        otherwise, as OpenCV does on the host)."""
        if images.ndim != 4 or images.shape[0] != 2 or images.shape[1] != 3:
            raise ValueError(f"images must be (2, 3, H, W), got {tuple(images.shape)}")
        self._ensure_model()
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
            message = first_line(failure)
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
        h, w = left.shape[:2]
        nw, nh = self.network_size(w, h, scale)

        def network(left: np.ndarray, right: np.ndarray) -> np.ndarray:
            with self._torch.no_grad():
                pair = self.upload(left, right).permute(0, 3, 1, 2).float()  # (2, 3, nh, nw)
                return self._network(pair, w, h, scale)[0, 0].float().cpu().numpy()

        disparity = infer_at_network_size(network, left, right, (nw, nh), area=nw < w)
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
        h, w = images.shape[-2:]
        nw, nh = self.network_size(w, h, scale)
        with torch.no_grad():
            disp = infer_at_network_size_on_device(lambda pair: self._network(pair, w, h, scale).float(), images,
                                                   (nw, nh), area=nw < w)  # (1, 1, h, w)
            d = disp[0, 0]
            columns = torch.arange(w, device=d.device, dtype=torch.float32)
            return d.masked_fill((d < 0) | (d > columns), float("nan"))  # match left of the right image

    def _fast_runner(self, width: int, height: int, nw: int, nh: int, scale: float):
        """(runner, padder) when this frame's network size is the prepared one, else None (eager)."""
        if self.execution == "eager" or self.hierarchical or self._fast_error is not None:
            return None
        from ...model.padding import InputPadder

        padder = InputPadder(nh, nw)
        if self._fast_size is None and scale == self.scale:
            try:  # the first frame at the configured scale decides the size
                self._prepare_runner(width, height)
            except Exception as e:  # noqa: BLE001 - compile / capture failures come in many types
                if is_out_of_memory(e):
                    raise  # the caller retries at a lower scale, eager
                self._fast_error = f"{type(e).__name__}: {first_line(e)}"
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

