"""What :class:`~foundation_stereo_ros.pipeline.processor.StereoProcessor` takes and gives: the
outputs to compute, one frame's result, and the items of a batch."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from .calibration import CameraModel, StereoCalibration
from .errors import CalibrationError, FrameError
from .image import DecodedPair


@dataclass(frozen=True)
class Outputs:
    """Which optional products to compute (the node asks only for those with subscribers)."""

    depth: bool = True
    points: bool = True
    disparity_color: bool = False
    #: ``left_rect`` / ``right_rect`` on the host. Only the network-device path can leave them out
    #: (``None``), saving the copy of the rectified pair back from the GPU; elsewhere they exist anyway.
    rectified_images: bool = True
    #: A calibration that can match but has no baseline (right P[0,3] = 0, problem ``zero_baseline``)
    #: still gives the disparity (``t`` 0); depth and points are left out and the result's
    #: ``depth_problem`` says why. False: such a frame raises ``zero_baseline``, as any unusable one.
    disparity_without_baseline: bool = False


ALL_OUTPUTS = Outputs(depth=True, points=True, disparity_color=True)


def lap(timings: Dict[str, float], stage: str, since: float) -> float:
    """``timings[stage]`` := seconds since ``since`` (a ``time.perf_counter()``); returns now."""
    now = time.perf_counter()
    timings[stage] = now - since
    return now


@dataclass
class StereoResult:
    """Everything published for one pair. Arrays are new, owned by the result.

    ``disparity`` follows stereo_msgs/DisparityImage: pre-adjusted for the principal-point
    difference (``d = x_l - x_r - delta_cx``) so that ``depth = f * t / disparity``; NaN where
    invalid (the ROS conversion writes ``min_disparity - 1`` there, as stereo_image_proc does).
    """

    disparity: np.ndarray  # (H, W) float32, published convention, NaN invalid
    #: (H, W, 3) uint8 RGB: the left image that was matched (rectified if rectified); None only when
    #: the geometry ran on the network's device and ``Outputs.rectified_images`` was False.
    left_rect: Optional[np.ndarray]
    right_rect: Optional[np.ndarray]  # (H, W, 3) uint8 RGB, None like left_rect
    grey: bool  # the camera gave grey images (left_rect's channels are equal)
    rectified: bool  # whether the images were remapped
    camera: CameraModel  # rectified left camera: CameraInfo of depth, disparity and left_rect
    right_camera: CameraModel  # rectified right camera (P with its -fx * baseline): CameraInfo of right_rect
    f: float  # DisparityImage.f: focal length, px (right P)
    t: float  # DisparityImage.t: baseline (right P), metres; 0 when the calibration has none (depth_problem)
    delta_cx: float  # cx_left - cx_right, px (raw disparity = disparity + delta_cx)
    min_disparity: float  # DisparityImage.min_disparity (published convention)
    max_disparity: float  # DisparityImage.max_disparity (published convention)
    delta_d: float  # DisparityImage.delta_d, px (0: continuous)
    valid_window: Tuple[int, int, int, int]  # (x_offset, y_offset, width, height)
    depth: Optional[np.ndarray] = None  # (H, W) float32 metres, NaN invalid
    points: Optional[np.ndarray] = None  # (H, W, 3) float32 x, y, z in the left optical frame, NaN invalid
    colors: Optional[np.ndarray] = None  # (H, W) uint32 0x00RRGGBB of left_rect
    #: (H, W, 4) float32 x, y, z, colour bits: the PointCloud2 layout; ``points`` and ``colors`` are views of it.
    cloud: Optional[np.ndarray] = None
    disparity_color: Optional[np.ndarray] = None  # (H, W, 3) uint8 RGB colour map
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per stage, and 'total'
    network_scale: Optional[float] = None  # resolution the network matched at (None: SGBM)
    oom_retries: int = 0  # out-of-memory retries at lower resolution this frame needed
    #: The network ran its prepared fast execution mode (None: eager configured; False: this frame's
    #: size differs from the prepared one and ran eager).
    fast_execution: Optional[bool] = None
    #: Why this frame has no depth and points whatever was asked (``zero_baseline``: the calibration
    #: has no baseline, see ``Outputs.disparity_without_baseline``); None when its calibration gives depth.
    depth_problem: Optional[FrameError] = None

    def set_cloud(self, cloud: np.ndarray) -> None:
        """Store an (H, W, 4) x, y, z, colour-bits buffer and expose ``points`` and ``colors`` as views."""
        self.cloud = cloud
        self.points = cloud[..., :3]
        self.colors = cloud[..., 3].view(np.uint32)

    @property
    def reduced_resolution(self) -> bool:
        """The network ran below the configured scale because memory ran out (see backends)."""
        return self.oom_retries > 0

    @property
    def valid(self) -> np.ndarray:
        """(H, W) bool: pixels with a valid disparity."""
        return np.isfinite(self.disparity)


class BatchItem(NamedTuple):
    """One decoded pair of :meth:`StereoProcessor.process_batch`, with its calibration and outputs."""

    pair: DecodedPair
    calibration: StereoCalibration
    outputs: Outputs = Outputs()


class MessageFrame(NamedTuple):
    """One frame's messages for :meth:`StereoProcessor.process_messages_batch` (Image or
    CompressedImage, and CameraInfo; rclpy or rosbags), with the outputs it needs."""

    left_image: Any
    right_image: Any
    left_info: Any
    right_info: Any
    outputs: Outputs = Outputs()


@dataclass
class StagedFrame:
    """A frame of a batch between its rectification and its result (the processor's own)."""

    index: int  # position in the batch
    pair: DecodedPair
    calibration: StereoCalibration
    outputs: Outputs  # what is computed (no depth or points when the calibration has no baseline)
    rectified: bool
    timings: Dict[str, float]
    size: Tuple[int, int]  # (H, W)
    left: Optional[np.ndarray] = None  # host path: the (rectified) pair the backend matches
    right: Optional[np.ndarray] = None
    images: Any = None  # network-device path: (2, 3, H, W) float tensor of the (rectified) pair
    wanted: Dict[str, Any] = field(default_factory=dict)  # network-device path: tensors to copy back
    disparity: Any = None  # raw disparity from the backend (array, or tensor on the device)
    #: What the backend said of this frame's match (scale, retries, execution, disparity range),
    #: read when it was matched: a frame finished later must not see the next frame's.
    facts: Dict[str, Any] = field(default_factory=dict)


@dataclass
class StagedBatch:
    """Frames decoded, checked and rectified, waiting for their match
    (:meth:`~foundation_stereo_ros.pipeline.processor.StereoProcessor.match_staged`): ``frames`` by
    their position in the batch, ``out`` the error of each position refused so far."""

    size: int
    frames: List[StagedFrame] = field(default_factory=list)
    out: Dict[int, Any] = field(default_factory=dict)


class PendingResult:
    """A matched frame whose :class:`StereoResult` :meth:`finish` computes (depth, points, colours on
    the host), in the thread that calls it: the node's publisher thread, while the worker matches
    the next frame. Frames whose geometry ran on the network's device are finished already."""

    def __init__(self, finish: Callable[[], StereoResult], timings: Dict[str, float]) -> None:
        self._finish: Optional[Callable[[], StereoResult]] = finish
        self._result: Optional[StereoResult] = None
        #: The frame's stage times so far (the result's ``timings`` once finished).
        self.timings = timings

    def finish(self) -> StereoResult:
        """The frame's result (computed on the first call)."""
        if self._finish is not None:
            self._result, self._finish = self._finish(), None
        return self._result  # type: ignore[return-value]


def _frame_id(msg: Any) -> str:
    return str(getattr(getattr(msg, "header", None), "frame_id", "") or "")


def check_frame_ids(image: Any, info: Any, name: str = "camera") -> None:
    """Raise ``frame_id_mismatch`` when an image and its own CameraInfo name different frames.

    A CameraInfo from another frame is a calibration of another camera (a remap gone wrong, two
    drivers on one topic), and its geometry would give wrong depth. Left and right images are
    different cameras and may have different frame ids; an empty frame id is not checked.
    """
    image_frame, info_frame = _frame_id(image), _frame_id(info)
    if image_frame and info_frame and image_frame != info_frame:
        raise CalibrationError("frame_id_mismatch", f"{name} image is in frame {image_frame!r} but its camera_info "
                                                    f"is for frame {info_frame!r}: calibration of another camera? "
                                                    f"(check the remappings; check_frame_ids=false disables this)")
