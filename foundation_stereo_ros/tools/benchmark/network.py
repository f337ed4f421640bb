"""The network timed in one configuration (variant, size, GRU iterations, execution mode):
latency, throughput, peak memory, difference from eager fp32 and, in eager modes, per stage."""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ...analysis.onnx_export import export_onnx
from ...analysis.stages import StageClock, group_stage_times, staged_forward
from ...model import FoundationStereo, FoundationStereoConfig, load_model
from ...model.padding import InputPadder
from ...pipeline.backends import onnx_provider_list
from ...runtime.fastpath import NetworkRunner, mode_unavailable_reason
from ...runtime.onnx_runner import OnnxRunner
from .memory import RssPeak
from .modes import mode_name
from .stats import summarize


@dataclass(frozen=True)
class NetworkConfig:
    """One configuration of the grid: the network and how it runs."""

    variant: str
    height: int  # camera size; the network sees it padded to multiples of 32
    width: int
    iters: int
    execution: str  # an EXECUTIONS name, or 'onnxruntime'
    precision: str

    @property
    def mode(self) -> str:
        return mode_name(self.execution, self.precision)


@dataclass(frozen=True)
class RunOptions:
    """How every configuration is timed (the command line's --repeats, --warmup ...)."""

    device: Any  # torch.device
    repeats: int
    warmup: int  # untimed calls, the first of them timed apart as first_call_ms
    stage_repeats: int = 5
    stages: bool = True  # per-stage breakdown of the eager modes
    onnx_dir: Optional[Path] = None  # where the onnxruntime mode writes its exports


def build_model(variant: str, checkpoint: Optional[str], device):
    if checkpoint:
        model = load_model(checkpoint, device=device)
        return model, f"checkpoint {checkpoint}"
    torch.manual_seed(0)
    return FoundationStereo(FoundationStereoConfig(vit_size=variant)).eval().to(device), "random weights (seed 0)"


class _Timer:
    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def time_ms(self, fn: Callable[[], Any]) -> Tuple[float, Any]:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)), out
        t = time.perf_counter()
        out = fn()
        return (time.perf_counter() - t) * 1e3, out


def _unavailable_reason(config: NetworkConfig, device: torch.device) -> Optional[str]:
    if config.execution != "onnxruntime":
        return mode_unavailable_reason(config.execution, config.precision, device)
    try:  # optional packages, needed by this mode only
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        return f"needs {e.name} (pip install onnxruntime onnxscript)"
    return None


def _network_call(model, config: NetworkConfig, options: RunOptions, left, right, row: Dict[str, Any]):
    """The call to time: the exported graph in ONNX Runtime, or the network in its execution mode."""
    if config.execution != "onnxruntime":
        runner = NetworkRunner(model, config.iters, config.precision, config.execution)
        return lambda: runner(left, right)
    if options.onnx_dir is None:
        raise ValueError("the onnxruntime mode needs an export folder (--onnx-dir)")
    ph, pw = row["padded"]
    path = options.onnx_dir / f"{config.variant}_{ph}x{pw}_it{config.iters}.onnx"
    if not path.is_file():
        export_onnx(model.cpu(), path, ph, pw, config.iters)
        model.to(options.device)
    backend = OnnxRunner(path, onnx_provider_list("auto", "cuda"))  # GPU providers first, as installed
    row["providers"] = backend.providers
    feeds = {"left": left.cpu().numpy(), "right": right.cpu().numpy()}
    return lambda: torch.from_numpy(backend.session.run(["disparity"], feeds)[0])


def _timed_calls(call: Callable[[], Any], timer: _Timer, options: RunOptions, row: Dict[str, Any]):
    """First call (compile / capture / engine build happen there), warm-up, then the timed runs:
    (samples in ms, wall time of the timed runs in s, the last output)."""
    first_ms, out = timer.time_ms(call)
    row["first_call_ms"] = first_ms
    for _ in range(max(options.warmup - 1, 0)):
        call()
    samples = []
    t_all = time.perf_counter()
    for _ in range(options.repeats):
        ms, out = timer.time_ms(call)
        samples.append(ms)
    return samples, time.perf_counter() - t_all, out


def _memory_fields(cuda: bool, onnxruntime: bool, rss: RssPeak) -> Dict[str, Any]:
    if cuda and onnxruntime:  # ONNX Runtime's own allocator: invisible to torch.cuda
        return dict(peak_memory_mib=None, memory_kind="not measured (ONNX Runtime allocator)")
    if cuda:
        return dict(peak_memory_mib=torch.cuda.max_memory_allocated() / 2 ** 20,
                    peak_reserved_mib=torch.cuda.max_memory_reserved() / 2 ** 20,
                    memory_kind="cuda max_memory_allocated")
    return dict(peak_memory_mib=rss.peak_mib, rss_increase_mib=rss.peak_mib - rss.start_mib,
                memory_kind="process RSS peak", memory_method=rss.method)


def _stage_breakdown(model, left, right, config: NetworkConfig, options: RunOptions) -> Dict[str, Any]:
    """Median ms and share of each network stage, and of each GRU iteration (eager modes)."""
    per_stage: Dict[str, List[float]] = {}
    gru_iters: List[List[float]] = [[] for _ in range(config.iters)]
    clock = StageClock(torch.device(options.device))
    with torch.no_grad():
        for _ in range(max(1, min(options.repeats, options.stage_repeats))):
            clock.start()
            staged_forward(model, left, right, config.iters, config.precision, clock)
            durations = clock.durations_ms()
            for name, ms in durations:
                if name.startswith("gru_"):
                    gru_iters[int(name[4:])].append(ms)
            for name, ms in group_stage_times(durations).items():
                per_stage.setdefault(name, []).append(ms)
    stages = {k: summarize(v)["median"] for k, v in per_stage.items()}
    total = sum(stages.values())
    return dict(stages_ms=stages,
                stage_share_pct={k: 100.0 * v / total for k, v in stages.items()} if total > 0 else None,
                gru_iteration_ms=[summarize(v)["median"] for v in gru_iters])


def _inputs(height: int, width: int, device: torch.device):
    gen = torch.Generator().manual_seed(1)
    left = (torch.rand(1, 3, height, width, generator=gen) * 255).to(device)
    right = (torch.rand(1, 3, height, width, generator=gen) * 255).to(device)
    return left, right


def run_config(model, config: NetworkConfig, options: RunOptions, reference: Dict[Tuple, Any]) -> Dict[str, Any]:
    """Time ``model`` in ``config``; the eager fp32 output of each (variant, size, iters) is kept
    in ``reference`` and every other mode's output compared with it."""
    ph, pw = InputPadder(config.height, config.width).padded_size
    row: Dict[str, Any] = dict(variant=config.variant, height=config.height, width=config.width, padded=[ph, pw],
                               iters=config.iters, mode=config.mode, execution=config.execution,
                               precision=config.precision, batch=1)
    dev = torch.device(options.device)
    reason = _unavailable_reason(config, dev)
    if reason is not None:
        row.update(status="skipped", reason=reason)
        return row
    left, right = _inputs(ph, pw, dev)
    onnxruntime = config.execution == "onnxruntime"
    # ONNX Runtime runs on its own CUDA stream and returns host arrays: wall-clock timing is right there.
    timer = _Timer("cpu" if onnxruntime else dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    rss = RssPeak()
    t_setup = time.perf_counter()
    with rss:
        call = _network_call(model, config, options, left, right, row)
        samples, wall, out = _timed_calls(call, timer, options, row)
    row["setup_and_runs_s"] = time.perf_counter() - t_setup
    row["latency_ms"] = summarize(samples)
    row["throughput_fps"] = options.repeats / wall if wall > 0 else None
    row["repeats"] = options.repeats
    row.update(_memory_fields(cuda, onnxruntime, rss))
    out = out.float().cpu()
    key = (config.variant, config.height, config.width, config.iters)
    if (config.execution, config.precision) == ("eager", "fp32"):
        reference[key] = out
    if key in reference:
        diff = (out - reference[key]).abs()
        row["vs_eager_fp32"] = dict(max_abs_px=float(diff.max()), mean_abs_px=float(diff.mean()))
    if config.execution == "eager" and options.stages:
        row.update(_stage_breakdown(model, left, right, config, options))
    row["status"] = "ok"
    return row
