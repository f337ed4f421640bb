"""Disparity estimators behind one small interface: FoundationStereo (the network) and OpenCV SGBM.

A backend turns a rectified RGB pair into the *raw* disparity ``x_left - x_right`` in pixels of
the input resolution (float32, NaN where it has no valid match) and describes its search range,
sub-pixel step and valid window. The principal-point adjustment and everything after it is done
by :class:`~.processor.StereoProcessor`, identically for every backend.
"""
from __future__ import annotations

import abc
import sys
import time
from typing import Any, Optional, Tuple

import cv2
import numpy as np

from .config import ProcessorConfig
from .errors import InferenceMemoryError, StereoInputError


class BackendError(ValueError):
    """A backend that cannot be built from the configuration (bad checkpoint, missing CUDA ...).

    :class:`foundation_stereo_ros.model.CheckpointError` is raised as is (it is a ValueError too).
    """


class DisparityBackend(abc.ABC):
    """Interface of a disparity estimator (see module doc). Not thread-safe: one caller at a time."""

    name: str = ""
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
    """

    name = "foundation_stereo"

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
        self._torch = torch
        self._columns = np.zeros((1, 0), np.float32)  # u of each column, cached per width
        self._fallback_scale: Optional[float] = None  # the reduced scale in use after an out-of-memory error
        self._last_probe = 0.0  # time.monotonic() of the last attempt at the configured scale
        self.last_scale = None
        self.last_oom_retries = 0

    def with_options(self, config: ProcessorConfig) -> "FoundationStereoBackend":
        """A backend sharing this one's loaded network, with the per-call options of ``config``."""
        backend = FoundationStereoBackend(config, model=self.model)
        backend.source = self.source
        return backend

    def network_size(self, width: int, height: int, scale: Optional[float] = None) -> Tuple[int, int]:
        """(width, height) of the network input for a camera image of this size (at ``scale``,
        default the configured one)."""
        scale = self.scale if scale is None else scale
        return max(int(round(width * scale)), 8), max(int(round(height * scale)), 8)

    def compute(self, left: np.ndarray, right: np.ndarray, grey: bool = False) -> np.ndarray:
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
                disparity = self._infer(left, right, scale)
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
        torch = self._torch
        h, w = left.shape[:2]
        nw, nh = self.network_size(w, h, scale)
        if (nw, nh) != (w, h):
            interp = cv2.INTER_AREA if nw < w else cv2.INTER_LINEAR
            left = cv2.resize(left, (nw, nh), interpolation=interp)
            right = cv2.resize(right, (nw, nh), interpolation=interp)
        pair = torch.from_numpy(np.stack([left, right]))  # (2, h, w, 3) uint8
        if self.device.type == "cuda":
            pair = pair.pin_memory().to(self.device, non_blocking=True)
        pair = pair.permute(0, 3, 1, 2).float()  # (2, 3, h, w)
        disp = self.model.infer(pair[:1], pair[1:], iters=self.iters, hierarchical=self.hierarchical,
                                precision=self.precision)  # (1, 1, h, w)
        disparity = disp[0, 0].float().cpu().numpy()
        if (nw, nh) != (w, h):
            disparity = cv2.resize(disparity, (w, h), interpolation=cv2.INTER_LINEAR)
            disparity *= np.float32(w / nw)
        if self._columns.shape[1] != w:
            self._columns = np.arange(w, dtype=np.float32)[None, :]
        disparity[(disparity < 0) | (disparity > self._columns)] = np.nan  # match left of the right image
        return disparity

    def search_range(self, width: int) -> Tuple[float, float]:
        nw, _ = self.network_size(width, 1, self.last_scale)  # the scale the last frame really used
        return 0.0, self.max_disp * width / nw

    @property
    def delta_d(self) -> float:
        return 0.0


def make_backend(config: ProcessorConfig, previous: Optional[DisparityBackend] = None) -> DisparityBackend:
    """The backend ``config`` asks for; reuses ``previous``'s loaded network when the checkpoint and
    device are unchanged. Raises CheckpointError / BackendError (ValueErrors) when it cannot be built."""
    if config.backend == "sgbm":
        return SGBMBackend(config)
    if isinstance(previous, FoundationStereoBackend) and previous.source == (config.checkpoint, config.device):
        return previous.with_options(config)
    return FoundationStereoBackend(config)
