"""Several stereo cameras on one network: pairs per second batched against one pair at a time, and
the memory of one process serving N cameras against N processes with a network each.

Throughput: N cameras' pairs (one size) go through the node's processor
(:meth:`~foundation_stereo_ros.pipeline.StereoProcessor.process_batch`, one network call for all
of them, as the node's ``cameras`` parameter runs them) or one :meth:`process` call each, as N
single-camera nodes on one GPU would take turns; every pair is processed end to end (match,
depth, points). The largest difference between the two disparities is reported with them.

Memory: real node processes (``python -m foundation_stereo_ros.tools.benchmark.cameras --worker``):
each runs ``stereo_depth_node`` with the network and ``cameras`` set to its N cameras, and a
feeder node in the same process publishes every camera's pairs (raw Image and CameraInfo, over
DDS on localhost) and receives each camera's ``depth`` and ``points2``; after a few frames per
camera this process reads the worker's memory from ``/proc/<pid>/smaps_rollup``: the
proportional set size (PSS: shared library pages divided among the processes that share them,
so the sum over processes is what they take together), the resident set size (RSS) and the
private pages. On CUDA each process also reports PyTorch's peak reserved device memory, and
``nvidia-smi`` the device memory of each process (CUDA context included) where it can see the
processes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..cli_args import parse_size, positive_int
from .stats import summarize

WORKER_MODULE = "foundation_stereo_ros.tools.benchmark.cameras"
READY = "READY "  # a worker's line once it has processed its frames: READY {json}


@dataclass(frozen=True)
class CameraBenchmark:
    """One multi-camera benchmark: the network, the camera size and how it is timed."""

    variant: str = "vits"
    height: int = 96
    width: int = 128
    iters: int = 8
    cameras: Sequence[int] = (1, 2, 4)  # camera counts to compare
    repeats: int = 3  # timed rounds (every camera's pair once per round)
    warmup: int = 1  # untimed rounds first
    device: str = "cpu"
    checkpoint: Optional[str] = None  # real weights (default: random, seed 0: timing does not depend on them)
    memory_frames: int = 2  # frames each memory process runs before it is measured
    timeout_s: float = 600.0  # for each memory measurement's processes


# ---------------------------------------------------------------------------------------------
# the processor and the cameras' pairs

def build_processor(bench: CameraBenchmark):
    """The node's StereoProcessor with the network of ``bench`` (random weights without a checkpoint)."""
    from ...pipeline import FoundationStereoBackend, ProcessorConfig, StereoProcessor
    from .network import build_model  # PyTorch: imported by the benchmark and its workers only

    config = ProcessorConfig(backend="foundation_stereo", checkpoint=bench.checkpoint or "(random weights)",
                             device=bench.device, iters=bench.iters)
    model, _ = build_model(bench.variant, bench.checkpoint, bench.device)
    return StereoProcessor(config, backend=FoundationStereoBackend(config, model=model))


def camera_items(n: int, height: int, width: int) -> List[Any]:
    """One rectified pair per camera (a random texture, the right view shifted by a few pixels;
    each camera its own), with a rectified calibration, as BatchItems."""
    from ...pipeline import BatchItem, Outputs
    from ...pipeline.calibration import rectified_pair
    from ...pipeline.image import DecodedPair

    calib = rectified_pair(0.9 * width, (width - 1) / 2, (height - 1) / 2, 0.12, width, height)
    items = []
    for cam in range(n):
        rng = np.random.default_rng(cam)
        left = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        shift = 4 + 2 * cam
        right = np.concatenate([left[:, shift:], left[:, -shift:]], axis=1)
        items.append(BatchItem(DecodedPair(left, np.ascontiguousarray(right), False), calib, Outputs()))
    return items


def _disparities(results: Sequence[Any]) -> List[np.ndarray]:
    out = []
    for r in results:
        if not hasattr(r, "disparity"):
            raise RuntimeError(f"a benchmark frame failed: {r}")
        out.append(r.disparity)
    return out


def _max_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest |a - b| over pixels valid in both; inf where one is valid and the other not."""
    worst = 0.0
    for x, y in zip(a, b):
        if not np.array_equal(np.isnan(x), np.isnan(y)):
            return float("inf")
        both = ~np.isnan(x)
        if both.any():
            worst = max(worst, float(np.abs(x[both] - y[both]).max()))
    return worst


def time_cameras(processor: Any, n: int, bench: CameraBenchmark) -> Dict[str, Any]:
    """Pairs per second of ``n`` cameras batched (one process_batch per round) and one pair at a
    time (one process call per pair), and the largest disparity difference between the two."""
    items = camera_items(n, bench.height, bench.width)
    batched_ms: List[float] = []
    single_ms: List[float] = []
    for _ in range(bench.warmup):
        processor.process_batch(items)
        for item in items:
            processor.process(*item)
    t_batched = t_single = 0.0
    batched: List[np.ndarray] = []
    single: List[np.ndarray] = []
    for _ in range(bench.repeats):
        t0 = time.perf_counter()
        batched = _disparities(processor.process_batch(items))
        t1 = time.perf_counter()
        single = [processor.process(*item).disparity for item in items]
        t2 = time.perf_counter()
        t_batched += t1 - t0
        t_single += t2 - t1
        batched_ms.append((t1 - t0) * 1e3)
        single_ms.append((t2 - t1) * 1e3)
    pairs = n * bench.repeats
    return dict(cameras=n, repeats=bench.repeats, batched_pairs_per_s=pairs / t_batched,
                single_pairs_per_s=pairs / t_single, speedup=t_single / t_batched,
                batched_round_ms=summarize(batched_ms), single_round_ms=summarize(single_ms),
                max_abs_diff_px=_max_difference(batched, single))


# ---------------------------------------------------------------------------------------------
# memory of real processes

def _proc_memory_mib(pid: int) -> Dict[str, float]:
    """Rss, Pss and private memory (MiB) of a live process, from /proc/<pid>/smaps_rollup."""
    fields: Dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) / 1024.0
    return dict(rss_mib=fields.get("Rss", 0.0), pss_mib=fields.get("Pss", 0.0),
                private_mib=fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0))


def _nvidia_smi_mib(pids: Sequence[int]) -> Optional[Dict[int, float]]:
    """Device memory per process (CUDA context included) as nvidia-smi lists it; None when it is
    not installed or does not list these processes (another PID namespace)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = {}
    for line in out.splitlines():
        try:
            pid, mib = (v.strip() for v in line.split(","))
            used[int(pid)] = float(mib)
        except ValueError:
            continue
    found = {p: used[p] for p in pids if p in used}
    return found if len(found) == len(pids) else None


def worker_command(bench: CameraBenchmark, cameras: int, python: str = sys.executable) -> List[str]:
    cmd = [python, "-m", WORKER_MODULE, "--worker", str(cameras), "--variant", bench.variant, "--size",
           f"{bench.height}x{bench.width}", "--iters", str(bench.iters), "--device", bench.device,
           "--frames", str(bench.memory_frames)]
    return cmd + (["--checkpoint", bench.checkpoint] if bench.checkpoint else [])


def measure_processes(bench: CameraBenchmark, cameras_per_process: Sequence[int]) -> Dict[str, Any]:
    """Start one worker process per entry (serving that many cameras), wait until every one has
    processed its frames, read their memory while all are alive, then let them exit. Totals and
    each process's figures."""
    procs = [subprocess.Popen(worker_command(bench, n), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in cameras_per_process]
    try:
        reports = []
        deadline = time.monotonic() + bench.timeout_s
        for p in procs:
            line = ""
            while not line.startswith(READY):
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError(f"memory worker {p.pid} exited ({p.wait()}) before it was ready:\n"
                                       f"{p.stderr.read()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"memory worker {p.pid} was not ready within {bench.timeout_s:.0f} s")
            reports.append(json.loads(line[len(READY):]))
        rows = [dict(pid=p.pid, cameras=n, **_proc_memory_mib(p.pid), **rep)
                for p, n, rep in zip(procs, cameras_per_process, reports)]
        smi = _nvidia_smi_mib([p.pid for p in procs]) if bench.device.startswith("cuda") else None
        if smi is not None:
            for row in rows:
                row["nvidia_smi_mib"] = smi[row["pid"]]
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()  # the worker's signal to exit
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    totals = {key: sum(r[key] for r in rows) for key in ("pss_mib", "rss_mib", "private_mib")}
    for key in ("cuda_reserved_mib", "nvidia_smi_mib"):
        if all(r.get(key) is not None for r in rows):
            totals[key] = sum(r[key] for r in rows)
    return dict(processes=len(rows), cameras=sum(cameras_per_process), totals=totals, per_process=rows)


def compare_memory(bench: CameraBenchmark, n: int) -> Dict[str, Any]:
    """One process serving ``n`` cameras against ``n`` processes with one camera each."""
    return dict(cameras=n, one_process=measure_processes(bench, [n]), separate=measure_processes(bench, [1] * n))


def _worker(bench: CameraBenchmark, cameras: int) -> int:
    """A memory worker: a stereo_depth_node serving ``cameras`` cameras with the network, fed
    ``memory_frames`` pairs per camera by a node in this process until every camera's depth and
    points arrived; then report and wait until stdin closes (the parent reads /proc meanwhile)."""
    import threading

    import rclpy
    import torch
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from ...ros.conversions import camera_info_msg, numpy_to_image
    from ...ros.stereo_depth_node import StereoDepthNode

    names = [f"camera{i}" for i in range(cameras)]
    items = camera_items(cameras, bench.height, bench.width)
    rclpy.init()
    # The node starts with SGBM (no checkpoint needed) and is then given the network's processor.
    namespace = f"/camera_benchmark_{os.getpid()}"  # workers side by side do not hear each other
    node = StereoDepthNode(namespace=namespace, parameter_overrides=[Parameter("backend", value="sgbm"),
                                                                     Parameter("cameras", value=names)])
    node.use_processor(build_processor(bench))
    feeder = rclpy.create_node("camera_benchmark_feeder")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    inputs = {name: [feeder.create_publisher(t, f"{namespace}/{name}/{topic}", qos) for topic, t in (
        ("left/image_rect", Image), ("left/camera_info", CameraInfo), ("right/image_rect", Image),
        ("right/camera_info", CameraInfo))] for name in names}
    received: Dict[str, set] = {}
    lock = threading.Lock()

    def got(name: str, kind: str, msg: Any) -> None:
        with lock:
            received.setdefault(f"{name}/{kind}", set()).add(msg.header.stamp.sec)

    subscriptions = [feeder.create_subscription(t, f"{namespace}/{name}/{kind}", lambda m, n=name, k=kind: got(n, k, m),
                                                qos)
                     for name in names for kind, t in (("depth", Image), ("points2", PointCloud2))]
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    executor.add_node(feeder)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    deadline = time.monotonic() + bench.timeout_s
    while not all(p.get_subscription_count() for pubs in inputs.values() for p in pubs):
        if time.monotonic() > deadline:
            raise RuntimeError("the node did not subscribe to its inputs")
        time.sleep(0.05)
    for frame in range(1, bench.memory_frames + 1):
        for name, item in zip(names, items):
            calib = item.calibration
            msgs = (numpy_to_image(item.pair.left, "rgb8"), camera_info_msg(calib.left),
                    numpy_to_image(item.pair.right, "rgb8"), camera_info_msg(calib.right))
            for pub, msg in zip(inputs[name], msgs):
                msg.header.stamp.sec, msg.header.frame_id = frame, f"{name}_optical"
                pub.publish(msg)
        wanted = [f"{name}/{kind}" for name in names for kind in ("depth", "points2")]
        while True:
            with lock:
                if all(frame in received.get(key, ()) for key in wanted):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"frame {frame}: not every camera's depth and points arrived: {received}")
            time.sleep(0.02)
    report: Dict[str, Any] = dict(peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                                  frames_published=sum(c.stats.snapshot().frames_published for c in node.cameras))
    if torch.device(bench.device).type == "cuda":
        report.update(cuda_reserved_mib=torch.cuda.max_memory_reserved() / 2 ** 20,
                      cuda_allocated_mib=torch.cuda.max_memory_allocated() / 2 ** 20)
    print(READY + json.dumps(report), flush=True)
    sys.stdin.read()
    node.stop()
    executor.shutdown(timeout_sec=2.0)
    del subscriptions
    rclpy.try_shutdown()
    return 0


# ---------------------------------------------------------------------------------------------
# the benchmark and its table

def run_camera_benchmark(bench: CameraBenchmark, memory: bool = True, log: Any = None) -> Dict[str, Any]:
    """Throughput for every camera count of ``bench`` and, with ``memory``, the memory comparison."""
    import torch

    log = log or sys.stdout
    processor = build_processor(bench)
    result: Dict[str, Any] = dict(settings=asdict(bench), throughput=[], memory=[])
    with torch.no_grad():
        for n in bench.cameras:
            row = time_cameras(processor, n, bench)
            result["throughput"].append(row)
            print(f"{n} camera(s): batched {row['batched_pairs_per_s']:.2f} pairs/s, one at a time "
                  f"{row['single_pairs_per_s']:.2f} pairs/s", file=log, flush=True)
    del processor
    if memory:
        for n in bench.cameras:
            result["memory"].append(compare_memory(bench, n))
            m = result["memory"][-1]
            print(f"{n} camera(s): memory one process {m['one_process']['totals']['pss_mib']:.0f} MiB, {n} "
                  f"process(es) {m['separate']['totals']['pss_mib']:.0f} MiB (PSS)", file=log, flush=True)
    return result


def format_camera_tables(result: Dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"several cameras on one network: {s['variant']} {s['height']}x{s['width']}, {s['iters']} iterations, "
             f"{s['device']}, {s['repeats']} timed rounds"]
    head = (f"{'cameras':>7} {'batched pairs/s':>15} {'one-at-a-time pairs/s':>21} {'speed-up':>8} "
            f"{'batch ms':>9} {'max|batched-single| px':>22}")
    lines += [head, "-" * len(head)]
    for r in result["throughput"]:
        lines.append(f"{r['cameras']:>7} {r['batched_pairs_per_s']:15.2f} {r['single_pairs_per_s']:21.2f} "
                     f"{r['speedup']:8.2f} {r['batched_round_ms']['median']:9.1f} {r['max_abs_diff_px']:22.2e}")
    if result["memory"]:
        cuda = any("cuda_reserved_mib" in m["one_process"]["totals"] for m in result["memory"])
        lines += ["", "memory: one stereo_depth_node serving N cameras vs N nodes with one camera each, each node its "
                      "own process (MiB; PSS shares library pages among the processes, RSS counts them in each)"]
        head = (f"{'cameras':>7} {'1 process PSS':>13} {'N processes PSS':>15} {'saved':>7} {'1 process RSS':>13} "
                f"{'N processes RSS':>15}" + (f" {'1 proc. device':>14} {'N proc. device':>14}" if cuda else ""))
        lines += [head, "-" * len(head)]
        for m in result["memory"]:
            one, sep = m["one_process"]["totals"], m["separate"]["totals"]
            line = (f"{m['cameras']:>7} {one['pss_mib']:13.0f} {sep['pss_mib']:15.0f} "
                    f"{sep['pss_mib'] - one['pss_mib']:7.0f} {one['rss_mib']:13.0f} {sep['rss_mib']:15.0f}")
            if cuda:
                key = "nvidia_smi_mib" if "nvidia_smi_mib" in one and "nvidia_smi_mib" in sep else "cuda_reserved_mib"
                line += f" {one.get(key, float('nan')):14.0f} {sep.get(key, float('nan')):14.0f}"
            lines.append(line)
        if cuda:
            lines.append("device: nvidia-smi per process (CUDA context included) where it lists the processes, "
                         "else PyTorch's peak reserved memory")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The memory worker's entry point (``--worker N``); the benchmark itself runs from
    ``foundation-stereo-benchmark --cameras 1,2,4``."""
    p = argparse.ArgumentParser(prog=WORKER_MODULE, description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", type=positive_int, required=True, help="cameras this process serves")
    p.add_argument("--variant", default="vits")
    p.add_argument("--size", type=parse_size, default=(96, 128))
    p.add_argument("--iters", type=positive_int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=positive_int, default=2)
    p.add_argument("--checkpoint")
    args = p.parse_args(argv)
    bench = CameraBenchmark(args.variant, args.size[0], args.size[1], args.iters, (args.worker,), device=args.device,
                            checkpoint=args.checkpoint, memory_frames=args.frames)
    return _worker(bench, args.worker)


__all__ = ["CameraBenchmark", "build_processor", "camera_items", "compare_memory", "format_camera_tables",
           "measure_processes", "run_camera_benchmark", "time_cameras"]

if __name__ == "__main__":
    sys.exit(main())
