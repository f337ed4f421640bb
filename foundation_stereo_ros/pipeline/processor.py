"""StereoProcessor: one stereo pair in, everything the node publishes out.

See the package docstring (:mod:`foundation_stereo_ros.pipeline`) for the API and conventions.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .backends import DisparityBackend, FoundationStereoBackend, make_backend
from .calibration import CameraModel, StereoCalibration, camera_info_key
from .config import ProcessorConfig
from .errors import FrameError, PairMismatchError
from .geometry import PointProjector, colorize_disparity, disparity_to_depth, remove_depth_edges
from .image import DecodedPair, decode_stereo_pair, to_rgb8
from .rectification import Rectifier
from .results import (ALL_OUTPUTS, BatchItem, MessageFrame, Outputs, PendingResult, StagedBatch, StagedFrame,
                      StereoResult, check_frame_ids, lap)

__all__ = ["ALL_OUTPUTS", "BatchItem", "MessageFrame", "Outputs", "PendingResult", "StagedBatch", "StereoProcessor",
           "StereoResult", "check_frame_ids"]


def _finished(pending: Union[PendingResult, FrameError]) -> Union["StereoResult", FrameError]:
    return pending.finish() if isinstance(pending, PendingResult) else pending


def _one(results: List[Union["StereoResult", FrameError]]) -> "StereoResult":
    """The result of a batch of one, raising the frame's error."""
    result = results[0]
    if isinstance(result, FrameError):
        raise result
    return result


class StereoProcessor:
    """Rectify -> match -> depth -> points for one pair at a time (see the package docstring).

    Caches the backend, the rectification maps, validated calibrations and the back-projection
    rays, so repeated frames do no setup work. Not thread-safe, but its three steps may run in
    three threads, one call of each at a time (the node's stager, worker and publisher): staging
    uses the calibrations and maps, matching the backend, finishing the rays.
    """

    def __init__(self, config: ProcessorConfig, backend: Optional[DisparityBackend] = None,
                 _rectifier: Optional[Rectifier] = None) -> None:
        self.config = config
        self.backend = backend if backend is not None else make_backend(config)
        self.rectifier = _rectifier or Rectifier()
        self._projector = PointProjector()
        self._calibrations: "OrderedDict[Any, StereoCalibration]" = OrderedDict()  # by content, and by fields
        self._device: Any = None  # DevicePath: the geometry on the network's device, made when first used
        #: Wait for the GPU after each stage of the device path, so ``timings`` holds each stage's
        #: device time (the benchmark); off, the stages are launched ahead and 'download' waits.
        self.sync_stages = False
        #: ``geometry_device: auto``: whether the network's device does the geometry faster, timed on
        #: the first frame (:meth:`_time_geometry_paths`); None until then. ``auto_geometry_ms``: those times.
        self._auto_on_device: Optional[bool] = None
        self.auto_geometry_ms: Dict[str, float] = {}

    def reconfigured(self, config: ProcessorConfig) -> "StereoProcessor":
        """A processor for ``config`` that reuses this one's loaded network (same checkpoint and
        device) and rectification maps. Raises like the constructor; ``self`` stays usable."""
        return StereoProcessor(config, make_backend(config, previous=self.backend), _rectifier=self.rectifier)

    def prepare(self, width: int, height: int, batch: int = 1) -> bool:
        """Get the backend ready for camera images of this size, ``batch`` pairs at a time (the
        cameras of a node), before the first frame (compile or capture the network's execution
        mode, build a TensorRT engine); whether it had anything to do. Raises BackendError (a
        ValueError) when it cannot run at that size."""
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        return self.backend.prepare(width, height, batch)

    # ------------------------------------------------------------------ calibration
    def calibration(self, left_info: Any, right_info: Any, require_baseline: bool = True) -> StereoCalibration:
        """Validated calibration of two CameraInfo-like objects, cached by content
        (``require_baseline``: see :class:`StereoCalibration`). A camera driver sends the same
        CameraInfo with every frame: its fields' bytes find the calibration without building the models."""
        raw = (camera_info_key(left_info), camera_info_key(right_info), require_baseline)
        calib = self._calibrations.get(raw) if None not in raw else None
        if calib is not None:
            self._calibrations.move_to_end(raw)
            return calib
        left = CameraModel.from_camera_info(left_info, "left")
        right = CameraModel.from_camera_info(right_info, "right")
        key = left.key + b"||" + right.key + (b"" if require_baseline else b"|no-baseline")
        calib = self._calibrations.get(key)
        if calib is None:
            calib = StereoCalibration(left, right, require_baseline=require_baseline)  # validates; raises
            self._calibrations[key] = calib
        if None not in raw:
            self._calibrations[raw] = calib
        while len(self._calibrations) > 8:
            self._calibrations.popitem(last=False)
        return calib

    # ------------------------------------------------------------------ processing
    def process_messages(self, left_image: Any, right_image: Any, left_info: Any, right_info: Any,
                         outputs: Outputs = Outputs()) -> StereoResult:
        """Decode two Image-like (or CompressedImage-like) and two CameraInfo-like objects (rclpy or
        rosbags messages) and :meth:`process` them. Raises :class:`StereoInputError` subclasses for
        bad input."""
        return _one(self.process_messages_batch([MessageFrame(left_image, right_image, left_info, right_info,
                                                              outputs)]))

    def process(self, pair: DecodedPair, calibration: StereoCalibration,
                outputs: Outputs = Outputs()) -> StereoResult:
        """Process a decoded pair (RGB uint8, equal sizes) with its calibration. A calibration
        without a baseline (built with ``require_baseline=False``) gives the disparity only, and
        ``depth_problem`` names what is missing."""
        return _one(self.process_batch([BatchItem(pair, calibration, outputs)]))

    def process_messages_batch(self, frames: Sequence["MessageFrame"], before_match: Optional[Callable[[], None]] = None
                               ) -> List[Union[StereoResult, FrameError]]:
        """:meth:`process_messages` for several frames (cameras) at once: each frame is decoded and
        checked on its own, then :meth:`process_batch` matches frames of one size in one network
        call. Per frame, its result or the :class:`FrameError` it raised (one bad frame never
        costs the others theirs). ``before_match``: see :meth:`process_batch`."""
        return [_finished(p) for p in self.match_messages_batch(frames, before_match)]

    def match_messages_batch(self, frames: Sequence["MessageFrame"], before_match: Optional[Callable[[], None]] = None
                             ) -> List[Union[PendingResult, FrameError]]:
        """:meth:`process_messages_batch` up to the match: per frame, a :class:`PendingResult` whose
        ``finish()`` computes the rest on the host (in another thread if need be), or its error."""
        return self.match_staged(self.stage_messages_batch(frames), before_match)

    def stage_messages_batch(self, frames: Sequence["MessageFrame"]) -> StagedBatch:
        """The host work before the match: decode, check and rectify each frame (see
        :meth:`match_staged`, which may run in another thread, the network's)."""
        errors: Dict[int, FrameError] = {}
        items: List[BatchItem] = []
        where: List[int] = []
        decode_s: Dict[int, float] = {}
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            try:
                if self.config.check_frame_ids:
                    check_frame_ids(frame.left_image, frame.left_info, "left")
                    check_frame_ids(frame.right_image, frame.right_info, "right")
                calib = self.calibration(frame.left_info, frame.right_info,
                                         require_baseline=not frame.outputs.disparity_without_baseline)
                pair = decode_stereo_pair(frame.left_image, frame.right_image, expected_size=calib.left.size,
                                          alpha=self._rectifies_on_host(calib))
            except FrameError as e:
                errors[i] = e
                continue
            items.append(BatchItem(pair, calib, frame.outputs))
            where.append(i)
            decode_s[i] = time.perf_counter() - t0
        batch = self._stage_items(items, where, len(frames))
        batch.out.update(errors)
        for frame in batch.frames:
            frame.timings["decode"] = decode_s[frame.index]  # counted in the result's total when it is finished
        return batch

    def process_batch(self, items: Sequence["BatchItem"],
                      before_match: Optional[Callable[[], None]] = None) -> List[Union[StereoResult, FrameError]]:
        """Process several decoded pairs with their calibrations (see :meth:`process`), one network
        call per image size: pairs of one size are matched as one batch. Per item, its result or
        the :class:`FrameError` it raised; a frame rejected by its own checks (size, calibration)
        does not affect the others, a failed network call fails the frames in it. Stage times:
        each frame's own, and the shared ``match`` time of its batch. ``before_match()`` is called once
        every frame is rectified, as the first network call starts (the node's publisher thread then
        has the host to itself)."""
        return [_finished(p) for p in self.match_batch(items, before_match)]

    def match_batch(self, items: Sequence["BatchItem"], before_match: Optional[Callable[[], None]] = None
                    ) -> List[Union[PendingResult, FrameError]]:
        """:meth:`process_batch` up to the match: per item, a :class:`PendingResult` or its error."""
        return self.match_staged(self._stage_items(items, range(len(items)), len(items)), before_match)

    def match_staged(self, batch: StagedBatch, before_match: Optional[Callable[[], None]] = None
                     ) -> List[Union[PendingResult, FrameError]]:
        """Match staged frames, one network call per size: per frame, a :class:`PendingResult` or its
        error. With the geometry on the network's device the frames are finished here (their work
        is queued on the device with the network's); on the host, ``finish()`` does it."""
        out = batch.out
        groups: "OrderedDict[Tuple[int, int], List[StagedFrame]]" = OrderedDict()
        for frame in batch.frames:
            groups.setdefault(frame.size, []).append(frame)
        if before_match is not None:
            before_match()
        for group in groups.values():
            try:
                self._match_group(group)
            except FrameError as e:
                for frame in group:
                    out[frame.index] = e
                continue
            for frame in group:
                pending = PendingResult(lambda frame=frame: self._finish(frame), frame.timings)
                if frame.images is not None:
                    pending.finish()
                out[frame.index] = pending
        return [out[i] for i in range(batch.size)]

    @property
    def stages_on_host(self) -> bool:
        """Whether staging is host work only (no device transfers): it may run beside the network."""
        return not self.geometry_on_device

    def _stage_items(self, items: Sequence["BatchItem"], positions: Sequence[int], size: int) -> StagedBatch:
        """Each item checked and rectified (its position in the batch from ``positions``)."""
        batch = StagedBatch(size)
        if items and self._auto_on_device is None and self._geometry_choice() == "auto" \
                and self.backend.device.type == "cuda":
            self._time_geometry_paths(items[0])  # once, on the first frame
        for position, item in zip(positions, items):
            try:
                batch.frames.append(self._stage(position, item))
            except FrameError as e:
                batch.out[position] = e
        return batch

    def _rectifies_on_host(self, calibration: StereoCalibration) -> bool:
        """Whether the host's four-channel Rectifier will rectify a frame of ``calibration`` (then it is
        decoded as RGBA, its input); not on the first frame of ``auto`` on CUDA, which times both paths."""
        if not self.rectifier.four_channel or not calibration.needs_rectification(self.config.rectify):
            return False
        if self._auto_on_device is None and self._geometry_choice() == "auto" and self.backend.device.type == "cuda":
            return False
        return not self.geometry_on_device

    def _stage(self, index: int, item: "BatchItem") -> "StagedFrame":
        """A frame's checks and rectification (on the host, or uploaded and rectified on the device)."""
        pair, calibration, outputs = item.pair, item.calibration, item.outputs
        if calibration.depth_problem is not None:
            outputs = replace(outputs, depth=False, points=False)
        timings: Dict[str, float] = {}
        t = time.perf_counter()
        left, right = pair.left, pair.right
        if left.shape != right.shape or left.ndim != 3 or left.shape[2] not in (3, 4):
            raise PairMismatchError("size_mismatch", f"left {left.shape} and right {right.shape} must both be "
                                                     f"(H, W, 3) RGB (or RGBA) of the same size")
        h, w = left.shape[:2]
        calibration.check_image_size(w, h)
        if left.shape[2] == 4 and not self._rectifies_on_host(calibration):  # RGBA is the host rectifier's input
            pair = replace(pair, left=to_rgb8(left, "rgba8"), right=to_rgb8(right, "rgba8"))
            left, right = pair.left, pair.right
        frame = StagedFrame(index, pair, calibration, outputs, calibration.needs_rectification(self.config.rectify),
                        timings, (h, w))
        if self.geometry_on_device:
            frame.images = self._device_path.rectify(frame, self.backend, self.sync_stages)
        elif frame.rectified:
            frame.left, frame.right = self.rectifier.rectify(left, right, calibration)
        else:
            frame.left, frame.right = left, right
        lap(timings, "rectify", t)
        return frame

    def _match_group(self, group: List["StagedFrame"]) -> None:
        """One network (or SGBM) call for frames of one size; stores each frame's raw disparity."""
        backend = self.backend
        t = time.perf_counter()
        # One pair takes the backends' one-pair calls (compute, compute_on_device), which every
        # backend defines; several take their batch calls.
        if self.geometry_on_device:
            import torch  # the device path only: SGBM users have no torch

            if len(group) == 1:
                disparities = [backend.compute_on_device(group[0].images)]
            else:
                disparities = list(backend.compute_on_device_batch(torch.stack([f.images for f in group])))
            if self.sync_stages and backend.device.type == "cuda":
                torch.cuda.synchronize(backend.device)
        elif len(group) == 1:
            disparities = [backend.compute(group[0].left, group[0].right, group[0].pair.grey)]
        else:
            disparities = backend.compute_batch([(f.left, f.right, f.pair.grey) for f in group])
        seconds = time.perf_counter() - t
        facts = self._backend_facts(group[0].size)
        for frame, disparity in zip(group, disparities):
            frame.disparity = disparity
            frame.timings["match"] = seconds
            frame.facts = facts

    def _backend_facts(self, size: Tuple[int, int]) -> Dict[str, Any]:
        """What the backend says of the match it just made, for frames of ``size`` (H, W)."""
        backend, (h, w) = self.backend, size
        return dict(search_range=backend.search_range(w), delta_d=backend.delta_d,
                    valid_window=backend.valid_window(w, h), network_scale=backend.last_scale,
                    oom_retries=backend.last_oom_retries, fast_execution=backend.last_fast)

    def _finish(self, frame: "StagedFrame") -> StereoResult:
        """Everything after the match: edge filter, depth, points, colours, the result."""
        calibration, outputs, timings = frame.calibration, frame.outputs, frame.timings
        delta_cx = calibration.delta_cx
        depth_problem = calibration.depth_problem
        cam = calibration.rectified_left
        t = time.perf_counter()
        if frame.images is not None:
            left, right, disparity, depth, cloud, t = self._device_path.finish(frame, self.backend, self.config,
                                                                               self.sync_stages, t)
        else:
            left, right, disparity = frame.left, frame.right, frame.disparity
            if delta_cx:
                disparity -= np.float32(delta_cx)
            if self.config.edge_filter > 0:
                remove_depth_edges(disparity, self.config.edge_filter)
                t = lap(timings, "edge_filter", t)
        facts = frame.facts
        lo, hi = facts["search_range"]
        result = StereoResult(
            disparity=disparity, left_rect=left, right_rect=right, grey=frame.pair.grey, rectified=frame.rectified,
            camera=cam, right_camera=calibration.rectified_right, f=calibration.f,
            t=0.0 if depth_problem is not None else calibration.baseline,
            delta_cx=delta_cx,
            min_disparity=lo - delta_cx, max_disparity=hi - delta_cx, delta_d=facts["delta_d"],
            valid_window=facts["valid_window"], timings=timings, network_scale=facts["network_scale"],
            oom_retries=facts["oom_retries"], fast_execution=facts["fast_execution"], depth_problem=depth_problem)
        if frame.images is not None:
            result.depth = depth
            if outputs.points:
                result.set_cloud(cloud)
        else:
            if outputs.depth or outputs.points:
                result.depth = disparity_to_depth(disparity, calibration.f, calibration.baseline,
                                                  self.config.min_depth, self.config.max_depth)
                t = lap(timings, "depth", t)
            if outputs.points:
                result.set_cloud(self._projector.cloud(result.depth, left, cam.fx, cam.fy, cam.cx, cam.cy))
                t = lap(timings, "points", t)
        if outputs.disparity_color:
            result.disparity_color = colorize_disparity(disparity, result.min_disparity, result.max_disparity)
            t = lap(timings, "colorize", t)
        timings["total"] = sum(timings.values())
        return result

    # ------------------------------------------------------------------ on the network's device
    @property
    def _device_path(self) -> Any:
        """The :class:`~.device_path.DevicePath` (PyTorch: imported only when the device path runs)."""
        if self._device is None:
            from .device_path import DevicePath

            self._device = DevicePath(self.rectifier)
        return self._device

    @property
    def geometry_on_device(self) -> bool:
        """Whether rectification, depth and points run on the network's device (``geometry_device``)."""
        choice = self._geometry_choice()
        if choice == "auto":  # on a GPU the faster path, timed on the first frame; on a CPU the host
            return self._auto_on_device if self._auto_on_device is not None else self.backend.device.type == "cuda"
        return choice == "network"

    def _geometry_choice(self) -> str:
        """``geometry_device`` as it applies to this backend: 'host' for any but the network's."""
        if not isinstance(self.backend, FoundationStereoBackend):
            return "host"
        return self.config.geometry_device

    def _time_geometry_paths(self, item: "BatchItem", repeats: int = 3) -> None:
        """``geometry_device: auto``: time the node's own work on this frame both ways, with a stand-in
        disparity instead of the network (rectify; on the device the upload too, on the host the upload
        of the rectified pair; depth, points, the copies back), and keep the faster path for every frame.
        Best of ``repeats`` each, so one-off setup (remap tables) does not count. Run for a network on a
        GPU: on a CPU the device path is the same memory with PyTorch's kernels instead of OpenCV's,
        slower at every size (README), so ``auto`` takes the host there."""
        import torch  # the network's backend only: it has torch

        backend = self.backend
        best: Dict[bool, float] = {}
        try:
            for on_device in (False, True):
                self._auto_on_device = on_device
                best[on_device] = float("inf")
                for _ in range(repeats):
                    t = time.perf_counter()
                    frame = self._stage(0, item)
                    h, w = frame.size
                    if on_device:
                        frame.disparity = torch.full((h, w), 16.0, device=backend.device)
                    else:
                        backend.upload(frame.left, frame.right)  # what the network's input costs on this path
                        if backend.device.type == "cuda":
                            torch.cuda.synchronize(backend.device)
                        frame.disparity = np.full((h, w), 16.0, np.float32)
                    frame.facts = self._backend_facts(frame.size)
                    self._finish(frame)
                    best[on_device] = min(best[on_device], time.perf_counter() - t)
        except FrameError:  # this frame cannot be processed (it is refused below): decide on a later one
            self._auto_on_device = None
            return
        self._auto_on_device = best[True] < best[False]
        self.auto_geometry_ms = {"host": best[False] * 1e3, "network": best[True] * 1e3}
