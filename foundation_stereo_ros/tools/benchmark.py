"""foundation-stereo-benchmark: where the time goes, per network stage and per node stage.

For every combination of variant, resolution, GRU iterations and execution mode it reports
the median and p95 latency of the network, its throughput, its peak memory (CUDA:
``torch.cuda.max_memory_allocated``; CPU: peak resident set size sampled during the runs), the
largest difference of its disparity from the eager fp32 path on the same input, its work in
floating-point operations (PyTorch's FLOP counter on a simulated CUDA device,
``analysis.simulated.count_flops``) and, where the GPU's peak dense bf16 rate is known or given
(``--peak-tflops``), how far the median is from that FLOP floor; and for eager
modes the time of each stage (monocular branch, CNN features, cost volume, aggregation, context,
geometry volume, each GRU iteration, upsampling; CUDA events on a GPU). The node's own work per
camera pair (image conversion, rectification, upload and download, depth, points, message
building) is timed per resolution through the node's real code with the network replaced by a
stored disparity, with the geometry on the host and on the network's device, and related to the
network's time.

Weights are random unless ``--checkpoint`` is given: timing does not depend on them. Results are
printed as tables and, with ``--json``, written after every configuration, so a run that is cut
short keeps what it measured.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .cli_args import comma_list, parse_size, positive_int, torch_device

PRESETS: Dict[str, Dict[str, Any]] = {
    # Finishes in about a minute on a 2-core CPU.
    "cpu-smoke": dict(variants=["vits"], sizes=[(64, 96), (96, 128)], iters=[8], modes=["eager-fp32"],
                      repeats=3, warmup=1),
    # One GPU configuration in every mode: the figure the issue asks for, in a few minutes.
    "gpu-quick": dict(variants=["vitl"], sizes=[(480, 640)], iters=[16],
                      modes=["eager-fp32", "eager-fp16", "eager-bf16", "cudagraph-fp16", "cudagraph-bf16",
                             "compile-bf16"],
                      repeats=20, warmup=3),
    # The full matrix of the issue (long: torch.compile per shape takes minutes for ViT-L).
    "gpu-full": dict(variants=["vits", "vitl"], sizes=[(320, 480), (480, 640), (720, 1280)], iters=[8, 16, 32],
                     modes=["eager-fp32", "eager-fp16", "eager-bf16", "cudagraph-bf16", "compile-bf16",
                            "compile-cudagraph-bf16"],
                     repeats=20, warmup=3),
}

# Peak dense bf16 tensor-core rate (TFLOP/s) from NVIDIA's data sheets, by the name CUDA reports.
# The first entry whose key is in the name wins; other GPUs need --peak-tflops for the floor.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


def peak_tflops_for(gpu_name: Optional[str]) -> Optional[float]:
    for key, tflops in PEAK_BF16_TFLOPS:
        if gpu_name and key in gpu_name:
            return tflops
    return None


NODE_STAGES = ("image_conversion", "rectification", "upload_download", "depth", "points", "message_building")


# ---------------------------------------------------------------------------------------- statistics
def summarize(samples_ms: Sequence[float]) -> Dict[str, float]:
    """median, p95 (linear interpolation between order statistics), mean, min, max of ``samples_ms``."""
    if len(samples_ms) == 0:
        raise ValueError("no samples to summarise")
    s = sorted(float(x) for x in samples_ms)

    def quantile(q: float) -> float:
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return dict(median=quantile(0.5), p95=quantile(0.95), mean=sum(s) / len(s), min=s[0], max=s[-1])


def parse_mode(text: str) -> Tuple[str, str]:
    """'cudagraph-bf16' -> ('cudagraph', 'bf16'); 'onnxruntime' -> ('onnxruntime', 'fp32')."""
    from ..runtime.fastpath import EXECUTIONS
    from ..analysis.stages import PRECISION_DTYPES

    if text == "onnxruntime":
        return "onnxruntime", "fp32"
    execution, _, precision = text.rpartition("-")
    if execution not in EXECUTIONS or precision not in PRECISION_DTYPES:
        raise argparse.ArgumentTypeError(
            f"mode must be EXECUTION-PRECISION with EXECUTION in {list(EXECUTIONS)} and PRECISION in "
            f"{sorted(PRECISION_DTYPES)}, or 'onnxruntime'; got {text!r}")
    return execution, precision


# ---------------------------------------------------------------------------------------- memory
class RssPeak:
    """Peak resident set size (MiB) of this process while the context is open.

    On Linux the kernel's high-water mark (VmHWM) is reset on entry (``/proc/self/clear_refs``)
    and read on exit: exact, and no thread competes with the measured code for the GIL. Where
    that is not possible a thread samples the current RSS every ``interval_s`` (may miss short peaks).
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self.start_mib = 0.0
        self.method = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @staticmethod
    def _status_mib(key: str) -> Optional[float]:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024.0  # kB
        except (OSError, ValueError, IndexError):
            pass
        return None

    @classmethod
    def current_mib(cls) -> float:
        rss = cls._status_mib("VmRSS")
        if rss is not None:
            return rss
        import resource  # no /proc: the lifetime peak is the best there is

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    @staticmethod
    def _reset_high_water_mark() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self.current_mib())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RssPeak":
        self.start_mib = self.peak_mib = self.current_mib()
        if self._reset_high_water_mark() and self._status_mib("VmHWM") is not None:
            self.method = "VmHWM"
        else:
            self.method = "sampled"
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        hwm = self._status_mib("VmHWM") if self.method == "VmHWM" else None
        self.peak_mib = max(self.peak_mib, hwm if hwm is not None else 0.0, self.current_mib())


# ---------------------------------------------------------------------------------------- node stages
def _synthetic_calibration(height: int, width: int):
    """Left and right CameraModel of a plausible rig (fx ~ 0.9 w, 12 cm baseline, mild
    distortion, small rotation): every frame is rectified, as with a raw camera driver."""
    import cv2

    from ..pipeline.calibration import make_camera_model

    f = 0.9 * width
    k = np.array([[f, 0, width / 2 - 3.5], [0, f, height / 2 + 2.0], [0, 0, 1]], np.float64)
    dist = np.array([-0.08, 0.02, 0.001, -0.0005, 0.0])
    rot = cv2.Rodrigues(np.array([0.004, -0.006, 0.002]))[0]
    rect_l, rect_r, p_l, p_r, _q, _, _ = cv2.stereoRectify(k, dist, k, dist, (width, height), rot,
                                                          np.array([[-0.12], [0.0], [0.0]]), alpha=0)
    return tuple(make_camera_model(width, height, k.reshape(-1), dist, r.reshape(-1), p.reshape(-1), name=name)
                 for r, p, name in ((rect_l, p_l, "left"), (rect_r, p_r, "right")))


class _FixedDisparityNetwork:
    """Stands in for the network so that only the node's own work is timed: ``infer`` returns a
    disparity already on the device, of the input's size, at once or after ``delay_s`` of waiting
    with the GIL released (a GPU network's time, during which the host is free)."""

    def __init__(self, height: int, width: int, device, delay_s: float = 0.0) -> None:
        import torch

        from ..model.config import FoundationStereoConfig

        self.cfg = FoundationStereoConfig(vit_size="vits")
        gen = torch.Generator().manual_seed(0)
        self._disparity = (torch.rand(1, 1, height, width, generator=gen) * 40 + 1).to(device)
        self.delay_s = delay_s

    def infer(self, left, right, **_options):
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        return self._disparity


def stored_disparity_processor(height: int, width: int, device, geometry: str = "host", delay_s: float = 0.0):
    """The node's StereoProcessor (every pair rectified) with the network replaced by
    :class:`_FixedDisparityNetwork`: the node's own work, timed without the network's."""
    from ..pipeline import FoundationStereoBackend, ProcessorConfig, StereoProcessor

    config = ProcessorConfig(backend="foundation_stereo", checkpoint="(stored disparity)", device=str(device),
                             iters=1, rectify="always", geometry_device=geometry)
    network = _FixedDisparityNetwork(height, width, device, delay_s=delay_s)
    return StereoProcessor(config, backend=FoundationStereoBackend(config, model=network))


def time_node_stages(height: int, width: int, device, repeats: int, geometry: str = "host") -> Dict[str, Any]:
    """Median ms of each stage of the node's own per-frame work for one camera pair of this size:
    its real code (the pipeline's StereoProcessor and the node's message conversions) with the
    network replaced by a stored disparity. ``geometry``: the ``geometry_device`` parameter."""
    from ..pipeline import ALL_OUTPUTS

    try:  # the ROS message types (rclpy); a GPU machine without ROS still times everything else
        from ..ros.conversions import camera_info_msg, disparity_image_msg, numpy_to_image, pointcloud2_msg
        missing = None
    except ImportError as e:
        missing = e.name or str(e)
    processor = stored_disparity_processor(height, width, device, geometry)
    processor.sync_stages = True  # per-stage device times on a GPU
    left_cam, right_cam = _synthetic_calibration(height, width)
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    if missing is None:
        images = [numpy_to_image(p, "bgr8") for p in pixels]
        infos = [camera_info_msg(left_cam), camera_info_msg(right_cam)]
    else:  # plain objects with the message fields the pipeline reads
        images = [SimpleNamespace(encoding="bgr8", height=height, width=width, step=width * 3, is_bigendian=0,
                                  data=p.tobytes(), header=SimpleNamespace(frame_id="")) for p in pixels]
        infos = [SimpleNamespace(width=c.width, height=c.height, k=c.K.reshape(-1), d=c.D, r=c.R.reshape(-1),
                                 p=c.P.reshape(-1), distortion_model=c.distortion_model or "plumb_bob",
                                 header=SimpleNamespace(frame_id="")) for c in (left_cam, right_cam)]
    times: Dict[str, List[float]] = {k: [] for k in NODE_STAGES}
    for rep in range(repeats + 1):  # the first pass builds the remap tables and is dropped
        result = processor.process_messages(images[0], images[1], infos[0], infos[1], ALL_OUTPUTS)
        messages_ms = None
        if missing is None:
            t = time.perf_counter()
            header = images[0].header
            disparity_image_msg(result, header)
            numpy_to_image(result.depth, "32FC1", header)
            pointcloud2_msg(result.points, result.colors, header, True, cloud=result.cloud)
            numpy_to_image(result.left_rect, "rgb8", header)
            messages_ms = (time.perf_counter() - t) * 1e3
        if rep > 0:
            if messages_ms is not None:
                times["message_building"].append(messages_ms)
            tm = result.timings
            for name, key in (("image_conversion", "decode"), ("rectification", "rectify"),
                              ("depth", "depth"), ("points", "points")):
                times[name].append(tm.get(key, 0.0) * 1e3)
            # The network is a stored disparity: 'match' is the upload's share, 'download' (device
            # path) the copies back.
            times["upload_download"].append((tm.get("match", 0.0) + tm.get("download", 0.0)) * 1e3)
    stages = {k: (summarize(v)["median"] if v else None) for k, v in times.items()}
    total = sum(v for v in stages.values() if v is not None)
    out = dict(stages_ms=stages, total_ms=total, worker_ms=total - (stages.get("message_building") or 0.0),
               geometry_device=geometry,
               on_device=processor.geometry_on_device,
               sources=dict(functions="foundation_stereo_ros.pipeline.StereoProcessor",
                            messages="foundation_stereo_ros.ros.conversions"))
    if missing is not None:
        out["not_measured"] = {"message_building": f"needs the ROS 2 message packages ({missing} is not installed)"}
    return out


def run_node_rates(args: argparse.Namespace, device) -> List[Dict[str, Any]]:
    """:func:`~.node_rate.measure_node_rate` for each size and --node-rate wait, geometry on the host
    (and on the GPU, on CUDA), pipelined and serial; rows with a status, never an exception."""
    from .node_rate import measure_node_rate

    rows = []
    geometries = ("host", "network") if device.type == "cuda" else ("host",)
    for h, w in args.sizes:
        for ms in args.node_rate:
            for geometry in geometries:
                for serial in (False, True):
                    base = dict(height=h, width=w, network_ms=ms, geometry_device=geometry,
                                pipeline="serial" if serial else "pipelined")
                    try:
                        row = dict(measure_node_rate(h, w, ms, device, geometry, seconds=args.node_rate_seconds,
                                                     serial=serial), status="ok")
                    except ImportError as e:
                        row = dict(base, status="skipped", reason=f"needs rclpy and the ROS 2 messages ({e.name})")
                    except Exception as e:  # noqa: BLE001 - report it, go on with the network
                        row = dict(base, status="error", reason=f"{type(e).__name__}: {e}")
                    rows.append(row)
                    print(f"node rate {h}x{w}, network {ms:g} ms, geometry {geometry}, {base['pipeline']}: "
                          + (f"{row['period_ms']:.1f} ms per frame" if row["status"] == "ok"
                             else f"{row['status']} ({row['reason']})"), flush=True)
                    if row["status"] == "skipped":
                        return rows
    return rows


# ---------------------------------------------------------------------------------------- network
def machine_info(device) -> Dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    info = dict(cpu=cpu, cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), python=platform.python_version(),
                torch=torch.__version__, platform=platform.platform(), device=str(device))
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def build_model(variant: str, checkpoint: Optional[str], device):
    import torch

    from ..model import FoundationStereo, FoundationStereoConfig, load_model

    if checkpoint:
        model = load_model(checkpoint, device=device)
        return model, f"checkpoint {checkpoint}"
    torch.manual_seed(0)
    return FoundationStereo(FoundationStereoConfig(vit_size=variant)).eval().to(device), "random weights (seed 0)"


class _Timer:
    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = torch.device(device).type == "cuda"

    def time_ms(self, fn: Callable[[], Any]) -> Tuple[float, Any]:
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)), out
        t = time.perf_counter()
        out = fn()
        return (time.perf_counter() - t) * 1e3, out


def run_config(model, variant: str, size: Tuple[int, int], iters: int, execution: str, precision: str, device,
               args: argparse.Namespace, reference: Dict[Tuple, Any], onnx_dir: Optional[Path]) -> Dict[str, Any]:
    import torch

    from ..model.padding import InputPadder
    from ..runtime.fastpath import NetworkRunner, mode_unavailable_reason
    from ..analysis.stages import StageClock, group_stage_times, staged_forward

    h, w = size
    ph, pw = InputPadder(h, w).padded_size
    row: Dict[str, Any] = dict(variant=variant, height=h, width=w, padded=[ph, pw], iters=iters,
                               mode=f"{execution}-{precision}" if execution != "onnxruntime" else "onnxruntime",
                               execution=execution, precision=precision, batch=1)
    dev = torch.device(device)
    if execution == "onnxruntime":
        reason = None
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            reason = f"needs {e.name} (pip install onnxruntime onnxscript)"
    else:
        reason = mode_unavailable_reason(execution, precision, dev)
    if reason is not None:
        row.update(status="skipped", reason=reason)
        return row
    gen = torch.Generator().manual_seed(1)
    left = (torch.rand(1, 3, ph, pw, generator=gen) * 255).to(dev)
    right = (torch.rand(1, 3, ph, pw, generator=gen) * 255).to(dev)
    # ONNX Runtime runs on its own CUDA stream and returns host arrays: wall-clock timing is right there.
    timer = _Timer("cpu" if execution == "onnxruntime" else dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    rss = RssPeak()
    t_setup = time.perf_counter()
    with rss:
        if execution == "onnxruntime":
            from ..runtime.backends import OnnxRuntimeDisparity
            from ..analysis.onnx_export import export_onnx

            if onnx_dir is None:
                raise ValueError("the onnxruntime mode needs an export folder (--onnx-dir)")
            path = onnx_dir / f"{variant}_{ph}x{pw}_it{iters}.onnx"
            if not path.is_file():
                export_onnx(model.cpu(), path, ph, pw, iters)
                model.to(dev)
            backend = OnnxRuntimeDisparity(path)
            row["providers"] = backend.providers
            feeds = {"left": left.cpu().numpy(), "right": right.cpu().numpy()}

            def call():
                return torch.from_numpy(backend.session.run(["disparity"], feeds)[0])
        else:
            runner = NetworkRunner(model, iters, precision, execution)

            def call():
                return runner(left, right)
        first_ms, out = timer.time_ms(call)  # compile / capture / engine build happen here
        row["first_call_ms"] = first_ms
        for _ in range(max(args.warmup - 1, 0)):
            call()
        samples = []
        t_all = time.perf_counter()
        for _ in range(args.repeats):
            ms, out = timer.time_ms(call)
            samples.append(ms)
        wall = time.perf_counter() - t_all
    row["setup_and_runs_s"] = time.perf_counter() - t_setup
    row["latency_ms"] = summarize(samples)
    row["throughput_fps"] = args.repeats / wall if wall > 0 else None
    row["repeats"] = args.repeats
    if cuda and execution == "onnxruntime":
        row["peak_memory_mib"] = None  # ONNX Runtime's own allocator: invisible to torch.cuda
        row["memory_kind"] = "not measured (ONNX Runtime allocator)"
    elif cuda:
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        row["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2 ** 20
        row["memory_kind"] = "cuda max_memory_allocated"
    else:
        row["peak_memory_mib"] = rss.peak_mib
        row["rss_increase_mib"] = rss.peak_mib - rss.start_mib
        row["memory_kind"] = "process RSS peak"
        row["memory_method"] = rss.method
    out = out.float().cpu()
    key = (variant, h, w, iters)
    if execution == "eager" and precision == "fp32":
        reference[key] = out
    if key in reference:
        diff = (out - reference[key]).abs()
        row["vs_eager_fp32"] = dict(max_abs_px=float(diff.max()), mean_abs_px=float(diff.mean()))
    if execution == "eager" and not args.no_stages:
        per_stage: Dict[str, List[float]] = {}
        gru_iters: List[List[float]] = [[] for _ in range(iters)]
        clock = StageClock(dev)
        with torch.no_grad():
            for _ in range(max(1, min(args.repeats, args.stage_repeats))):
                clock.start()
                staged_forward(model, left, right, iters, precision, clock)
                durations = clock.durations_ms()
                for name, ms in durations:
                    if name.startswith("gru_"):
                        gru_iters[int(name[4:])].append(ms)
                for name, ms in group_stage_times(durations).items():
                    per_stage.setdefault(name, []).append(ms)
        stages = {k: summarize(v)["median"] for k, v in per_stage.items()}
        total = sum(stages.values())
        row["stages_ms"] = stages
        row["stage_share_pct"] = {k: 100.0 * v / total for k, v in stages.items()} if total > 0 else None
        row["gru_iteration_ms"] = [summarize(v)["median"] for v in gru_iters]
    row["status"] = "ok"
    return row


def add_flops(row: Dict[str, Any], cfg: Any, cache: Dict[Tuple[int, int, int, str], Dict[str, Any]],
              peak_tflops: Optional[float]) -> None:
    """The row's FLOP and device-op count (counted once per padded size, iteration count and
    precision) and, with a known
    peak rate, its FLOP floor and how many times that floor the median is."""
    from ..analysis.simulated import count_flops

    key = (row["padded"][0], row["padded"][1], row["iters"], row["precision"])
    if key not in cache:
        try:
            cache[key] = count_flops(cfg, *key)
        except Exception as e:  # noqa: BLE001 - a counting failure must not lose the timing
            cache[key] = dict(error=f"{type(e).__name__}: {e}")
    row["flops"] = cache[key]
    if peak_tflops and "total" in cache[key]:
        row["floor_ms"] = cache[key]["total"] / (peak_tflops * 1e12) * 1e3
        row["x_floor"] = row["latency_ms"]["median"] / row["floor_ms"]


# ---------------------------------------------------------------------------------------- output
def format_flops(counted: Dict[Tuple[str, int, int, int, str], Dict[str, Any]], peak_tflops: Optional[float]) -> str:
    """Per-stage TFLOP of each (variant, height, width, iters, precision), the device ops it
    dispatches, and the floor at ``peak_tflops``."""
    from ..analysis.stages import NETWORK_STAGES

    lines = ["network work per stage, TFLOP (gru: all iterations); ops: non-view ops dispatched (about one "
             "kernel each in eager mode), in all and per GRU iteration"
             + (f"; floor: the total at {peak_tflops:g} TFLOP/s" if peak_tflops else "")]
    hdr = (f"{'variant':7} {'size':>9} {'it':>3} {'prec':>4} " + " ".join(f"{s:>15}" for s in NETWORK_STAGES)
           + f" {'total':>7} {'ops':>6} {'ops/it':>6}" + (f" {'floor ms':>9}" if peak_tflops else ""))
    lines += [hdr, "-" * len(hdr)]
    for (variant, h, w, iters, precision), flops in counted.items():
        cells = [flops["stages"].get(s) for s in NETWORK_STAGES]
        lines.append(f"{variant:7} {f'{h}x{w}':>9} {iters:>3} {precision:>4} "
                     + " ".join(f"{c / 1e12:15.3f}" if c is not None else f"{'-':>15}" for c in cells)
                     + f" {flops['total'] / 1e12:7.2f} {flops.get('device_ops', '-'):>6} "
                     + f"{flops.get('device_ops_per_gru_iteration', '-'):>6}"
                     + (f" {flops['total'] / (peak_tflops * 1e12) * 1e3:9.1f}" if peak_tflops else ""))
    return "\n".join(lines)


def format_tables(rows: Sequence[Dict[str, Any]], node: Dict[str, Dict[str, Any]],
                  peak_tflops: Optional[float] = None) -> str:
    lines = []
    head = (f"{'variant':7} {'size':>9} {'it':>3} {'mode':24} {'median ms':>10} {'p95 ms':>9} {'pairs/s':>8} "
            f"{'peak MiB':>9} {'x eager32':>9} {'max|d-d32| px':>13} {'node %':>7} {'TFLOP':>6} {'x floor':>7}")
    lines += [head, "-" * len(head)]
    legend = ("node %: the node's own work on the worker thread (all node stages but message building, which "
              "the publisher thread does beside the next frame) relative to the median latency")
    base = {(r["variant"], r["height"], r["width"], r["iters"]): r["latency_ms"]["median"]
            for r in rows if r.get("status") == "ok" and r["mode"] == "eager-fp32"}
    for r in rows:
        size = f"{r['height']}x{r['width']}"
        if r.get("status") != "ok":
            lines.append(f"{r['variant']:7} {size:>9} {r['iters']:>3} {r['mode']:24} {r.get('status')}: "
                         f"{r.get('reason', '')}")
            continue
        lat = r["latency_ms"]
        b = base.get((r["variant"], r["height"], r["width"], r["iters"]))
        speed = f"{b / lat['median']:.2f}" if b else "-"
        diff = r.get("vs_eager_fp32")
        dtxt = f"{diff['max_abs_px']:.2e}" if diff else "-"
        nd = node.get(size)
        ntxt = f"{100.0 * nd['worker_ms'] / lat['median']:.1f}" if nd and "worker_ms" in nd else "-"
        fps = f"{r['throughput_fps']:.2f}" if r.get("throughput_fps") else "-"
        mem = f"{r['peak_memory_mib']:.0f}" if r.get("peak_memory_mib") is not None else "-"
        flops = r.get("flops") or {}
        ftxt = f"{flops['total'] / 1e12:.2f}" if "total" in flops else "-"
        xtxt = f"{r['x_floor']:.1f}" if r.get("x_floor") is not None else "-"
        lines.append(f"{r['variant']:7} {size:>9} {r['iters']:>3} {r['mode']:24} {lat['median']:10.1f} "
                     f"{lat['p95']:9.1f} {fps:>8} {mem:>9} {speed:>9} {dtxt:>13} {ntxt:>7} {ftxt:>6} {xtxt:>7}")
    if node and rows:
        lines.append(legend)
    if any((r.get("flops") or {}).get("total") for r in rows):
        lines.append("TFLOP: PyTorch's FLOP counter (2 per multiply-add) on the simulated CUDA device; x floor: the "
                     "median over TFLOP / peak, "
                     + (f"peak {peak_tflops:g} TFLOP/s dense bf16" if peak_tflops else
                        "no peak known for this device (--peak-tflops)"))
    counted = {}
    for r in rows:
        flops = r.get("flops") or {}
        if flops.get("stages"):
            counted.setdefault((r["variant"], r["height"], r["width"], r["iters"], r["precision"]), flops)
    if counted:
        lines.append("")
        lines.append(format_flops(counted, peak_tflops))
    staged = [r for r in rows if r.get("stages_ms")]
    if staged:
        from ..analysis.stages import NETWORK_STAGES

        lines.append("")
        lines.append("network stages, median ms (share %)")
        hdr = f"{'variant':7} {'size':>9} {'it':>3} {'mode':12} " + " ".join(f"{s:>18}" for s in NETWORK_STAGES)
        lines += [hdr, "-" * len(hdr)]
        for r in staged:
            cells = []
            for s in NETWORK_STAGES:
                ms = r["stages_ms"].get(s)
                pct = (r.get("stage_share_pct") or {}).get(s)
                cells.append(f"{ms:9.1f} ({pct:4.1f}%)" if ms is not None and pct is not None else f"{'-':>18}")
            size = f"{r['height']}x{r['width']}"
            lines.append(f"{r['variant']:7} {size:>9} {r['iters']:>3} {r['mode']:12} "
                         + " ".join(f"{c:>18}" for c in cells))
    if node:
        lines.append("")
        lines.append("node stages per pair (network excluded), median ms; geometry on the host or the network's device")
        hdr = f"{'size':>9} {'geometry':>8} " + " ".join(f"{s:>16}" for s in NODE_STAGES) + f" {'total':>8}"
        lines += [hdr, "-" * len(hdr)]
        for size, nd in node.items():
            for name, path in (nd.get("by_geometry_device") or {nd.get("geometry_device", "-"): nd}).items():
                cells = [path["stages_ms"][s] for s in NODE_STAGES]
                lines.append(f"{size:>9} {name:>8} " + " ".join(f"{c:16.2f}" if c is not None else f"{'n/a':>16}"
                                                                for c in cells) + f" {path['total_ms']:8.2f}")
                for stage, why in (path.get("not_measured") or {}).items():
                    lines.append(f"{'':>9} {'':>8} {stage} not measured: {why}")
    return "\n".join(lines)


def _count_only(args: argparse.Namespace, result: Dict[str, Any], peak_tflops: Optional[float],
                flush: Callable[[], None]) -> int:
    from ..model.padding import InputPadder
    from ..analysis.simulated import count_flops, simulated_cuda_model

    counted: Dict[Tuple[str, int, int, int, str], Dict[str, Any]] = {}
    precisions = sorted({p for _, p in args.modes if p}, key=["fp32", "fp16", "bf16"].index)
    for variant in args.variants:
        model = simulated_cuda_model(variant)
        for h, w in args.sizes:
            ph, pw = InputPadder(h, w).padded_size
            for iters in args.iters:
                for precision in precisions:
                    flops = count_flops(model, ph, pw, iters, precision)
                    counted[(variant, h, w, iters, precision)] = flops
                    result["rows"].append(dict(variant=variant, height=h, width=w, padded=[ph, pw], iters=iters,
                                               precision=precision, status="counted", flops=flops))
                    flush()
    print(format_flops(counted, peak_tflops))
    flush()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="foundation-stereo-benchmark", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Modes: EXECUTION-PRECISION with EXECUTION in eager, compile, cudagraph, compile-cudagraph and "
               "PRECISION in fp32, fp16, bf16 (fp16/bf16 and CUDA graphs need CUDA), or 'onnxruntime' (exports "
               "the network first; slow). Modes that cannot run here are listed as skipped with the reason.")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default grid (default: cpu-smoke on the CPU, gpu-quick on CUDA)")
    p.add_argument("--variants", type=comma_list(str), default=None, help="comma list of vits, vitb, vitl")
    p.add_argument("--sizes", type=comma_list(parse_size), default=None, help="comma list of HEIGHTxWIDTH camera sizes")
    p.add_argument("--iters", type=comma_list(positive_int), default=None, help="comma list of GRU iteration counts")
    p.add_argument("--modes", type=comma_list(parse_mode), default=None, help="comma list of modes (see below)")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed runs per configuration")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (>= 1: the first call is timed "
                                                              "separately as first_call_ms)")
    p.add_argument("--stage-repeats", type=positive_int, default=5, help="staged runs per eager configuration")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage breakdown")
    p.add_argument("--no-node", action="store_true", help="skip the node-stage timing")
    p.add_argument("--no-network", action="store_true", help="skip the network timing (node timings only)")
    p.add_argument("--node-rate", type=comma_list(float), default=None, metavar="MS[,MS]",
                   help="also run the live node (rclpy) with the network replaced by a wait of MS milliseconds and "
                        "report its frame rate and what it adds, with and without the publisher pipeline")
    p.add_argument("--node-rate-seconds", type=float, default=4.0, help="measuring time per --node-rate run")
    p.add_argument("--checkpoint", default=None, help="real weights (then --variants is taken from its cfg.yaml)")
    p.add_argument("--onnx-dir", default=None, help="where the onnxruntime mode writes exports (default: a temp dir)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's peak dense bf16 TFLOP/s, for the 'x floor' column (default: known for H100, "
                        "H200, A100)")
    p.add_argument("--no-flops", action="store_true", help="skip counting the network's FLOPs")
    p.add_argument("--flops-only", action="store_true",
                   help="only count the FLOPs and device ops of each variant, size, iteration count and precision of --modes (no GPU, no timing: seconds)")
    p.add_argument("--json", default=None, help="write the results here (rewritten after every configuration)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import tempfile

    import torch

    from ..model.config import VIT_SPECS

    device, problem = torch_device(args.device)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset or ("gpu-quick" if device.type == "cuda" else "cpu-smoke")]
    for key in ("variants", "sizes", "iters", "modes", "repeats", "warmup"):
        if getattr(args, key) is None:
            value = preset[key]
            setattr(args, key, [parse_mode(m) for m in value] if key == "modes" else value)
    args.warmup = max(int(args.warmup), 1)
    bad = [v for v in args.variants if v not in VIT_SPECS]
    if bad:
        print(f"error: unknown variant(s) {bad}; choose from {sorted(VIT_SPECS)}", file=sys.stderr)
        return 2
    if args.checkpoint:
        from ..model.checkpoint import resolve_checkpoint
        from ..model.config import FoundationStereoConfig

        try:
            args.variants = [FoundationStereoConfig.from_yaml(resolve_checkpoint(args.checkpoint)[1]).vit_size]
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    # Eager fp32 first, so every other mode can be compared with it.
    modes = sorted(dict.fromkeys(args.modes), key=lambda m: m != ("eager", "fp32"))
    onnx_tmp = None
    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else None
    if any(m[0] == "onnxruntime" for m in modes) and onnx_dir is None:
        onnx_tmp = tempfile.TemporaryDirectory(prefix="fs_bench_onnx_")
        onnx_dir = Path(onnx_tmp.name)
    if onnx_dir is not None:
        onnx_dir.mkdir(parents=True, exist_ok=True)
    result: Dict[str, Any] = dict(machine=machine_info(device), settings=dict(
        variants=args.variants, sizes=[f"{h}x{w}" for h, w in args.sizes], iters=args.iters,
        modes=["-".join(m) if m[0] != "onnxruntime" else "onnxruntime" for m in modes], repeats=args.repeats,
        warmup=args.warmup, checkpoint=args.checkpoint), rows=[], node={})

    def flush() -> None:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)

    peak_tflops = args.peak_tflops or peak_tflops_for(result["machine"].get("gpu"))
    result["settings"]["peak_tflops"] = peak_tflops
    print(f"# {result['machine'].get('gpu') or result['machine']['cpu']} ({device}), torch "
          f"{torch.__version__}", flush=True)
    if args.flops_only:
        return _count_only(args, result, peak_tflops, flush)
    reference: Dict[Tuple, Any] = {}
    with torch.no_grad():
        if not args.no_node:
            for h, w in args.sizes:
                paths = {g: time_node_stages(h, w, device, repeats=max(args.repeats, 3), geometry=g)
                         for g in ("host", "network")}
                # The figure related to the network is the path the node takes by default (auto).
                default = paths["network" if device.type == "cuda" else "host"]
                result["node"][f"{h}x{w}"] = dict(default, by_geometry_device=paths)
            flush()
        if args.node_rate:
            result["node_rate"] = run_node_rates(args, device)
            flush()
        for variant in ([] if args.no_network else args.variants):
            model, weights = build_model(variant, args.checkpoint, device)
            result["settings"]["weights"] = weights
            flop_counts: Dict[Tuple[int, int, int, str], Dict[str, Any]] = {}
            for size in args.sizes:
                for iters in args.iters:
                    for execution, precision in modes:
                        try:
                            row = run_config(model, variant, size, iters, execution, precision, device, args,
                                             reference, onnx_dir)
                        except torch.cuda.OutOfMemoryError as e:
                            row = dict(variant=variant, height=size[0], width=size[1], iters=iters,
                                       mode=f"{execution}-{precision}", status="out_of_memory",
                                       reason=str(e).splitlines()[0])
                            torch.cuda.empty_cache()
                        except Exception as e:  # noqa: BLE001 - one failing mode must not end the run
                            row = dict(variant=variant, height=size[0], width=size[1], iters=iters,
                                       mode=f"{execution}-{precision}", status="error",
                                       reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                        if row.get("status") == "ok" and not args.no_flops:
                            add_flops(row, model.cfg, flop_counts, peak_tflops)
                        result["rows"].append(row)
                        flush()
                        lat = row.get("latency_ms")
                        print(f"{variant} {size[0]}x{size[1]} it={iters} {row['mode']}: "
                              + (f"median {lat['median']:.1f} ms, p95 {lat['p95']:.1f} ms" if lat
                                 else f"{row['status']} ({row.get('reason', '')})"), flush=True)
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print()
    print(format_tables(result["rows"], result["node"], peak_tflops))
    if result.get("node_rate"):
        from .node_rate import format_rows

        done = [r for r in result["node_rate"] if r.get("status") == "ok"]
        print("\nthe live node with the network replaced by a wait (period: time per published frame)")
        print(format_rows(done) if done else "")
        for r in result["node_rate"]:
            if r.get("status") != "ok":
                print(f"node rate {r['height']}x{r['width']} {r['network_ms']:g} ms: {r['status']} ({r['reason']})")
    flush()
    if onnx_tmp is not None:
        onnx_tmp.cleanup()
    failed = [r for r in result["rows"] + result.get("node_rate", []) if r.get("status") == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
