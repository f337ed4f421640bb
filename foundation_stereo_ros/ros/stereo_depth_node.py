"""``stereo_depth_node``: synchronise a stereo pair, rectify, match, publish disparity, depth, points.

A drop-in replacement for stereo_image_proc's disparity and point-cloud nodes with FoundationStereo
(or OpenCV SGBM) inside. All processing is :class:`foundation_stereo_ros.pipeline.StereoProcessor`;
this module only moves messages.

Topics (relative, so namespaces and remaps work):

* subscribes ``left/image_rect``, ``left/camera_info``, ``right/image_rect``, ``right/camera_info``
  (sensor-data QoS: best effort, keep last ``qos_depth``; ``qos_reliability`` overrides); with
  ``image_transport: compressed`` the images come as sensor_msgs/CompressedImage from
  ``<image topic>/compressed``, the image topic resolved first (remaps of ``left/image_rect`` apply,
  as with image_transport), and are decoded by the pipeline in the worker thread;
* publishes ``disparity`` (stereo_msgs/DisparityImage), ``depth`` (``depth_format``: 32FC1 metres,
  NaN invalid, or 16UC1 millimetres, 0 invalid) and
  ``depth/camera_info``, ``points2`` (x y z + packed rgb), ``left_rect/image`` and
  ``left_rect/camera_info`` (the left image that was matched, registered with depth), and
  ``disparity_color`` (rgb8 colour map), all stamped and framed like the left image; plus
  ``right_rect/image`` and ``right_rect/camera_info`` (stamped and framed like the right image,
  to check a calibration: corners of a rectified pair share rows) and
  ``/diagnostics``. Outputs nobody subscribes to are not computed.

Several cameras (parameter ``cameras``, e.g. ``[front, rear]``): each camera's inputs and outputs
are the names above under its namespace (``front/left/image_rect`` ... ``front/points2``), with its
own synchronisation, counters, log lines (``camera front: [key] ...``) and /diagnostics status
(:mod:`.camera`). One processor (one network) serves them all: the worker takes the pair waiting
from every camera and matches those of one size in one batch.

Per-frame problems are counted in ``/diagnostics`` as ``problem.<key>`` with the pipeline's keys
(:mod:`foundation_stereo_ros.pipeline.errors`) plus ``unpaired`` (a message that found no
partners), ``time_jump_back`` (stamps went back by more than 1 s, e.g. a bag loop: queued newer
messages and the first pair at the new time are discarded, pairing restarts with the next one)
and ``internal_error``; each is logged at most once per ``log_throttle_s`` as ``[<key>] ...``.
A frame the network could only match at a reduced resolution because the GPU ran out of memory
is published (coarser, not wrong) and counted in ``oom_retries`` / ``reduced_resolution_frames``.
A calibration that can match but has no baseline (right P[0,3] = 0, as image_pipeline's own
stereo test fixture publishes) gives the disparity (``t`` 0) and no depth or points: the frame is
counted and logged as ``zero_baseline``, its disparity published.

Threading (:mod:`.handover`): the synchroniser callback only stores the newest pair (an older
pair still waiting is dropped and counted), so the executor never blocks on inference. Three
threads form a pipeline: the stager decodes and rectifies the next pair just before the network
finishes the current one, the worker matches, and the publisher thread finishes (depth, points)
and publishes while the worker already matches the next pair, so on a GPU the node's rate is the
network's. Frames are published in order; the hand-over holds one result, so the worker waits
rather than letting results pile up. Everything a frame is processed with is one immutable
:class:`FrameSettings`; a parameter change builds a new one (:mod:`.parameters`), swapped in
between frames, so no frame sees half of a change. The /diagnostics status is
:func:`.diagnostics.diagnose` of the node's counters.

Shutdown (Ctrl-C, SIGTERM from a launch shutdown): the executor stops, a frame in flight gets
up to ``SHUTDOWN_WAIT_S`` to finish (its outputs are not published), and the process exits 0.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..pipeline import FrameError, MessageFrame, Outputs, StereoProcessor
from . import dds
from .camera import Camera, Wanted
from .diagnostics import StatsSnapshot, resident_memory_mb
from .handover import FrameHandover
from .parameters import (ALL_PARAMETERS, FrameSettings, StartupError, camera_names, change_parameters,
                         declare_cameras, declare_parameters, initial_settings)
from .sync import SyncOptions, stamp_ns

NODE_NAME = "stereo_depth_node"

#: On shutdown, how long a frame in flight may take to finish. Below the 5 s after which
#: ``ros2 launch`` escalates from SIGINT to SIGTERM.
SHUTDOWN_WAIT_S = 4.0

#: Most cameras one node serves.
MAX_CAMERAS = 8


@dataclass
class _Staged:
    """Pairs decoded, checked and rectified, on their way from the stager (or the worker) to the
    network: per frame its camera, what it wants and its messages, and the processor's batch."""

    owners: List[Tuple[Camera, Wanted]]
    frames: List[MessageFrame]
    batch: Any  # StagedBatch
    t0: float  # perf_counter when the pairs were taken


@dataclass
class _Matched:
    """A matched frame on its way from the worker to the publisher thread, which finishes it
    (depth, points: :class:`PendingResult`) while the worker matches the next one."""

    settings: FrameSettings
    camera: Camera
    result: Any  # PendingResult
    left_img: Any  # Image or CompressedImage: only its header is used
    right_img: Any
    wanted: Wanted
    t0: float  # perf_counter when its pair was taken (for staging)


class StereoDepthNode(Node):
    """See the module docstring. Raises :class:`StartupError` when it cannot run."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        values = declare_parameters(self)
        names = camera_names(declare_cameras(self))
        settings = initial_settings(values)
        self._prepare_backend(settings.processor, len(names))

        qos_in = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(values["qos_depth"]),
                            reliability=(ReliabilityPolicy.BEST_EFFORT if values["qos_reliability"] == "best_effort"
                                         else ReliabilityPolicy.RELIABLE))
        qos_out = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(values["qos_depth"]),
                             reliability=ReliabilityPolicy.RELIABLE)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        sync = SyncOptions(queue_size=int(values["queue_size"]), approximate=bool(values["approximate_sync"]),
                           tolerance_s=float(values["sync_tolerance_s"]))
        transport = str(values["image_transport"])
        throttle = float(values["log_throttle_s"])
        #: The cameras, in the order of the ``cameras`` parameter (one unnamed camera without it).
        self.cameras = [Camera(self, name, sync, transport, qos_in, qos_out, throttle, self._offer) for name in names]
        first = self.cameras[0]
        self._stats, self._log = first.stats, first.log  # the only camera's (the first's with several)

        # _publish is looked up per frame, so that tests can wrap it.
        self._frames = FrameHandover(settings, self._match, self._publish_all, self._stats, self._log,
                                     alive=lambda: rclpy.ok(context=self.context), batch=True, stage=self._stage,
                                     ahead=lambda s: s.processor.stages_on_host)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._diag_timer = self.create_timer(float(values["diagnostics_period_s"]), self._publish_diagnostics)
        self._frames.start()
        config = settings.processor.config
        topics = "; ".join(", ".join(c.sync.topic_names()) for c in self.cameras)
        self.get_logger().info(
            f"ready: backend {config.backend}, rectify {config.rectify}, {transport} images, "
            f"{len(self.cameras)} camera{'s' if len(self.cameras) > 1 else ''}, "
            f"{'approximate' if sync.approximate else 'exact'} sync on {topics}"
            f"{' (message_filters)' if first.sync.uses_message_filters else ''}")

    def _prepare_backend(self, processor: StereoProcessor, cameras: int = 1) -> None:
        """Log what the backend says about itself, and compile / capture / build its engine now
        for warmup_width x warmup_height (a batch of one pair per camera), so the first camera
        frame is not minutes late. With several cameras, batches of another size (a camera that
        is late or stalls) run eager, counted as ``eager_fallback_frames``."""
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
        size = f"{config.warmup_width}x{config.warmup_height} images" + (f" in batches of {cameras}" if cameras > 1 else "")
        self.get_logger().info(f"preparing {what} for {size} (compiling or building an engine can take "
                               f"minutes)")
        t0 = time.monotonic()
        try:
            processor.prepare(config.warmup_width, config.warmup_height, cameras)
        except ValueError as e:  # BackendError
            raise StartupError(f"{config.backend} backend: {e}") from None
        self.get_logger().info(f"{what} prepared for {size} in {time.monotonic() - t0:.1f} s")

    # ------------------------------------------------------------------ parameters and state
    def parameter_values(self) -> Dict[str, Any]:
        return {s.name: self.get_parameter(s.name).value for s in ALL_PARAMETERS}

    @property
    def frame_settings(self) -> FrameSettings:
        """The settings the next frame will be processed with."""
        return self._frames.upcoming

    @property
    def processor(self) -> StereoProcessor:
        """The processor the next frame will go through."""
        return self.frame_settings.processor

    def use_processor(self, processor: StereoProcessor) -> None:
        """Process the next frames with ``processor`` instead of the one built from the parameters
        (benchmarks and tests; its configuration is not checked against the parameters)."""
        self._frames.swap_in(replace(self.frame_settings, processor=processor))

    @property
    def serial_publishing(self) -> bool:
        """True: the worker waits for each frame's publication before it takes the next pair (no
        overlap), only to measure what the pipeline saves (foundation-stereo-benchmark)."""
        return self._frames.serial

    @serial_publishing.setter
    def serial_publishing(self, serial: bool) -> None:
        self._frames.serial = bool(serial)

    def stats_snapshot(self) -> StatsSnapshot:
        """The node's counters now (what /diagnostics reports), as a frozen copy."""
        return self._stats.snapshot()

    def _on_set_parameters(self, params: Sequence[Any]) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        change = change_parameters(self.frame_settings, self.parameter_values(), changes)
        for note in change.notes:
            self.get_logger().info(note)
        if not change.accepted:
            return SetParametersResult(successful=False, reason=change.reason)
        self._frames.swap_in(change.settings)  # the worker takes it before its next frame: never half a change
        if "log_throttle_s" in changes:
            self._log.period_s = float(changes["log_throttle_s"])
        self.get_logger().info("parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ input (executor thread)
    def _offer(self, camera: Camera, stamp: int, messages: Tuple[Any, ...]) -> None:
        """A camera's synchronised pair for the worker (the newest of each camera wins)."""
        self._frames.offer(stamp, (camera, messages), source=self.cameras.index(camera), stats=camera.stats)

    # ------------------------------------------------------------------ worker thread
    def _stage(self, settings: FrameSettings, pairs: List[Tuple[Camera, Tuple[Any, ...]]]) -> Optional[_Staged]:
        """The host work on the pairs waiting (one per camera) before the network: decode, check and
        rectify each for the outputs that have subscribers; None when no camera wants anything. The
        stager thread does it while the network still runs on the frame before (handover.py)."""
        frames, owners = [], []
        for camera, (left_img, left_info, right_img, right_info) in pairs:
            want = camera.wanted()
            if not want.anything:
                with camera.stats.lock:
                    camera.stats.skipped_no_subscribers += 1
                continue
            # Without a baseline a frame still gives the disparity (and the rectified images), not depth:
            # when only depth or points are wanted, such a frame is refused before it is matched.
            beside_depth = want.disparity or want.left or want.right or want.color
            outputs = Outputs(depth=want.depth, points=want.points, disparity_color=want.color,
                              rectified_images=want.left or want.right, disparity_without_baseline=beside_depth)
            frames.append(MessageFrame(left_img, right_img, left_info, right_info, outputs))
            owners.append((camera, want))
            self.get_logger().debug(f"{camera.label} frame {stamp_ns(left_img) / 1e9:.6f}: processing")
        if not frames:
            return None
        t0 = time.perf_counter()
        try:
            batch = settings.processor.stage_messages_batch(frames)
        except Exception as e:  # noqa: BLE001 - counted for every camera of the batch, the worker goes on
            self._frame_failed(owners, e)
            return None
        return _Staged(owners, frames, batch, t0)

    def _match(self, settings: FrameSettings, staged: Optional[_Staged]) -> Optional[List[_Matched]]:
        """Match a staged batch, frames of one size in one network call; the publisher thread
        finishes and publishes them (:meth:`_publish_all`). None when nothing is left to publish."""
        if staged is None:
            return None
        try:
            # The publisher thread publishes the frame before once these frames leave the host.
            results = settings.processor.match_staged(staged.batch, before_match=self._frames.host_work_done)
        except Exception as e:  # noqa: BLE001 - counted for every camera of the batch, the worker goes on
            self._frame_failed(staged.owners, e)
            return None
        if self._frames.stopping:
            return None  # shutting down: the publishers are going away
        matched = []
        for (camera, want), frame, result in zip(staged.owners, staged.frames, results):
            if isinstance(result, FrameError):  # counted here: a refused frame never waits for the publisher
                camera.stats.problem(result.problem)
                camera.log.warn(result.problem, f"frame {stamp_ns(frame.left_image) / 1e9:.6f} skipped: {result}")
            else:
                matched.append(_Matched(settings, camera, result, frame.left_image, frame.right_image, want,
                                        staged.t0))
        return matched or None

    def _frame_failed(self, owners: List[Tuple[Camera, Wanted]], e: Exception) -> None:
        """An unexpected exception while processing a batch: an internal error of each of its cameras."""
        if self._frames.stopping or not rclpy.ok(context=self.context):
            return
        for camera, _ in owners:
            camera.stats.problem("internal_error")
            camera.log.warn("internal_error", f"frame failed: {type(e).__name__}: {e}\n"
                                              f"{traceback.format_exc(limit=4)}", error=True)

    def _checked(self, matched: _Matched) -> Tuple[Any, Wanted]:
        """A camera's frame finished and ready to publish (its result and what to publish of it), its
        problems counted and logged."""
        settings, camera, want = matched.settings, matched.camera, matched.wanted
        stamp = stamp_ns(matched.left_img)
        stats, log, processor = camera.stats, camera.log, settings.processor
        result = matched.result.finish()
        if result.depth_problem is not None:
            # A disparity needs no baseline: it is published; depth and points cannot be.
            problem = result.depth_problem
            stats.problem(problem.problem)
            log.warn(problem.problem, f"frame {stamp / 1e9:.6f}: disparity published (t = 0), depth and points "
                                      f"skipped: {problem}")
            want = replace(want, depth=False, points=False)
        with stats.lock:
            stats.network_scale = result.network_scale
            if result.oom_retries:
                stats.oom_retries += result.oom_retries
                stats.reduced_resolution_frames += 1
            if result.fast_execution is False:
                stats.eager_fallback_frames += 1
        if result.fast_execution is False and not result.oom_retries:
            # Not an out-of-memory fallback (logged below): the camera size is not the prepared one.
            prepared = getattr(processor.backend, "prepared_size", None)
            why = (f"is prepared for network input {prepared[1]}x{prepared[0]} only" if prepared
                   else "could not be prepared")
            h, w = result.disparity.shape
            log.warn("eager_fallback", f"frame {stamp / 1e9:.6f} ({w}x{h}) ran eager: execution "
                                       f"{processor.config.execution!r} {why}; set warmup_width and "
                                       f"warmup_height to the camera's image size")
        if result.oom_retries:
            log.warn("out_of_memory_fallback",
                     f"frame {stamp / 1e9:.6f}: out of memory at network scale {processor.config.scale:g}; "
                     f"matched at scale {result.network_scale:g} after {result.oom_retries} retr"
                     f"{'y' if result.oom_retries == 1 else 'ies'} (coarser depth; the configured scale is "
                     f"tried again every {processor.config.oom_probe_period_s:g} s)")
        return result, want

    # ------------------------------------------------------------------ publisher thread
    def _publish_all(self, matched: List[_Matched]) -> None:
        """Finish and publish the frames of one batch; a camera whose frame fails does not stop the others."""
        for frame in matched:
            try:
                self._publish(frame)
            except Exception as e:  # noqa: BLE001 - counted for that camera, the others are published
                if self._frames.stopping or not rclpy.ok(context=self.context):
                    return
                frame.camera.stats.problem("internal_error")
                frame.camera.log.warn("internal_error", f"publishing failed: {type(e).__name__}: {e}\n"
                                                        f"{traceback.format_exc(limit=4)}", error=True)

    def _publish(self, matched: _Matched) -> None:
        result, want = self._checked(matched)
        settings = matched.settings
        matched.camera.publish(result, want, matched.left_img, matched.right_img,
                               settings.depth_format, settings.points_organized)
        latency = (self.get_clock().now().nanoseconds - stamp_ns(matched.left_img)) / 1e9
        matched.camera.stats.published(latency, time.perf_counter() - matched.t0)

    # ------------------------------------------------------------------ diagnostics (executor thread)
    def _publish_diagnostics(self) -> None:
        processor, rss_mb = self._frames.settings.processor, resident_memory_mb()
        msg = DiagnosticArray(status=[camera.diagnostic_status(self, processor, rss_mb) for camera in self.cameras])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(msg)

    # ------------------------------------------------------------------ lifecycle
    def stop(self, timeout_s: float = SHUTDOWN_WAIT_S, context_closing: bool = False) -> bool:
        """Stop the worker, waiting up to ``timeout_s`` for a frame in flight (whose outputs are
        not published). False if the frame was still running when the wait ended.
        ``context_closing``: a signal is shutting the context down (main()), so the node's
        /rosout publisher may die under the log line; log it without /rosout."""
        def announce(in_flight: int) -> None:
            live = not context_closing and rclpy.ok(context=self.context)
            log = self.get_logger() if live else _shutdown_log()
            log.info(f"shutting down: waiting up to {timeout_s:g} s for the frame {in_flight / 1e9:.6f} in flight")

        return self._frames.stop(timeout_s, on_wait=announce)

    def destroy_node(self) -> None:
        if not self._frames.stopping:  # main() and tests stop first, with their own wait
            self.stop()
        super().destroy_node()


def main(args: Optional[List[str]] = None) -> int:
    """Console entry point: runs until Ctrl-C; exit code 1 when the node cannot start."""
    faulthandler.enable()  # a crash inside native code (drivers, CUDA) leaves the Python stacks in the log
    try:
        profile = dds.use_profile()  # before the first participant: large messages (ros/dds.py)
    except ValueError as e:
        print(f"[{NODE_NAME}] cannot start: {e}", file=sys.stderr)
        return 1
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
        if profile is not None:
            node.get_logger().info(f"Fast DDS profile {profile} (large samples; {dds.CHOICE_VARIABLE}=none keeps "
                                   f"Fast DDS's defaults)")
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
        if node is not None and not node.stop(context_closing=True):
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
