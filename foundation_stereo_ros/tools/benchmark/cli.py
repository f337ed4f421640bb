"""foundation-stereo-benchmark: where the time goes, per network stage and per node stage.

The command line: the grid from a preset and the options, the node's stages, the live node's
rate, then every network configuration, with the results written to --json after each (see the
package docstring for what is measured).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...model.checkpoint import resolve_checkpoint
from ...model.config import VIT_SPECS, FoundationStereoConfig
from ..cli_args import comma_list, parse_size, positive_int, resolve_device
from .flops import add_flops, count_only
from .live_node import PROBES, print_node_rates, run_node_rates
from .machine import machine_info, peak_tflops_for
from .modes import PRESETS, mode_name, parse_mode
from .network import NetworkConfig, RunOptions, build_model, run_config
from .node_stages import time_node_stages
from .tables import format_tables

Mode = Tuple[str, str]  # (execution, precision)


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
    p.add_argument("--node-rate-probe", choices=PROBES, default="messages",
                   help="how the --node-rate robot side takes the node's outputs: as Python messages, or 'raw' as "
                        "serialised bytes (all still cross DDS; the probe's own conversions leave the shared cores)")
    p.add_argument("--node-rate-dds", default="", metavar="PROFILE",
                   help="Fast DDS profile of both --node-rate sides: empty for the package's large-sample profile "
                        "(as the launch files load it), 'none' for Fast DDS's defaults, or a path; read once per "
                        "process, so compare profiles in separate runs")
    p.add_argument("--cameras", type=comma_list(positive_int), default=None, metavar="N[,N]",
                   help="instead of the grid: pairs per second of N cameras batched vs one pair at a time, and the "
                        "memory of one node serving N cameras vs N single-camera nodes (first variant and "
                        "iteration count, each size; e.g. --cameras 1,2,4 --sizes 96x128)")
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


def _complete_grid(args: argparse.Namespace, device: torch.device) -> Optional[str]:
    """Fill the options not given from the preset; the error message for bad ones, else None."""
    preset = PRESETS[args.preset or ("gpu-quick" if device.type == "cuda" else "cpu-smoke")]
    for key in ("variants", "sizes", "iters", "modes", "repeats", "warmup"):
        if getattr(args, key) is None:
            value = preset[key]
            setattr(args, key, [parse_mode(m) for m in value] if key == "modes" else value)
    args.warmup = max(int(args.warmup), 1)
    bad = [v for v in args.variants if v not in VIT_SPECS]
    if bad:
        return f"unknown variant(s) {bad}; choose from {sorted(VIT_SPECS)}"
    if args.checkpoint:
        try:
            args.variants = [FoundationStereoConfig.from_yaml(resolve_checkpoint(args.checkpoint)[1]).vit_size]
        except ValueError as e:
            return str(e)
    return None


def _onnx_folder(args: argparse.Namespace, modes: Sequence[Mode]):
    """(folder for the onnxruntime mode's exports or None, the temporary directory to clean up or None)."""
    onnx_tmp = None
    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else None
    if any(m[0] == "onnxruntime" for m in modes) and onnx_dir is None:
        onnx_tmp = tempfile.TemporaryDirectory(prefix="fs_bench_onnx_")
        onnx_dir = Path(onnx_tmp.name)
    if onnx_dir is not None:
        onnx_dir.mkdir(parents=True, exist_ok=True)
    return onnx_dir, onnx_tmp


def _json_writer(path: Optional[str], result: Dict[str, Any]) -> Callable[[], None]:
    def flush() -> None:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                json.dump(result, f, indent=1)
    return flush


def _time_node_stages(args: argparse.Namespace, device: torch.device) -> Dict[str, Dict[str, Any]]:
    node = {}
    for h, w in args.sizes:
        paths = {g: time_node_stages(h, w, device, repeats=max(args.repeats, 3), geometry=g)
                 for g in ("host", "network")}
        # The figure related to the network is the path the node takes by default (auto).
        default = paths["network" if device.type == "cuda" else "host"]
        node[f"{h}x{w}"] = dict(default, by_geometry_device=paths)
    return node


def _config_row(model, config: NetworkConfig, options: RunOptions, reference: Dict[Tuple, Any]) -> Dict[str, Any]:
    """:func:`run_config`'s row, or one that says why there is none: one failing mode must not end the run."""
    failed = dict(variant=config.variant, height=config.height, width=config.width, iters=config.iters,
                  mode=f"{config.execution}-{config.precision}")
    try:
        return run_config(model, config, options, reference)
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        return dict(failed, status="out_of_memory", reason=str(e).splitlines()[0])
    except Exception as e:  # noqa: BLE001 - reported in the row
        return dict(failed, status="error", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _time_variant(variant: str, args: argparse.Namespace, options: RunOptions, modes: Sequence[Mode],
                  result: Dict[str, Any], peak_tflops: Optional[float], flush: Callable[[], None]) -> None:
    """Every size, iteration count and mode of one variant, appended to ``result['rows']``."""
    model, weights = build_model(variant, args.checkpoint, options.device)
    result["settings"]["weights"] = weights
    reference: Dict[Tuple, Any] = {}
    flop_counts: Dict[Tuple[int, int, int, str], Dict[str, Any]] = {}
    for size in args.sizes:
        for iters in args.iters:
            for execution, precision in modes:
                config = NetworkConfig(variant, size[0], size[1], iters, execution, precision)
                row = _config_row(model, config, options, reference)
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
    if options.device.type == "cuda":
        torch.cuda.empty_cache()


def _new_result(args: argparse.Namespace, device: torch.device, modes: Sequence[Mode]) -> Dict[str, Any]:
    return dict(machine=machine_info(device), settings=dict(
        variants=args.variants, sizes=[f"{h}x{w}" for h, w in args.sizes], iters=args.iters,
        modes=[mode_name(*m) for m in modes], repeats=args.repeats,
        warmup=args.warmup, checkpoint=args.checkpoint), rows=[], node={})


def _measure(args: argparse.Namespace, device: torch.device, modes: Sequence[Mode], onnx_dir: Optional[Path],
             result: Dict[str, Any], peak_tflops: Optional[float], flush: Callable[[], None]) -> None:
    options = RunOptions(device, args.repeats, args.warmup, args.stage_repeats, not args.no_stages, onnx_dir)
    with torch.no_grad():
        if not args.no_node:
            result["node"].update(_time_node_stages(args, device))
            flush()
        if args.node_rate:
            result["node_rate"] = run_node_rates(args, device)
            flush()
        for variant in ([] if args.no_network else args.variants):
            _time_variant(variant, args, options, modes, result, peak_tflops, flush)


def _run_cameras(args: argparse.Namespace, device: torch.device) -> int:
    """--cameras: the multi-camera benchmark (:mod:`.cameras`) for each size."""
    from .cameras import CameraBenchmark, format_camera_tables, run_camera_benchmark  # also a worker's entry

    result: Dict[str, Any] = dict(machine=machine_info(device), cameras=[])
    flush = _json_writer(args.json, result)
    for h, w in args.sizes:
        bench = CameraBenchmark(args.variants[0], h, w, args.iters[0], tuple(args.cameras), args.repeats, args.warmup,
                                str(device), args.checkpoint)
        result["cameras"].append(run_camera_benchmark(bench))
        flush()
    print()
    print("\n\n".join(format_camera_tables(r) for r in result["cameras"]))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    problem = _complete_grid(args, device)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # Eager fp32 first, so every other mode can be compared with it.
    modes: List[Mode] = sorted(dict.fromkeys(args.modes), key=lambda m: m != ("eager", "fp32"))
    onnx_dir, onnx_tmp = _onnx_folder(args, modes)
    result = _new_result(args, device, modes)
    flush = _json_writer(args.json, result)
    peak_tflops = args.peak_tflops or peak_tflops_for(result["machine"].get("gpu"))
    result["settings"]["peak_tflops"] = peak_tflops
    print(f"# {result['machine'].get('gpu') or result['machine']['cpu']} ({device}), torch "
          f"{torch.__version__}", flush=True)
    if args.cameras:
        return _run_cameras(args, device)
    if args.flops_only:
        return count_only(args, result, peak_tflops, flush)
    _measure(args, device, modes, onnx_dir, result, peak_tflops, flush)
    print()
    print(format_tables(result["rows"], result["node"], peak_tflops))
    if result.get("node_rate"):
        print_node_rates(result["node_rate"])
    flush()
    if onnx_tmp is not None:
        onnx_tmp.cleanup()
    failed = [r for r in result["rows"] + result.get("node_rate", []) if r.get("status") == "error"]
    return 1 if failed else 0
