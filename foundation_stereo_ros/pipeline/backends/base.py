"""The one interface of a disparity backend, the errors of building one, and what "invalid" means.

A backend turns a rectified RGB pair into the *raw* disparity ``x_left - x_right`` in pixels of
the input resolution (float32, NaN where it has no valid match) and describes its search range,
sub-pixel step and valid window. A network's disparity is invalid where it is negative or where
the match would lie left of the right image (``u - d < 0``): :func:`invalidate`.
"""
from __future__ import annotations

import abc
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import FrameError
from ..geometry import set_nan_where


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

    def compute_batch(self, pairs: Sequence[Tuple[np.ndarray, np.ndarray, bool]]) -> List[np.ndarray]:
        """:meth:`compute` for several ``(left, right, grey)`` pairs of one size (cameras whose
        frames are ready together): each pair's raw disparity, as :meth:`compute` gives it. Here
        one call per pair; a network backend matches them in one batch. :attr:`last_scale`,
        :attr:`last_oom_retries` and :attr:`last_fast` then describe the whole call."""
        check_same_size(pairs)
        return [self.compute(left, right, grey) for left, right, grey in pairs]

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

    def prepare(self, width: int, height: int, batch: int = 1) -> bool:
        """Get ready for camera images of this size before the first frame (compile, capture a
        CUDA graph, build an engine), and for :meth:`compute_batch` calls of ``batch`` pairs.
        Returns whether there was anything to do. Raises :class:`BackendError` when the backend
        cannot run at that size."""
        return False


def check_same_size(pairs: Sequence[Tuple[np.ndarray, np.ndarray, bool]]) -> None:
    """ValueError unless every pair's two images are (H, W, 3) of one size shared by all pairs."""
    shapes = {image.shape for left, right, _ in pairs for image in (left, right)}
    if len(shapes) > 1 or any(len(shape) != 3 or shape[2] != 3 for shape in shapes):
        raise ValueError(f"a batch needs (H, W, 3) pairs of one size; got {sorted(shapes)}")


def invalidate(disparity: np.ndarray) -> np.ndarray:
    """NaN where the disparity is negative or points left of the right image (in place)."""
    if disparity.ndim == 2 and disparity.dtype == np.float32 and disparity.size and disparity.flags.c_contiguous:
        # Two vectorised comparisons (against 0 and the row of column numbers: no image of bounds to
        # read) and one masked copy by OpenCV: numpy's masked assignment is several times slower.
        invalid = np.less(disparity, 0)
        invalid |= np.greater(disparity, _columns(disparity.shape[1]))  # u - d < 0
        return set_nan_where(disparity, invalid.view(np.uint8))
    u = np.arange(disparity.shape[-1], dtype=np.float32)
    return set_nan_where(disparity, (disparity < 0) | (disparity > u))


@lru_cache(maxsize=8)
def _columns(width: int) -> np.ndarray:
    """(width,) float32 column numbers u (read-only, shared)."""
    columns = np.arange(width, dtype=np.float32)
    columns.flags.writeable = False
    return columns


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when the message is empty)."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__
