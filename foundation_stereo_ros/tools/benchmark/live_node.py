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

Both sides load the package's Fast DDS profile for large samples (:mod:`foundation_stereo_ros.ros.dds`)
as the launch files do, unless ``dds_profile`` says otherwise ('none': Fast DDS's defaults, under
which a best-effort reader loses images). The profile is read once per process, at its first DDS
participant: compare profiles in separate benchmark runs.

Each row also profiles the node: the pairs the robot side sent in the window and how many reached
the node whole; the CPU time per published frame of the node's worker, stager, publisher and executor
threads, of the rest of the node's process (DDS), and of the robot side; and how long the worker
waited for a pair or for the publisher, and the publisher for the worker's host work.

Needs rclpy, imported when a measurement starts: the rest of the benchmark runs without ROS.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...ros import dds
from ..node_rate import OUTPUT_TOPICS, PROBES, SENT_KEY

__all__ = ["NodeRateOptions", "PROBES", "format_profiles", "format_rows", "measure_node_rate", "print_node_rates", "run_node_rates"]
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
    #: Fast DDS profile of both sides: '' the package's (as the launch files), 'none', or a path.
    dds_profile: str = ""

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


def _cpu_seconds(stat_path: str) -> float:
    """User + system CPU seconds of a process or thread from its /proc stat file (0 if unreadable)."""
    try:
        with open(stat_path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_sample(node, robot_pid: int) -> Dict[str, float]:
    """CPU seconds so far of the node's worker, publisher, stager and executor threads, of its whole
    process, and of the robot side (Linux /proc; zeros elsewhere)."""
    frames = node._frames
    threads = {"worker": frames.worker.native_id, "publisher": frames.publisher.native_id,
               "executor": node.spinner.native_id,
               "stager": frames.stager.native_id if frames.stager is not None else None}
    out = {name: _cpu_seconds(f"/proc/self/task/{tid}/stat") if tid else 0.0 for name, tid in threads.items()}
    out["process"] = _cpu_seconds("/proc/self/stat")
    out["robot_side"] = _cpu_seconds(f"/proc/{robot_pid}/stat")
    return out


def _measure_window(node, seconds: float, robot_pid: int) -> SimpleNamespace:
    """The node's publications over ``seconds`` after a warm-up, its counters' increase, and where
    its time went (CPU per thread, the handover's waits)."""
    deadline = time.monotonic() + 60.0
    while node.stats_snapshot().frames_published < 3:  # warm-up: remap tables, first transfers, DDS matching
        if time.monotonic() > deadline:
            raise RuntimeError("the node published no frames")
        time.sleep(0.05)
    frames = node._frames
    start, cpu0, waits0, t0 = node.stats_snapshot(), _cpu_sample(node, robot_pid), dict(frames.waits), time.monotonic()
    ahead0 = frames.staged_ahead
    time.sleep(seconds)
    end, cpu1, waits1, t1 = node.stats_snapshot(), _cpu_sample(node, robot_pid), dict(frames.waits), time.monotonic()
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    cpu["dds_and_rest"] = cpu.pop("process") - cpu["worker"] - cpu["publisher"] - cpu["executor"] - cpu["stager"]
    return SimpleNamespace(window=end.published_since(start.taken_at), span=(t0, t1),
                           received=end.pairs_received - start.pairs_received,
                           dropped=end.dropped - start.dropped, problems=dict(end.problems), cpu=cpu,
                           waits={k: waits1[k] - waits0[k] for k in waits0}, staged_ahead=frames.staged_ahead - ahead0)


def _shut_down(robot: Optional[subprocess.Popen], node, executor) -> str:
    """Stop both sides; the robot side's standard output."""
    out = ""
    if robot is not None:
        robot.terminate()
        try:
            out = robot.communicate(timeout=10)[0] or ""
        except subprocess.TimeoutExpired:
            robot.kill()
    if node is not None:
        node.stop()
    if executor is not None:
        executor.shutdown(timeout_sec=2.0)
    if node is not None:
        node.spinner.join(timeout=5.0)  # spin() returns once the executor is shut down
        node.destroy_node()
    return out


def _pairs_sent(robot_output: str, span: Tuple[float, float]) -> Optional[int]:
    """How many pairs the robot side sent within ``span`` (time.monotonic()), from the line it
    prints as it ends; None without that line."""
    for line in robot_output.splitlines():
        if SENT_KEY in line:
            times = json.loads(line)[SENT_KEY]
            return sum(span[0] <= t < span[1] for t in times)
    return None


def measure_node_rate(options: NodeRateOptions) -> Dict[str, Any]:
    """Run the node for ``options.seconds`` after a warm-up and report its rate and overhead (see
    the module docstring)."""
    import rclpy
    from rclpy.context import Context

    domain = options.domain_id if options.domain_id is not None else 1 + (os.getpid() * 13) % 100
    # Both sides on this machine only: the measurement must not depend on (or disturb) the network.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    profile = dds.profile_environment(os.environ, options.dds_profile)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), **profile)
    # Set for this process's first DDS participant (which reads it), then taken back: the processes
    # this one starts later must not inherit it.
    saved = {name: os.environ.get(name) for name in profile}
    os.environ.update(profile)
    namespace = f"/node_rate_{os.getpid()}"
    context = Context()
    node = executor = robot = None
    robot_output = ""
    try:
        rclpy.init(context=context, domain_id=domain)
        node, executor, processor = _start_node(context, namespace, options)
        robot = _start_robot_side(namespace, options, env)
        _wait_until_connected(node, namespace, robot, options.outputs)
        measured = _measure_window(node, options.seconds, robot.pid)
    finally:
        robot_output = _shut_down(robot, node, executor)
        rclpy.try_shutdown(context=context)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    measured.sent = _pairs_sent(robot_output, measured.span)
    measured.dds_profile = next((env[v] for v in dds.PROFILE_VARIABLES if env.get(v)), None)
    return _rate_row(options, processor.geometry_on_device, measured)


def _rate_row(options: NodeRateOptions, on_device: bool, measured: SimpleNamespace) -> Dict[str, Any]:
    window = measured.window
    if len(window) < 3:
        raise RuntimeError(f"only {len(window)} frames published in {options.seconds} s")
    times = [p.published_at for p in window]
    period_ms = (times[-1] - times[0]) / (len(times) - 1) * 1e3
    network_ms = options.network_ms
    frames = len(window)
    profile = dict(cpu_ms_per_frame={k: v * 1e3 / frames for k, v in measured.cpu.items()},
                   waits_ms_per_frame={k: v * 1e3 / frames for k, v in measured.waits.items()},
                   pairs_sent=measured.sent,
                   staged_ahead_pct=100.0 * min(measured.staged_ahead / frames, 1.0),
                   # pairs sent just before the window may arrive in it: never below 0
                   input_lost_pct=(max(100.0 * (1.0 - measured.received / measured.sent), 0.0) if measured.sent
                                   else None))
    return dict(profile, dds_profile=measured.dds_profile, height=options.height, width=options.width, network_ms=network_ms, geometry_device=options.geometry,
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
                                              serial=serial, probe=getattr(args, "node_rate_probe", "messages"),
                                              dds_profile=getattr(args, "node_rate_dds", ""))
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


def format_profiles(rows: Sequence[Dict[str, Any]]) -> str:
    """Where each measured row's time went: input pairs sent and lost, CPU ms per published frame
    by thread, and the handover's waits (ms per frame)."""
    hdr = (f"{'size':>9} {'pipeline':>9} {'sent':>5} {'lost':>6} {'worker':>7} {'stager':>7} {'publish':>7} "
           f"{'exec':>6} "
           f"{'dds+':>6} {'robot':>6} {'w:input':>7} {'w:pub':>6} {'p:worker':>8} {'ahead':>6}")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        cpu, waits = r["cpu_ms_per_frame"], r["waits_ms_per_frame"]
        lost = f"{r['input_lost_pct']:5.1f}%" if r.get("input_lost_pct") is not None else f"{'-':>6}"
        sent = f"{r['pairs_sent']:5d}" if r.get("pairs_sent") is not None else f"{'-':>5}"
        lines.append(f"{r['height']}x{r['width']:<5} {r['pipeline']:>9} {sent} {lost} {cpu['worker']:7.1f} "
                     f"{cpu['stager']:7.1f} {cpu['publisher']:7.1f} {cpu['executor']:6.1f} {cpu['dds_and_rest']:6.1f} "
                     f"{cpu['robot_side']:6.1f} {waits['worker_for_input']:7.1f} {waits['worker_for_publisher']:6.1f} "
                     f"{waits['publisher_for_worker']:8.1f} {r['staged_ahead_pct']:5.0f}%")
    return "\n".join(lines)


def print_node_rates(rows: Sequence[Dict[str, Any]]) -> None:
    """The measured rows as a table and their profiles, then one line per row that has no figure."""
    done = [r for r in rows if r.get("status") == "ok"]
    print("\nthe live node with the network replaced by a wait (period: time per published frame)")
    print(format_rows(done) if done else "")
    if done:
        profiles = sorted({str(r.get("dds_profile")) for r in done})
        print(f"\nwhere the time went (Fast DDS profile: {', '.join(profiles)}): pairs sent in the window and lost "
              f"on the way; CPU ms per published frame of the node's worker, stager, publisher and executor "
              f"threads, the "
              f"rest of its process (DDS) and the robot side; ms per frame the worker waited for input (w:input) "
              f"or for the publisher (w:pub), the publisher for the worker's host work (p:worker); frames staged "
              f"while the network ran (ahead)")
        print(format_profiles(done))
    for r in rows:
        if r.get("status") != "ok":
            print(f"node rate {r['height']}x{r['width']} {r['network_ms']:g} ms: {r['status']} ({r['reason']})")
