"""Replay a recording live through the running node and score what it publishes.

:func:`replay_live` starts ``stereo_depth_node`` as its own process (the command a user or a launch
file runs), publishes the bag's four stereo topics with their recorded timing (the serialised
messages as recorded, like ``ros2 bag play``), collects the node's ``disparity`` and ``depth``
and scores them with :func:`.runner.frame_counts_for`, the function the offline evaluation uses.
Frames the node dropped (it keeps only the newest pair when it is busy) are counted, not scored.

Needs rclpy (the rest of :mod:`foundation_stereo_ros.evaluation` does not).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import yaml

from foundation_stereo_ros.evaluation import metrics as M
from foundation_stereo_ros.evaluation.bag_io import StereoBagReader
from foundation_stereo_ros.evaluation.bag_pairing import StereoRecord, StereoTopics
from foundation_stereo_ros.evaluation.runner import frame_counts_for, ground_truth
from foundation_stereo_ros.ros.messages import disparity_from_msg, image_to_array, stamp_to_ns

NODE_MODULE = "foundation_stereo_ros.ros.stereo_depth_node"


@dataclass
class LiveFrame:
    stamp_ns: int
    disparity: np.ndarray  # published convention, NaN where the node marked the pixel invalid
    depth: Optional[np.ndarray]
    latency_s: float  # last input published -> disparity received
    counts: Optional[M.ErrorCounts] = None


@dataclass
class LiveResult:
    published: int  # pairs published
    frames: Dict[int, LiveFrame]  # by stamp: what the node published
    node_log: Optional[Path]
    node_returncode: Optional[int]
    totals: M.ErrorCounts = field(default_factory=M.ErrorCounts)

    @property
    def dropped(self) -> int:
        return self.published - len(self.frames)

    def summary(self) -> Dict[str, Any]:
        return {"frames": len(self.frames), "published": self.published, "dropped": self.dropped,
                "metrics": self.totals.summary(),
                "latency": M.latency_stats([f.latency_s for f in self.frames.values()]),
                "node_log": str(self.node_log) if self.node_log else None}


def write_parameter_file(params: Dict[str, Any], path: Path, node_name: str = "stereo_depth_node") -> Path:
    """A ROS 2 parameter file holding ``params`` for ``node_name`` in any namespace."""
    path.write_text(yaml.safe_dump({f"/**/{node_name}": {"ros__parameters": dict(params)}}, sort_keys=True))
    return path


def node_command(namespace: str, params_files: Sequence[Path], remaps: Dict[str, str],
                 python: str = sys.executable) -> List[str]:
    """The node's command line (``python -m``, so it runs from this environment without a ROS install)."""
    cmd = [python, "-m", NODE_MODULE, "--ros-args", "-r", f"__ns:={namespace}"]
    for f in params_files:
        cmd += ["--params-file", str(f)]
    for src, dst in remaps.items():
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


class _Collector:
    """In-process rclpy node: publishes the bag's messages, receives the node's outputs."""

    def __init__(self, context: Any, topics: Dict[str, str], namespace: str):
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from stereo_msgs.msg import DisparityImage

        self.node = Node("foundation_stereo_replay", context=context)
        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        types = {"left_image": Image, "left_info": CameraInfo, "right_image": Image, "right_info": CameraInfo}
        self.publishers = {topics[k]: self.node.create_publisher(t, topics[k], qos) for k, t in types.items()}
        ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.lock = threading.Lock()
        self.disparity: Dict[int, Any] = {}
        self.depth: Dict[int, Any] = {}
        self.received_at: Dict[int, float] = {}
        self.subscriptions = [
            self.node.create_subscription(DisparityImage, f"{ns}/disparity", self._on_disparity, qos),
            self.node.create_subscription(Image, f"{ns}/depth", self._on_depth, qos)]

    def _on_disparity(self, msg: Any) -> None:
        t = stamp_to_ns(msg.header.stamp)
        with self.lock:
            self.disparity[t] = msg
            self.received_at[t] = time.monotonic()

    def _on_depth(self, msg: Any) -> None:
        with self.lock:
            self.depth[stamp_to_ns(msg.header.stamp)] = msg

    def connected(self) -> bool:
        return (all(p.get_subscription_count() > 0 for p in self.publishers.values())
                and all(s.get_publisher_count() > 0 for s in self.subscriptions))

    def complete(self, stamp: int) -> bool:
        with self.lock:
            return stamp in self.disparity and stamp in self.depth


@dataclass(frozen=True)
class ReplayOptions:
    """How :func:`replay_live` replays the bag and scores the node's outputs."""

    rate: float = 1.0  # x the recorded speed
    params_files: Sequence[Path] = ()  # parameter files the node gets before the replay's parameters
    topic_overrides: Optional[Mapping[str, str]] = None  # StereoBagReader topic names (default: detected)
    sync: Optional[Mapping[str, Any]] = None  # the node's synchronisation parameters, for the bag reader
    connect_timeout_s: float = 60.0
    idle_timeout_s: float = 20.0  # stop waiting for outputs when none arrived for this long
    log_dir: Optional[Path] = None  # node log and parameter file (default: a new temporary folder)
    thresholds: Sequence[float] = M.DEFAULT_BAD_THRESHOLDS
    progress: Optional[Callable[[], None]] = None  # called for every left image published


@dataclass
class _Recording:
    topics: StereoTopics
    pairs: Dict[int, StereoRecord]  # by stamp: the pairs the offline evaluation scores
    records: List[Any]  # the stereo topics' raw messages in log order


def _read_recording(bag: Path, options: ReplayOptions) -> _Recording:
    with StereoBagReader(bag, sync=options.sync, **(options.topic_overrides or {})) as reader:
        topics = reader.topics
        pairs: Dict[int, StereoRecord] = {p.stamp_ns: p for p in reader.pairs()}
        records = list(reader.records(topics.stereo(), raw=True))
    if not pairs:
        raise ValueError(f"{bag}: no synchronised stereo pairs to replay")
    return _Recording(topics, pairs, records)


def _wait_connected(collector: _Collector, proc: subprocess.Popen, node_log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not collector.connected():
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited with code {proc.returncode} before connecting:\n"
                               f"{_tail(node_log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the node did not connect within {timeout_s:.0f} s:\n{_tail(node_log)}")
        time.sleep(0.05)
    # Discovery is symmetric but not simultaneous: give the node's side a moment to match too.
    time.sleep(0.5)


def _publish(recording: _Recording, collector: _Collector, options: ReplayOptions) -> Dict[int, float]:
    """Publish the recorded messages with their recorded timing (scaled by the rate); returns when
    each pair's last message went out, by stamp."""
    published_at: Dict[int, float] = {}
    t_bag0 = recording.records[0].log_time_ns
    t_wall0 = time.monotonic()
    for rec in recording.records:
        due = t_wall0 + (rec.log_time_ns - t_bag0) / 1e9 / options.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        collector.publishers[rec.topic].publish(rec.raw)
        stamp = stamp_to_ns(rec.msg.header.stamp)
        if stamp in recording.pairs:
            published_at[stamp] = time.monotonic()  # ends at the pair's last message
        if options.progress is not None and rec.topic == recording.topics.left_image:
            options.progress()
    return published_at


def _wait_for_outputs(collector: _Collector, pairs: Dict[int, StereoRecord], proc: subprocess.Popen,
                      node_log: Path, idle_timeout_s: float) -> None:
    """Until every pair is answered, or nothing new arrives for ``idle_timeout_s``."""
    last_count, last_change = -1, time.monotonic()
    while True:
        with collector.lock:
            count = len(collector.disparity)
        if all(collector.complete(s) for s in pairs):
            return
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        if time.monotonic() - last_change > idle_timeout_s:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited with code {proc.returncode} during the replay:\n{_tail(node_log)}")
        time.sleep(0.05)


def _run_node(recording: _Recording, namespace: str, cmd: List[str], node_log: Path, options: ReplayOptions):
    """Start the node, replay, collect: (disparity, depth and receive time by stamp, publish time
    by stamp, the node's exit code)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    topics = recording.topics
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = None
    proc = None
    try:
        with open(node_log, "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        collector = _Collector(context, {"left_image": topics.left_image, "left_info": topics.left_info,
                                         "right_image": topics.right_image, "right_info": topics.right_info},
                               namespace)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(collector.node)
        threading.Thread(target=executor.spin, daemon=True).start()
        _wait_connected(collector, proc, node_log, options.connect_timeout_s)
        published_at = _publish(recording, collector, options)
        _wait_for_outputs(collector, recording.pairs, proc, node_log, options.idle_timeout_s)
        with collector.lock:
            received = (dict(collector.disparity), dict(collector.depth), dict(collector.received_at))
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        rclpy.try_shutdown(context=context)
        returncode = _stop(proc)
    return received, published_at, returncode


def _score(recording: _Recording, received, published_at: Dict[int, float], result: LiveResult,
           thresholds: Sequence[float]) -> LiveResult:
    """Each answered pair's outputs, decoded with the node's own conversions (NaN where it marked a
    pixel invalid) and scored as the offline evaluation scores them."""
    disparity, depth, received_at = received
    for stamp, dmsg in sorted(disparity.items()):
        rec = recording.pairs.get(stamp)
        if rec is None:
            continue
        disp = disparity_from_msg(dmsg)
        z = image_to_array(depth[stamp]).astype(np.float32) if stamp in depth else None
        gt_disp, gt_depth = ground_truth(rec)
        counts = frame_counts_for(disp, z, gt_disp, gt_depth, thresholds)
        latency = received_at[stamp] - published_at.get(stamp, received_at[stamp])
        result.frames[stamp] = LiveFrame(stamp, disp, z, latency, counts)
        result.totals = result.totals + counts
    return result


def replay_live(bag: Path, namespace: str, params: Dict[str, Any],
                options: ReplayOptions = ReplayOptions()) -> LiveResult:
    """Start the node (namespace ``namespace``, parameters ``options.params_files`` then ``params``),
    replay ``bag`` at ``options.rate`` x its recorded speed, and score the node's outputs against the
    bag's ground truth. Raises RuntimeError when the node does not come up (its log is in the message)."""
    if not np.isfinite(options.rate) or options.rate <= 0:
        raise ValueError(f"replay rate must be positive, got {options.rate}")
    log_dir = (Path(options.log_dir) if options.log_dir is not None
               else Path(tempfile.mkdtemp(prefix="foundation_stereo_replay_")))
    log_dir.mkdir(parents=True, exist_ok=True)
    recording = _read_recording(bag, options)
    topics = recording.topics
    # The node subscribes to its relative input names; point them at the bag's topics.
    remaps = {"left/image_rect": topics.left_image, "left/camera_info": topics.left_info,
              "right/image_rect": topics.right_image, "right/camera_info": topics.right_info}
    params_file = write_parameter_file(params, log_dir / "replay_parameters.yaml")
    cmd = node_command(namespace, [*options.params_files, params_file], remaps)
    node_log = log_dir / "node.log"
    received, published_at, returncode = _run_node(recording, namespace, cmd, node_log, options)
    result = LiveResult(published=len(recording.pairs), frames={}, node_log=node_log, node_returncode=returncode)
    return _score(recording, received, published_at, result, options.thresholds)


def _stop(proc: Optional[subprocess.Popen]) -> Optional[int]:
    """Ctrl-C the node (as a terminal or launch would), then kill it if it does not exit."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    return proc.returncode


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
