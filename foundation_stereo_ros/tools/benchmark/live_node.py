"""How much the running node adds on top of the network: frames per second of a live
``stereo_depth_node`` whose network is replaced by a wait of a given length.

The node runs in this process with its real code (synchroniser, worker, publisher thread,
message conversions, rclpy publishers). The network is a stored disparity returned after
``network_ms`` of waiting with the GIL released, as a GPU network leaves the host while it runs.
A second process plays the rest of the robot (:mod:`foundation_stereo_ros.tools.node_rate`): it
publishes camera pairs faster than the node can take them and subscribes to disparity, depth,
points2 and left_rect/image, so every output is built and sent over DDS. The node's frame period
against ``network_ms`` is what it adds. The node takes its inputs with its default best-effort QoS
(``NodeRateOptions.input_qos``); the robot side can take fewer outputs, or take them as serialised
bytes (``probe='raw'``), to measure its own share of the machine apart from the node's.

``serial`` runs the same with the pipeline off (the worker waits for each frame's publication
before it takes the next pair), to show what the publisher thread saves.

Needs rclpy, imported when a measurement starts: the rest of the benchmark runs without ROS.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..node_rate import OUTPUT_TOPICS, PROBES

__all__ = ["NodeRateOptions", "PROBES", "format_rows", "measure_node_rate", "print_node_rates", "run_node_rates"]
from .node_stages import stored_disparity_processor
from .stats import summarize

ROBOT_SIDE_MODULE = "foundation_stereo_ros.tools.node_rate"


@dataclass(frozen=True)
class NodeRateOptions:
    """One live-node measurement: the camera size, the wait that stands in for the network, and
    how the node runs."""

    height: int
    width: int
    network_ms: float
    device: Any = "cpu"
    geometry: str = "host"  # the node's geometry_device parameter (host, network or auto)
    seconds: float = 4.0  # measuring time after the warm-up
    serial: bool = False  # publisher pipeline off
    domain_id: Optional[int] = None  # ROS domain (default: one derived from the process id)
    feed_ratio: float = 0.5  # the robot side sends a pair every network_ms * feed_ratio
    probe: str = "messages"  # how the robot side takes the outputs (node_rate.PROBES)
    #: The node's input QoS (its qos_reliability parameter). Its default, best effort, as a camera
    #: driver's sensor-data stream: a pair lost on the way is replaced by the next. 'reliable' makes
    #: DDS resend what a busy reader missed, and the pairs then arrive in bursts (a measured 60-140 ms
    #: without any, then several at once), which the node's period shows as waiting.
    input_qos: str = "best_effort"
    outputs: Tuple[str, ...] = OUTPUT_TOPICS  # which outputs it takes (the node builds only those)

    @property
    def pipeline(self) -> str:
        return "serial" if self.serial else "pipelined"


def _start_node(context, namespace: str, options: NodeRateOptions):
    """The node with the stored-disparity processor, spinning on a thread: (node, executor, processor)."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from ...ros.stereo_depth_node import StereoDepthNode

    node = StereoDepthNode(context=context, namespace=namespace, parameter_overrides=[
        Parameter("backend", value="sgbm"), Parameter("qos_reliability", value=options.input_qos),
        Parameter("rectify", value="always"), Parameter("diagnostics_period_s", value=60.0)])
    try:
        processor = stored_disparity_processor(options.height, options.width, options.device, options.geometry,
                                               delay_s=options.network_ms / 1e3)
        node.use_processor(processor)
        node.serial_publishing = options.serial
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
    except BaseException:
        node.stop()
        node.destroy_node()
        raise
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    node.spinner = spinner  # joined by _shut_down: a spin still running at exit aborts the process
    return node, executor, processor


def _start_robot_side(namespace: str, options: NodeRateOptions, env: Dict[str, str]) -> subprocess.Popen:
    period_s = max(options.network_ms * options.feed_ratio / 1e3, 0.005)
    return subprocess.Popen([sys.executable, "-m", ROBOT_SIDE_MODULE, "--robot-side", "--namespace", namespace,
                             "--height", str(options.height), "--width", str(options.width),
                             "--period-s", str(period_s), "--probe", options.probe,
                             "--outputs", ",".join(options.outputs)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_until_connected(node, namespace: str, robot: subprocess.Popen,
                          outputs: Sequence[str] = OUTPUT_TOPICS) -> None:
    deadline = time.monotonic() + 60.0
    while not all(node.count_subscribers(f"{namespace}/{topic}") > 0 for topic in outputs):
        if time.monotonic() > deadline or robot.poll() is not None:
            raise RuntimeError(f"the robot side did not connect: {robot.stderr.read() if robot.poll() else ''}")
        time.sleep(0.05)


def _measure_window(node, seconds: float) -> SimpleNamespace:
    """The node's publications over ``seconds`` after a warm-up, and its counters' increase."""
    deadline = time.monotonic() + 60.0
    while node.stats_snapshot().frames_published < 3:  # warm-up: remap tables, first transfers, DDS matching
        if time.monotonic() > deadline:
            raise RuntimeError("the node published no frames")
        time.sleep(0.05)
    start = node.stats_snapshot()
    time.sleep(seconds)
    end = node.stats_snapshot()
    return SimpleNamespace(window=end.published_since(start.taken_at),
                           received=end.pairs_received - start.pairs_received,
                           dropped=end.dropped - start.dropped, problems=dict(end.problems))


def _shut_down(robot: Optional[subprocess.Popen], node, executor) -> None:
    if robot is not None:
        robot.terminate()
        try:
            robot.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            robot.kill()
    if node is not None:
        node.stop()
    if executor is not None:
        executor.shutdown(timeout_sec=2.0)
    if node is not None:
        node.spinner.join(timeout=5.0)  # spin() returns once the executor is shut down
        node.destroy_node()


def measure_node_rate(options: NodeRateOptions) -> Dict[str, Any]:
    """Run the node for ``options.seconds`` after a warm-up and report its rate and overhead (see
    the module docstring)."""
    import rclpy
    from rclpy.context import Context

    domain = options.domain_id if options.domain_id is not None else 1 + (os.getpid() * 13) % 100
    # Both sides on this machine only: the measurement must not depend on (or disturb) the network.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    namespace = f"/node_rate_{os.getpid()}"
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    node = executor = robot = None
    try:
        node, executor, processor = _start_node(context, namespace, options)
        robot = _start_robot_side(namespace, options, env)
        _wait_until_connected(node, namespace, robot, options.outputs)
        measured = _measure_window(node, options.seconds)
    finally:
        _shut_down(robot, node, executor)
        rclpy.try_shutdown(context=context)
    return _rate_row(options, processor.geometry_on_device, measured)


def _rate_row(options: NodeRateOptions, on_device: bool, measured: SimpleNamespace) -> Dict[str, Any]:
    window = measured.window
    if len(window) < 3:
        raise RuntimeError(f"only {len(window)} frames published in {options.seconds} s")
    times = [p.published_at for p in window]
    period_ms = (times[-1] - times[0]) / (len(times) - 1) * 1e3
    network_ms = options.network_ms
    return dict(height=options.height, width=options.width, network_ms=network_ms, geometry_device=options.geometry,
                on_device=on_device, pipeline=options.pipeline,
                frames=len(window), rate_hz=1e3 / period_ms, period_ms=period_ms,
                overhead_pct=(period_ms / network_ms - 1.0) * 100.0 if network_ms > 0 else None,
                processing_ms=summarize([p.processing_s * 1e3 for p in window]), pairs_received=measured.received,
                pairs_dropped=measured.dropped, problems=measured.problems, outputs=list(options.outputs),
                probe=options.probe, input_qos=options.input_qos)


def _rate_or_reason(options: NodeRateOptions) -> Dict[str, Any]:
    """The measurement's row with status ok, or a row that says why there is none."""
    base = dict(height=options.height, width=options.width, network_ms=options.network_ms,
                geometry_device=options.geometry, pipeline=options.pipeline)
    try:
        return dict(measure_node_rate(options), status="ok")
    except ImportError as e:
        return dict(base, status="skipped", reason=f"needs rclpy and the ROS 2 messages ({e.name})")
    except Exception as e:  # noqa: BLE001 - report it, go on with the network
        return dict(base, status="error", reason=f"{type(e).__name__}: {e}")


def run_node_rates(args: argparse.Namespace, device) -> List[Dict[str, Any]]:
    """:func:`measure_node_rate` for each size and --node-rate wait, geometry on the host (and on the
    GPU, on CUDA), pipelined and serial; rows with a status, never an exception."""
    rows = []
    geometries = ("host", "network") if device.type == "cuda" else ("host",)
    for h, w in args.sizes:
        for ms in args.node_rate:
            for geometry in geometries:
                for serial in (False, True):
                    options = NodeRateOptions(h, w, ms, device, geometry, seconds=args.node_rate_seconds,
                                              serial=serial, probe=getattr(args, "node_rate_probe", "messages"))
                    row = _rate_or_reason(options)
                    rows.append(row)
                    print(f"node rate {h}x{w}, network {ms:g} ms, geometry {geometry}, {options.pipeline}: "
                          + (f"{row['period_ms']:.1f} ms per frame" if row["status"] == "ok"
                             else f"{row['status']} ({row['reason']})"), flush=True)
                    if row["status"] == "skipped":
                        return rows
    return rows


def format_rows(rows: Sequence[Dict[str, Any]]) -> str:
    hdr = (f"{'size':>9} {'geometry':>8} {'pipeline':>9} {'network ms':>10} {'period ms':>9} {'rate Hz':>8} "
           f"{'adds':>7} {'frames':>6}")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        adds = f"{r['overhead_pct']:6.1f}%" if r.get("overhead_pct") is not None else f"{'-':>7}"
        lines.append(f"{r['height']}x{r['width']:<5} {r['geometry_device']:>8} {r['pipeline']:>9} "
                     f"{r['network_ms']:10.1f} {r['period_ms']:9.2f} {r['rate_hz']:8.2f} {adds} {r['frames']:6d}")
    return "\n".join(lines)


def print_node_rates(rows: Sequence[Dict[str, Any]]) -> None:
    """The measured rows as a table, then one line per row that has no figure."""
    done = [r for r in rows if r.get("status") == "ok"]
    print("\nthe live node with the network replaced by a wait (period: time per published frame)")
    print(format_rows(done) if done else "")
    for r in rows:
        if r.get("status") != "ok":
            print(f"node rate {r['height']}x{r['width']} {r['network_ms']:g} ms: {r['status']} ({r['reason']})")
