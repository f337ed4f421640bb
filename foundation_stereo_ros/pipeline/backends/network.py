"""FoundationStereo (the PyTorch network) as a disparity backend: scale, execution modes and
out-of-memory fallback.

torch is imported when the backend is built, never when this module is: SGBM users need no torch.
"""
from __future__ import annotations

import sys
import time
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..config import ProcessorConfig
from ..errors import FrameError, InferenceMemoryError
from ..consistency import left_right_check, left_right_check_torch
from .base import BackendError, DisparityBackend, ExecutionModeError, check_same_size, first_line, invalidate
from .resize import (disparity_to_camera_size, disparity_to_camera_size_on_device, images_to_network_size,
                     images_to_network_size_on_device)


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

    Batches (:meth:`compute_batch`, :meth:`compute_on_device_batch`): N pairs of one size go
    through the network as one batch of N; nothing in the network mixes batch elements (its
    normalisations are per image or frozen), so each pair's disparity equals its single-pair one
    up to summation order. Scale and out-of-memory fallback apply to the whole call.

    Left-right check (``config.lr_check`` > 0, :mod:`~foundation_stereo_ros.pipeline.consistency`):
    the network also matches each pair mirrored and swapped, ``(flip(right), flip(left))``, in
    the same call (batch 2N); that disparity flipped back is the right view's ``d_R`` in right-image
    columns. Both are brought to the camera resolution, and pixels of the left disparity that
    fail the check become NaN, on the host (:meth:`compute`) as on the device
    (:meth:`compute_on_device`). ``d_R`` is used as the network gives it (not invalidated).

    Execution modes (``config.execution``, see :mod:`foundation_stereo_ros.runtime.fastpath`):
    ``eager`` runs :meth:`FoundationStereo.infer`; the others run a
    :class:`~foundation_stereo_ros.runtime.fastpath.NetworkRunner` prepared for one padded
    network input size and one network batch (pairs x 2 with the left-right check), by
    :meth:`prepare` (``warmup_width`` x ``warmup_height``, ``batch`` pairs) or on the first call
    at the configured scale (its size and batch). Calls of any other size or batch (out-of-memory
    fallback, a camera that changed mode, fewer cameras ready) run eager, so they never trigger
    minutes of recompilation mid-stream. On CUDA the images are uploaded through one reused
    pinned buffer.
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
        self.lr_check = config.lr_check
        self._torch = torch
        self._runner: Any = None  # NetworkRunner of a non-eager execution mode, once prepared
        self._fast_size: Optional[Tuple[int, int]] = None  # padded (H, W) the runner is prepared for
        self._fast_batch = 0  # and the network batch (pairs x views_per_pair) it is prepared for
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
            backend._runner, backend._fast_error = self._runner, self._fast_error
            if backend.views_per_pair == self.views_per_pair:
                backend._fast_size, backend._fast_batch = self._fast_size, self._fast_batch
            # else: the network batch changes with the left-right check; the same runner is
            # prepared again for it (by prepare, or the next frame).
        return backend

    def _runner_key(self) -> Tuple:
        return self.execution, self.precision, self.iters, self.warmup_size

    @property
    def views_per_pair(self) -> int:
        """Network batch entries per camera pair: 2 with the left-right check (the mirrored,
        swapped pair too), else 1."""
        return 2 if self.lr_check > 0 else 1

    @property
    def prepared_size(self) -> Optional[Tuple[int, int]]:
        """Padded network input (H, W) the execution mode is prepared for (None: not yet, or eager)."""
        return self._fast_size

    @property
    def prepared_batch(self) -> Optional[int]:
        """How many pairs per call the execution mode is prepared for (None: not yet, or eager)."""
        return self._fast_batch // self.views_per_pair if self._fast_size is not None else None

    def prepare(self, width: int, height: int, batch: int = 1) -> bool:
        if batch < 1:
            raise ValueError(f"batch must be >= 1 pair, got {batch}")
        if self.execution == "eager" or self.hierarchical:
            return False
        try:
            self._ensure_model()
            self._prepare_runner(width, height, batch * self.views_per_pair)
        except Exception as e:  # noqa: BLE001 - compile / capture failures come in many types
            raise BackendError(f"execution {self.execution!r} could not be prepared for {width}x{height} images"
                               f"{f' (batches of {batch})' if batch > 1 else ''}: {type(e).__name__}: "
                               f"{first_line(e)} (use execution 'eager')") from None
        return True

    def _prepare_runner(self, width: int, height: int, network_batch: int) -> None:
        from ...model.padding import InputPadder
        from ...runtime.fastpath import NetworkRunner

        nw, nh = self.network_size(width, height)
        size = InputPadder(nh, nw).padded_size
        if self._runner is None:
            self._runner = NetworkRunner(self.model, self.iters, self.precision, self.execution,
                                         compile_backend=self.compile_backend)
        self._runner.warmup(*size, batch=network_batch)
        self._fast_size, self._fast_batch = size, network_batch

    def network_size(self, width: int, height: int, scale: Optional[float] = None) -> Tuple[int, int]:
        """(width, height) of the network input for a camera image of this size (at ``scale``,
        default the configured one)."""
        scale = self.scale if scale is None else scale
        return max(int(round(width * scale)), 8), max(int(round(height * scale)), 8)

    def compute(self, left: np.ndarray, right: np.ndarray, grey: bool = False) -> np.ndarray:
        return self.compute_batch([(left, right, grey)])[0]

    def compute_batch(self, pairs: Sequence[Tuple[np.ndarray, np.ndarray, bool]]) -> List[np.ndarray]:
        """:meth:`compute` for N pairs of one size in one network call (batch N, 2N with the
        left-right check); see :meth:`DisparityBackend.compute_batch`."""
        if not pairs:
            return []
        check_same_size(pairs)
        self._ensure_model()
        return self._with_memory_fallback(lambda scale: self._infer(pairs, scale))

    def upload(self, *images: np.ndarray) -> Any:
        """(K, H, W, 3) uint8 tensor of K (H, W, 3) uint8 images (a pair: K = 2) on the network's
        device, through one reused pinned buffer on CUDA (finish with it before the next call)."""
        if self._upload is None:
            from ...runtime.upload import PinnedUpload

            self._upload = PinnedUpload(self.device)
        return self._upload(*images)

    def compute_on_device(self, images: Any) -> Any:
        """:meth:`compute` for a (2, 3, H, W) float tensor of the left and right image (0..255) on
        the network's device: the (H, W) float32 raw disparity stays there, NaN where invalid.
        Resizing for ``scale`` happens on the device too (area filter when shrinking, bilinear
        otherwise, as OpenCV does on the host)."""
        if images.ndim != 4 or images.shape[0] != 2 or images.shape[1] != 3:
            raise ValueError(f"images must be (2, 3, H, W), got {tuple(images.shape)}")
        return self.compute_on_device_batch(images[None])[0]

    def compute_on_device_batch(self, images: Any) -> Any:
        """:meth:`compute_on_device` for N pairs in one network call: (N, 2, 3, H, W) float
        (0..255, left then right) on the network's device -> (N, H, W) float32 raw disparity
        there, NaN where invalid."""
        if images.ndim != 5 or images.shape[1] != 2 or images.shape[2] != 3 or images.shape[0] < 1:
            raise ValueError(f"images must be (N, 2, 3, H, W) with N >= 1, got {tuple(images.shape)}")
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

    def _infer(self, pairs: Sequence[Tuple[np.ndarray, np.ndarray, bool]], scale: float) -> List[np.ndarray]:
        h, w = pairs[0][0].shape[:2]
        nw, nh = self.network_size(w, h, scale)
        images = images_to_network_size([image for left, right, _ in pairs for image in (left, right)], (nw, nh),
                                        area=nw < w)
        with self._torch.no_grad():
            # uint8 until the network, which converts on its device (the model's infer; the runner below)
            flat = self.upload(*images).permute(0, 3, 1, 2)  # (2N, 3, nh, nw): L1, R1, L2, R2 ...
            d_left, d_right = self._match(flat, w, h, scale)
            d_left = d_left[:, 0].cpu().numpy()  # (N, nh, nw)
            d_right = None if d_right is None else d_right[:, 0].cpu().numpy()
        out = []
        for i in range(len(pairs)):
            disparity = invalidate(disparity_to_camera_size(d_left[i], (w, h)))  # negative, or left of the image
            if d_right is not None:
                left_right_check(disparity, disparity_to_camera_size(d_right[i], (w, h)), self.lr_check)
            out.append(disparity)
        return out

    def _match(self, flat: Any, width: int, height: int, scale: float) -> Tuple[Any, Optional[Any]]:
        """The network on (2N, 3, h, w) images at network size, pairs interleaved (left, right,
        left, right ...): the (N, 1, h, w) float32 left disparity, and with the left-right check
        the right view's (N, 1, h, w), in right-image columns; one network call either way."""
        left, right = flat[0::2], flat[1::2]  # (N, 3, h, w) each
        n = left.shape[0]
        if self.lr_check > 0:
            # The mirrored, swapped pair: flip(right) is a left image whose matches lie in
            # flip(left), so its disparity, flipped back, is the right view's.
            left, right = (self._torch.cat([left, right.flip(-1)]),
                           self._torch.cat([right, left.flip(-1)]))  # (2N, 3, h, w)
        disparity = self._network(left, right, width, height, scale).float()  # (N or 2N, 1, h, w)
        if self.lr_check > 0:
            return disparity[:n], disparity[n:].flip(-1)
        return disparity, None

    def _network(self, left: Any, right: Any, width: int, height: int, scale: float) -> Any:
        """(B, 1, h, w) disparity of (B, 3, h, w) left and right images at network size, for
        camera images of ``width`` x ``height`` matched at ``scale``: the prepared execution mode
        when the size and batch are the prepared ones, eager otherwise."""
        nh, nw = left.shape[-2:]
        runner = self._fast_runner(width, height, nw, nh, scale, left.shape[0])
        if self.execution != "eager" and not self.hierarchical:
            self.last_fast = runner is not None
        if runner is not None:
            padder = runner[1]
            lp, rp = padder.pad(left.float(), right.float())
            return padder.unpad(runner[0](lp, rp))
        return self.model.infer(left, right, iters=self.iters, hierarchical=self.hierarchical,
                                precision=self.precision)

    def _infer_tensor(self, images: Any, scale: float) -> Any:
        torch = self._torch
        n, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        nw, nh = self.network_size(w, h, scale)
        with torch.no_grad():
            flat = images_to_network_size_on_device(images.reshape(2 * n, 3, h, w), (nw, nh), area=nw < w)
            d_left, d_right = self._match(flat, w, h, scale)
            d = disparity_to_camera_size_on_device(d_left, (w, h))[:, 0]  # (N, H, W)
            columns = torch.arange(w, device=d.device, dtype=torch.float32)
            d = d.masked_fill((d < 0) | (d > columns), float("nan"))  # match left of the right image
            if d_right is not None:
                d = left_right_check_torch(d, disparity_to_camera_size_on_device(d_right, (w, h))[:, 0],
                                           self.lr_check)
            return d

    def _fast_runner(self, width: int, height: int, nw: int, nh: int, scale: float, batch: int):
        """(runner, padder) when this call's network size and batch are the prepared ones, else
        None (eager)."""
        if self.execution == "eager" or self.hierarchical or self._fast_error is not None:
            return None
        from ...model.padding import InputPadder

        padder = InputPadder(nh, nw)
        if self._fast_size is None and scale == self.scale:
            try:  # the first call at the configured scale decides the size and the batch
                self._prepare_runner(width, height, batch)
            except Exception as e:  # noqa: BLE001 - compile / capture failures come in many types
                if is_out_of_memory(e):
                    raise  # the caller retries at a lower scale, eager
                self._fast_error = f"{type(e).__name__}: {first_line(e)}"
                raise ExecutionModeError("execution_failed", f"execution {self.execution!r} could not be prepared "
                                                             f"for {width}x{height} images ({self._fast_error}); "
                                                             f"this frame is skipped and later frames run eager") from None
        if padder.padded_size != self._fast_size or batch != self._fast_batch:
            return None
        return self._runner, padder

    def search_range(self, width: int) -> Tuple[float, float]:
        nw, _ = self.network_size(width, 1, self.last_scale)  # the scale the last frame really used
        return 0.0, self.max_disp * width / nw

    @property
    def delta_d(self) -> float:
        return 0.0

