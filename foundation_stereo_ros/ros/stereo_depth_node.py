"""``stereo_depth_node``: synchronise a stereo pair, rectify, match, publish disparity, depth, points.

A drop-in replacement for stereo_image_proc's disparity and point-cloud nodes with FoundationStereo
(or OpenCV SGBM) inside. All processing is :class:`foundation_stereo_ros.pipeline.StereoProcessor`;
this module only moves messages.

Topics (relative, so namespaces and remaps work):

* subscribes ``left/image_rect``, ``left/camera_info``, ``right/image_rect``, ``right/camera_info``
  (sensor-data QoS: best effort, keep last ``qos_depth``; ``qos_reliability`` overrides);
* publishes ``disparity`` (stereo_msgs/DisparityImage), ``depth`` (32FC1 metres, NaN invalid) and
  ``depth/camera_info``, ``points2`` (x y z + packed rgb), ``left_rect/image`` and
  ``left_rect/camera_info`` (the left image that was matched, registered with depth), and
  ``disparity_color`` (rgb8 colour map), all stamped and framed like the left image; plus
  ``right_rect/image`` and ``right_rect/camera_info`` (stamped and framed like the right image,
  to check a calibration: corners of a rectified pair share rows) and
  ``/diagnostics``. Outputs nobody subscribes to are not computed.

Per-frame problems are counted in ``/diagnostics`` as ``problem.<key>`` with the pipeline's keys
(:mod:`foundation_stereo_ros.pipeline.errors`) plus ``unpaired`` (a message that found no
partners), ``time_jump_back`` (stamps went back by more than 1 s, e.g. a bag loop: queued newer
messages and the first pair at the new time are discarded, pairing restarts with the next one)
and ``internal_error``; each is logged at most once per ``log_throttle_s`` as ``[<key>] ...``.
A frame the network could only match at a reduced resolution because the GPU ran out of memory
is published (coarser, not wrong) and counted in ``oom_retries`` / ``reduced_resolution_frames``.

Threading: the synchroniser callback only stores the newest pair (an older pair still waiting
is dropped and counted), so the executor never blocks on inference. Two threads form a
pipeline: the worker decodes, rectifies and matches a pair, and hands the result to the
publisher thread, which builds and publishes the messages while the worker already matches the
next pair. On a GPU the network's time then hides the message building (several ms for a
640x480 point cloud), and the node's rate is the network's. Frames are published in order; the
hand-over holds one result, so the worker waits rather than letting results pile up.
Everything a frame is processed with (the processor and the output options) is one immutable
:class:`FrameSettings`; a parameter change builds a new one and the worker swaps it in between
frames, so no frame sees half of a change.

Shutdown (Ctrl-C, SIGTERM from a launch shutdown): the executor stops, a frame in flight gets
up to ``SHUTDOWN_WAIT_S`` to finish (its outputs are not published), and the process exits 0.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import rclpy
import rclpy.exceptions
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from stereo_msgs.msg import DisparityImage

from ..pipeline import FrameError, Outputs, ProcessorConfig, StereoProcessor
from ..pipeline.config import PROCESSOR_PARAMETERS, ParamSpec, config_problems
from .conversions import camera_info_msg, disparity_image_msg, numpy_to_image, pointcloud2_msg
from .sync import TimeJumpGuard, stamp_ns, subscribe_synchronized

NODE_NAME = "stereo_depth_node"

#: Parameters of the node itself (the processing ones are PROCESSOR_PARAMETERS).
NODE_PARAMETERS: Tuple[ParamSpec, ...] = (
    ParamSpec("approximate_sync", False, "Pair left/right images and CameraInfo by approximate instead of exact "
              "timestamps (cameras that are not hardware-synchronised). Read-only at runtime."),
    ParamSpec("sync_tolerance_s", 0.005, "Largest stamp difference within a pair with approximate_sync, seconds. "
              "Read-only at runtime.", min=0.0, max=1.0),
    ParamSpec("queue_size", 5, "Messages per input kept waiting for partners. Read-only at runtime.", min=1, max=100,
              step=1),
    ParamSpec("qos_reliability", "best_effort", "Reliability of the input subscriptions: 'best_effort' (sensor "
              "data QoS, receives from any publisher) or 'reliable'. Read-only at runtime.",
              choices=("best_effort", "reliable")),
    ParamSpec("qos_depth", 5, "History depth of the input subscriptions and output publishers. Read-only at "
              "runtime.", min=1, max=100, step=1),
    ParamSpec("points_organized", True, "points2 as an organised H x W cloud with NaN for invalid pixels (true) "
              "or a dense 1 x N cloud of valid points only (false)."),
    ParamSpec("diagnostics_period_s", 1.0, "Period of the /diagnostics status, seconds. Read-only at runtime.",
              min=0.1, max=60.0),
    ParamSpec("log_throttle_s", 5.0, "Each kind of per-frame problem is logged at most once per this many "
              "seconds (with a count of the suppressed ones).", min=0.0, max=3600.0),
)
READ_ONLY = frozenset({"approximate_sync", "sync_tolerance_s", "queue_size", "qos_reliability", "qos_depth",
                       "diagnostics_period_s"})
ALL_PARAMETERS: Tuple[ParamSpec, ...] = PROCESSOR_PARAMETERS + NODE_PARAMETERS
_PROCESSOR_NAMES = frozenset(s.name for s in PROCESSOR_PARAMETERS)
_NODE_SPECS = {s.name: s for s in NODE_PARAMETERS}

#: On shutdown, how long a frame in flight may take to finish. Below the 5 s after which
#: ``ros2 launch`` escalates from SIGINT to SIGTERM.
SHUTDOWN_WAIT_S = 4.0

INPUTS = (("left/image_rect", Image), ("left/camera_info", CameraInfo),
          ("right/image_rect", Image), ("right/camera_info", CameraInfo))


class StartupError(RuntimeError):
    """The node cannot run with its parameters (bad value, unusable checkpoint ...)."""


def parameter_descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=spec.description, read_only=spec.name in READ_ONLY)
    if spec.choices is not None:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.type is int and spec.min is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=int(spec.step or 1))]
    elif spec.type is float and spec.min is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max),
                                                        step=0.0)]
    return desc


class ThrottledLog:
    """One log line per problem key per period, with the number suppressed meanwhile."""

    def __init__(self, logger: Any, period_s: float) -> None:
        self._logger = logger
        self.period_s = period_s
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, key: str, text: str, error: bool = False) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
        suffix = f" ({n} more since the last report)" if n else ""
        (self._logger.error if error else self._logger.warning)(f"[{key}] {text}{suffix}")
        return True


class Stats:
    """Counters for /diagnostics; written by the executor and the worker, read by the timer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pairs_received = 0
        self.frames_published = 0
        self.dropped = 0  # pairs replaced by a newer one before the worker took them
        self.skipped_no_subscribers = 0
        self.oom_retries = 0  # out-of-memory retries at a lower network resolution
        self.reduced_resolution_frames = 0  # frames published below the configured network scale
        self.eager_fallback_frames = 0  # frames of another size than the prepared execution mode's
        self.network_scale: Optional[float] = None  # scale the network used for the last frame
        self.problems: Dict[str, int] = {}
        self.window: deque = deque(maxlen=10_000)  # (publish monotonic time, latency s, processing s)

    def problem(self, key: str) -> None:
        with self.lock:
            self.problems[key] = self.problems.get(key, 0) + 1


@dataclass(frozen=True)
class FrameSettings:
    """Everything one frame is processed and published with; replaced whole, never mutated."""

    processor: StereoProcessor
    points_organized: bool


@dataclass(frozen=True)
class _Wanted:
    """Which outputs have subscribers, decided when the worker takes a pair."""

    disparity: bool
    depth: bool
    points: bool
    left: bool
    right: bool
    color: bool


@dataclass
class _Matched:
    """A processed frame on its way from the worker to the publisher thread."""

    settings: FrameSettings
    result: Any  # StereoResult
    left_img: Image
    right_img: Image
    wanted: _Wanted
    t0: float  # perf_counter when the worker took the pair


def resident_memory_mb() -> Optional[float]:
    """Resident set size of this process in MiB (Linux /proc), None where unavailable."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


class StereoDepthNode(Node):
    """See the module docstring. Raises :class:`StartupError` when it cannot run."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        values = self._declare_parameters()
        problems = config_problems({k: v for k, v in values.items() if k in _PROCESSOR_NAMES})
        problems += [p for k, v in values.items() if k in _NODE_SPECS for p in [_NODE_SPECS[k].check(v)] if p]
        if problems:
            raise StartupError("invalid parameters: " + "; ".join(problems))
        config = ProcessorConfig.from_mapping({k: v for k, v in values.items() if k in _PROCESSOR_NAMES})
        try:
            processor = StereoProcessor(config)
        except ValueError as e:  # CheckpointError, BackendError
            raise StartupError(f"{config.backend} backend: {e}") from None
        self._settings = FrameSettings(processor, bool(values["points_organized"]))
        self._next_settings: Optional[FrameSettings] = None  # taken by the worker before its next frame
        self._log = ThrottledLog(self.get_logger(), float(values["log_throttle_s"]))
        self._stats = Stats()
        self._prepare_backend(processor)

        qos_in = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(values["qos_depth"]),
                            reliability=(ReliabilityPolicy.BEST_EFFORT if values["qos_reliability"] == "best_effort"
                                         else ReliabilityPolicy.RELIABLE))
        qos_out = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(values["qos_depth"]),
                             reliability=ReliabilityPolicy.RELIABLE)
        self._pub_disparity = self.create_publisher(DisparityImage, "disparity", qos_out)
        self._pub_depth = self.create_publisher(Image, "depth", qos_out)
        self._pub_depth_info = self.create_publisher(CameraInfo, "depth/camera_info", qos_out)
        self._pub_points = self.create_publisher(PointCloud2, "points2", qos_out)
        self._pub_left = self.create_publisher(Image, "left_rect/image", qos_out)
        self._pub_left_info = self.create_publisher(CameraInfo, "left_rect/camera_info", qos_out)
        self._pub_right = self.create_publisher(Image, "right_rect/image", qos_out)
        self._pub_right_info = self.create_publisher(CameraInfo, "right_rect/camera_info", qos_out)
        self._pub_color = self.create_publisher(Image, "disparity_color", qos_out)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self._cond = threading.Condition()
        self._pending: Optional[Tuple[Any, ...]] = None
        self._in_flight: Optional[int] = None  # stamp of the frame the worker is processing
        self._handover: Optional[_Matched] = None  # a matched frame the publisher has not taken yet
        self._publishing: Optional[int] = None  # stamp of the frame the publisher thread is publishing
        #: True: the worker waits for each frame's publication before it takes the next pair (no
        #: overlap), only to measure what the pipeline saves (foundation-stereo-benchmark).
        self.serial_publishing = False
        self._stop = threading.Event()
        self._time_jumps = TimeJumpGuard(bool(values["approximate_sync"]), float(values["sync_tolerance_s"]))
        self._sync = subscribe_synchronized(
            self, [(t, name) for name, t in INPUTS], qos_in, self._on_pair, queue_size=int(values["queue_size"]),
            approximate=bool(values["approximate_sync"]), tolerance_s=float(values["sync_tolerance_s"]),
            on_message=self._on_message, on_unpaired=self._on_unpaired)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._diag_period = float(values["diagnostics_period_s"])
        self._diag_last = time.monotonic()
        self._diag_timer = self.create_timer(self._diag_period, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._worker_loop, name="stereo_depth_worker", daemon=True)
        self._publisher = threading.Thread(target=self._publisher_loop, name="stereo_depth_publisher", daemon=True)
        self._worker.start()
        self._publisher.start()
        self.get_logger().info(
            f"ready: backend {config.backend}, rectify {config.rectify}, "
            f"{'approximate' if values['approximate_sync'] else 'exact'} sync on "
            f"{', '.join(self._sync.topic_names())}"
            f"{' (message_filters)' if self._sync.uses_message_filters else ''}")

    def _prepare_backend(self, processor: StereoProcessor) -> None:
        """Log what the backend says about itself, and compile / capture / build its engine now
        for warmup_width x warmup_height, so the first camera frame is not minutes late."""
        config = processor.config
        for note in processor.backend.notes:
            self.get_logger().info(f"{config.backend} backend: {note}")
        fast = config.backend == "onnx" or (config.backend == "foundation_stereo" and config.execution != "eager")
        if not fast:
            return
        what = "the ONNX model" if config.backend == "onnx" else f"execution {config.execution!r}"
        if not config.warmup_width:
            self.get_logger().info(f"{what} will be prepared on the first frame, which will be slow; set "
                                   f"warmup_width and warmup_height to the camera's image size to do it at start")
            return
        size = f"{config.warmup_width}x{config.warmup_height}"
        self.get_logger().info(f"preparing {what} for {size} images (compiling or building an engine can take "
                               f"minutes)")
        t0 = time.monotonic()
        try:
            processor.prepare(config.warmup_width, config.warmup_height)
        except ValueError as e:  # BackendError
            raise StartupError(f"{config.backend} backend: {e}") from None
        self.get_logger().info(f"{what} prepared for {size} images in {time.monotonic() - t0:.1f} s")

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> Dict[str, Any]:
        values = {}
        for spec in ALL_PARAMETERS:
            try:
                p = self.declare_parameter(spec.name, spec.default, parameter_descriptor(spec))
            except (rclpy.exceptions.InvalidParameterValueException,
                    rclpy.exceptions.InvalidParameterTypeException) as e:
                raise StartupError(f"parameter {spec.name}: {e} (expected a {spec.type.__name__}"
                                   f"{_range_text(spec)})") from None
            values[spec.name] = p.value
        return values

    def parameter_values(self) -> Dict[str, Any]:
        return {s.name: self.get_parameter(s.name).value for s in ALL_PARAMETERS}

    @property
    def frame_settings(self) -> FrameSettings:
        """The settings the next frame will be processed with."""
        with self._cond:
            return self._next_settings or self._settings

    @property
    def processor(self) -> StereoProcessor:
        """The processor the next frame will go through."""
        return self.frame_settings.processor

    def use_processor(self, processor: StereoProcessor) -> None:
        """Process the next frames with ``processor`` instead of the one built from the parameters
        (benchmarks and tests; its configuration is not checked against the parameters)."""
        settings = replace(self.frame_settings, processor=processor)
        with self._cond:
            self._next_settings = settings

    def _on_set_parameters(self, params: Sequence[Any]) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        merged = self.parameter_values()
        merged.update(changes)
        problems = []
        for name, value in changes.items():
            spec = _NODE_SPECS.get(name)
            if spec is not None:
                problem = spec.check(value)
                if problem:
                    problems.append(problem)
        proc_values = {k: v for k, v in merged.items() if k in _PROCESSOR_NAMES}
        problems += config_problems(proc_values)
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        base = self.frame_settings
        processor = base.processor
        if _PROCESSOR_NAMES.intersection(changes):
            try:
                processor = processor.reconfigured(ProcessorConfig.from_mapping(proc_values))
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
            if processor.backend is not base.processor.backend:
                for note in processor.backend.notes:
                    self.get_logger().info(f"{processor.config.backend} backend: {note}")
            cfg = processor.config
            if (cfg.backend == "foundation_stereo" and cfg.execution != "eager"
                    and getattr(processor.backend, "prepared_size", None) is None):
                self.get_logger().info(f"execution {cfg.execution!r} will be prepared on the next frame, which "
                                       f"will be slow (frames arriving meanwhile are dropped, newest kept)")
        settings = replace(base, processor=processor, points_organized=bool(merged["points_organized"]))
        with self._cond:  # the worker swaps it in before its next frame: never half a change
            self._next_settings = settings
        if "log_throttle_s" in changes:
            self._log.period_s = float(changes["log_throttle_s"])
        self.get_logger().info("parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ input (executor thread)
    def _on_message(self, index: int, msg: Any) -> None:
        t = stamp_ns(msg)
        back_ns = self._time_jumps.observe(t)
        if back_ns is not None:
            # A bag loop or a restarted driver: queued messages from "the future" would block
            # pairing of the new ones until they age out. The pair at the jump is discarded too
            # (in _on_pair), so consumers see a clean break rather than a frame from before their reset.
            self._stats.problem("time_jump_back")
            self._log.warn("time_jump_back", f"{INPUTS[index][0]} stamp went back by {back_ns / 1e9:.3f} s "
                                             f"(bag loop? restarted driver?); discarding queued newer messages and "
                                             f"the pair stamped {t / 1e9:.6f}, resuming with the next pair")
            self._sync.discard_newer_than(t)

    def _on_unpaired(self, index: int, msg: Any) -> None:
        self._stats.problem("unpaired")
        name = INPUTS[index][0]
        self._log.warn("unpaired", f"{name} stamped {stamp_ns(msg) / 1e9:.6f} found no partner on the other "
                                   f"inputs (exact sync needs equal stamps; set approximate_sync / "
                                   f"sync_tolerance_s for unsynchronised cameras)")

    def _on_pair(self, left_img: Image, left_info: CameraInfo, right_img: Image, right_info: CameraInfo) -> None:
        if not self._time_jumps.accept_pair(stamp_ns(left_img)):
            return  # the pair at a backward time jump (counted and logged in _on_message)
        with self._cond:
            self._stats.pairs_received += 1
            if self._pending is not None:
                self._stats.dropped += 1  # newest pair wins: the waiting one is stale
            self._pending = (left_img, left_info, right_img, right_info)
            self._cond.notify()

    def _internal_error(self, what: str, e: Exception) -> bool:
        """Count and log an exception a frame raised in the worker or the publisher thread; False
        when it came from shutting down (the thread should end quietly)."""
        if self._stop.is_set() or not rclpy.ok(context=self.context):
            return False
        self._stats.problem("internal_error")
        self._log.warn("internal_error", f"{what}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}",
                       error=True)
        return True

    def _wait_until(self, ready: Callable[[], bool]) -> bool:
        """With ``self._cond`` held: wait until ``ready()`` or stop; False when stopping."""
        while not ready() and not self._stop.is_set():
            self._cond.wait(0.2)
        return not self._stop.is_set()

    # ------------------------------------------------------------------ worker thread
    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._wait_until(lambda: self._pending is not None):
                    return
                pair, self._pending = self._pending, None
                if self._next_settings is not None:
                    self._settings, self._next_settings = self._next_settings, None
                settings = self._settings
                self._in_flight = stamp_ns(pair[0])
            matched = None
            try:
                matched = self._match(settings, *pair)
            except Exception as e:  # noqa: BLE001 - the worker must survive anything a frame does
                if not self._internal_error("frame failed", e):
                    return
            finally:
                with self._cond:
                    if matched is not None:
                        # One frame waits for the publisher at most: this frame is published after
                        # the one being published, and the worker goes on with the next pair.
                        if self._wait_until(lambda: self._handover is None):
                            self._handover = matched
                            self._cond.notify_all()
                            if self.serial_publishing:
                                self._wait_until(lambda: self._handover is not matched and self._publishing is None)
                    self._in_flight = None
                    self._cond.notify_all()

    def _match(self, settings: FrameSettings, left_img: Image, left_info: CameraInfo, right_img: Image,
               right_info: CameraInfo) -> Optional[_Matched]:
        """Process one pair for the outputs that have subscribers; None when the frame is skipped."""
        def wanted(*pubs: Any) -> bool:
            return any(p.get_subscription_count() > 0 for p in pubs)

        processor = settings.processor
        want = _Wanted(disparity=wanted(self._pub_disparity), depth=wanted(self._pub_depth, self._pub_depth_info),
                       points=wanted(self._pub_points), left=wanted(self._pub_left, self._pub_left_info),
                       right=wanted(self._pub_right, self._pub_right_info), color=wanted(self._pub_color))
        if not (want.disparity or want.depth or want.points or want.left or want.right or want.color):
            with self._stats.lock:
                self._stats.skipped_no_subscribers += 1
            return None
        outputs = Outputs(depth=want.depth, points=want.points, disparity_color=want.color,
                          rectified_images=want.left or want.right)
        t0 = time.perf_counter()
        stamp = stamp_ns(left_img)
        self.get_logger().debug(f"frame {stamp / 1e9:.6f}: processing")
        try:
            result = processor.process_messages(left_img, right_img, left_info, right_info, outputs)
        except FrameError as e:
            self._stats.problem(e.problem)
            self._log.warn(e.problem, f"frame {stamp / 1e9:.6f} skipped: {e}")
            return None
        if self._stop.is_set():
            return None  # shutting down: the publishers are going away
        with self._stats.lock:
            self._stats.network_scale = result.network_scale
            if result.oom_retries:
                self._stats.oom_retries += result.oom_retries
                self._stats.reduced_resolution_frames += 1
            if result.fast_execution is False:
                self._stats.eager_fallback_frames += 1
        if result.fast_execution is False and not result.oom_retries:
            # Not an out-of-memory fallback (logged below): the camera size is not the prepared one.
            prepared = getattr(processor.backend, "prepared_size", None)
            why = (f"is prepared for network input {prepared[1]}x{prepared[0]} only" if prepared
                   else "could not be prepared")
            h, w = result.disparity.shape
            self._log.warn("eager_fallback", f"frame {stamp / 1e9:.6f} ({w}x{h}) ran eager: execution "
                                             f"{processor.config.execution!r} {why}; set warmup_width and "
                                             f"warmup_height to the camera's image size")
        if result.oom_retries:
            self._log.warn("out_of_memory_fallback",
                           f"frame {stamp / 1e9:.6f}: out of memory at network scale {processor.config.scale:g}; "
                           f"matched at scale {result.network_scale:g} after {result.oom_retries} retr"
                           f"{'y' if result.oom_retries == 1 else 'ies'} (coarser depth; the configured scale is "
                           f"tried again every {processor.config.oom_probe_period_s:g} s)")
        return _Matched(settings, result, left_img, right_img, want, t0)

    # ------------------------------------------------------------------ publisher thread
    def _publisher_loop(self) -> None:
        while True:
            with self._cond:
                if not self._wait_until(lambda: self._handover is not None):
                    return
                matched, self._handover = self._handover, None
                self._publishing = stamp_ns(matched.left_img)
                self._cond.notify_all()  # the worker may hand over the next frame
            try:
                self._publish(matched)
            except Exception as e:  # noqa: BLE001 - the publisher must survive anything a frame does
                if not self._internal_error("publishing failed", e):
                    return
            finally:
                with self._cond:
                    self._publishing = None
                    self._cond.notify_all()

    def _publish(self, matched: _Matched) -> None:
        result, want, header = matched.result, matched.wanted, matched.left_img.header
        if want.disparity:
            self._pub_disparity.publish(disparity_image_msg(result, header))
        cam_info = camera_info_msg(result.camera, header) if (want.depth or want.left) else None
        if want.depth:
            self._pub_depth.publish(numpy_to_image(result.depth, "32FC1", header))
            self._pub_depth_info.publish(cam_info)
        if want.points:
            self._pub_points.publish(pointcloud2_msg(result.points, result.colors, header,
                                                     matched.settings.points_organized, cloud=result.cloud))
        if want.left:
            self._pub_left.publish(_picture(result.left_rect, result.grey, header))
            self._pub_left_info.publish(cam_info)
        if want.right:
            right_header = matched.right_img.header
            self._pub_right.publish(_picture(result.right_rect, result.grey, right_header))
            self._pub_right_info.publish(camera_info_msg(result.right_camera, right_header))
        if want.color:
            self._pub_color.publish(numpy_to_image(result.disparity_color, "rgb8", header))
        now_ns = self.get_clock().now().nanoseconds
        latency = (now_ns - stamp_ns(matched.left_img)) / 1e9
        with self._stats.lock:
            self._stats.frames_published += 1
            self._stats.window.append((time.monotonic(), latency, time.perf_counter() - matched.t0))

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._diag_last, 1e-6)
        self._diag_last = now
        st = self._stats
        with st.lock:
            window = list(st.window)
            st.window.clear()
            problems = dict(st.problems)
            values = dict(pairs_received=st.pairs_received, frames_published=st.frames_published,
                          dropped_pairs=st.dropped, skipped_no_subscribers=st.skipped_no_subscribers,
                          oom_retries=st.oom_retries, reduced_resolution_frames=st.reduced_resolution_frames,
                          eager_fallback_frames=st.eager_fallback_frames)
            network_scale = st.network_scale
        with self._cond:
            config = self._settings.processor.config
            providers = getattr(self._settings.processor.backend, "providers", ())
        backend = config.backend
        rate = len(window) / elapsed
        lat = [w[1] for w in window]
        proc = [w[2] for w in window]
        kv = [("backend", backend), ("rate_hz", f"{rate:.3f}"),
              ("latency_mean_s", f"{np.mean(lat):.4f}" if lat else "nan"),
              ("latency_max_s", f"{np.max(lat):.4f}" if lat else "nan"),
              ("processing_mean_s", f"{np.mean(proc):.4f}" if proc else "nan")]
        kv += [(k, str(v)) for k, v in values.items()]
        if backend == "onnx":
            kv += [("onnx_providers", ",".join(providers))]
        if backend == "foundation_stereo":
            kv += [("execution", f"{config.execution}-{config.precision}"), ("configured_scale", f"{config.scale:g}"),
                   ("network_scale", f"{network_scale:g}" if network_scale is not None else "nan")]
        rss = resident_memory_mb()
        kv += [("rss_mb", f"{rss:.1f}" if rss is not None else "nan")]
        kv += [(f"problem.{k}", str(v)) for k, v in sorted(problems.items())]
        previous = getattr(self, "_diag_prev_problems", {})
        new_problems = {k: v - previous.get(k, 0) for k, v in problems.items() if v > previous.get(k, 0)}
        self._diag_prev_problems = problems
        reduced = values["reduced_resolution_frames"] - getattr(self, "_diag_prev_reduced", 0)
        self._diag_prev_reduced = values["reduced_resolution_frames"]
        slow = values["eager_fallback_frames"] - getattr(self, "_diag_prev_eager", 0)
        self._diag_prev_eager = values["eager_fallback_frames"]
        status = DiagnosticStatus(name=f"{self.get_name()}: stereo depth", hardware_id=self.get_fully_qualified_name())
        if new_problems:
            status.level = DiagnosticStatus.WARN
            status.message = "frames skipped: " + ", ".join(f"{k} x{v}" for k, v in sorted(new_problems.items()))
        elif reduced > 0:
            status.level = DiagnosticStatus.WARN
            status.message = (f"out of GPU memory: {reduced} frame(s) at reduced network scale "
                              f"{network_scale if network_scale is not None else float('nan'):g}")
        elif slow > 0:
            status.level = DiagnosticStatus.WARN
            status.message = (f"{slow} frame(s) ran eager, not execution {config.execution!r}: their size is not "
                              f"the prepared one (warmup_width, warmup_height)")
        elif window:
            status.level = DiagnosticStatus.OK
            status.message = f"publishing at {rate:.2f} Hz"
        else:
            status.level = DiagnosticStatus.OK
            status.message = "waiting for synchronised input" if not values["pairs_received"] else "idle"
        status.values = [KeyValue(key=k, value=v) for k, v in kv]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self._pub_diag.publish(msg)

    # ------------------------------------------------------------------ lifecycle
    def stop(self, timeout_s: float = SHUTDOWN_WAIT_S) -> bool:
        """Stop the worker, waiting up to ``timeout_s`` for a frame in flight (whose outputs are
        not published). False if the frame was still running when the wait ended."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            in_flight = self._in_flight if self._in_flight is not None else self._publishing
        if in_flight is not None:
            log = self.get_logger() if rclpy.ok(context=self.context) else _shutdown_log()
            log.info(f"shutting down: waiting up to {timeout_s:g} s for the frame {in_flight / 1e9:.6f} in flight")
        deadline = time.monotonic() + timeout_s
        for thread in (self._worker, self._publisher):
            if thread.is_alive() and threading.current_thread() is not thread:
                thread.join(max(deadline - time.monotonic(), 0.0))
        return not (self._worker.is_alive() or self._publisher.is_alive())

    def destroy_node(self) -> None:
        if not self._stop.is_set():  # main() and tests stop first, with their own wait
            self.stop()
        super().destroy_node()


def _picture(rgb: np.ndarray, grey: bool, header: Any) -> Image:
    if grey:  # the three channels are equal; mono8 is a third of the bytes
        return numpy_to_image(np.ascontiguousarray(rgb[..., 0]), "mono8", header)
    return numpy_to_image(rgb, "rgb8", header)


def _range_text(spec: ParamSpec) -> str:
    if spec.choices:
        return f", one of {', '.join(spec.choices)}"
    text = f" in [{spec.min}, {spec.max}]" if spec.min is not None else ""
    if spec.type is float:
        text += "; write floats with a decimal point, e.g. 1.0 rather than 1"
    return text


def main(args: Optional[List[str]] = None) -> int:
    """Console entry point: runs until Ctrl-C; exit code 1 when the node cannot start."""
    faulthandler.enable()  # a crash inside native code (drivers, CUDA) leaves the Python stacks in the log
    try:
        rclpy.init(args=args)
    except KeyboardInterrupt:
        return 0
    node: Optional[StereoDepthNode] = None
    # rclpy.init installs handlers for SIGINT and SIGTERM (a launch shutdown sends SIGINT, then
    # SIGTERM): both shut the context down, which ends spin() with ExternalShutdownException.
    try:
        try:
            node = StereoDepthNode()
        except StartupError as e:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {e}")
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        finally:
            executor.shutdown(timeout_sec=1.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A signal can shut the context down between the executor's check and its next wait
        # set, which then fails with RCLError ("context is not valid") instead of
        # ExternalShutdownException: that is the same shutdown. Any other error is re-raised.
        if rclpy.ok(context=node.context if node is not None else None):
            raise
    finally:
        if node is not None and not node.stop():
            # A frame longer than SHUTDOWN_WAIT_S (the network on a CPU): its result is not
            # published. The worker is still inside native code (PyTorch, OpenCV); tearing the
            # node or the interpreter down under it can crash (std::terminate, or a segfault in
            # the middleware), so leave at once - everything worth flushing is flushed here.
            _shutdown_log().warning(f"the frame in flight did not finish within {SHUTDOWN_WAIT_S:g} s; "
                                    f"exiting without it")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        if node is not None:
            try:
                node.destroy_node()
            except Exception:  # noqa: BLE001 - the context may already be gone after Ctrl-C
                pass
        rclpy.try_shutdown()
    return 0


def _shutdown_log() -> Any:
    # Not the node's logger: its /rosout publisher is gone once the context is shut down, and rcl
    # would complain about every line.
    return rclpy.logging.get_logger(f"{NODE_NAME}_shutdown")


if __name__ == "__main__":
    sys.exit(main())
