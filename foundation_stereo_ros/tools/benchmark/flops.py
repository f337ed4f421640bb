"""The network's work in floating-point operations (counted on the simulated CUDA device,
:mod:`foundation_stereo_ros.analysis.simulated`) and how far a measured latency is from it."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from ...analysis.simulated import count_flops, simulated_cuda_model
from ...analysis.stages import NETWORK_STAGES
from ...model.padding import InputPadder
from ...vocabulary import PRECISIONS

# (variant, height, width, iters, precision) -> count_flops' result
FlopCounts = Dict[Tuple[str, int, int, int, str], Dict[str, Any]]


def add_flops(row: Dict[str, Any], cfg: Any, cache: Dict[Tuple[int, int, int, str], Dict[str, Any]],
              peak_tflops: Optional[float]) -> None:
    """The row's FLOP and device-op count (counted once per padded size, iteration count and
    precision) and, with a known
    peak rate, its FLOP floor and how many times that floor the median is."""
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


def format_flops(counted: FlopCounts, peak_tflops: Optional[float]) -> str:
    """Per-stage TFLOP of each (variant, height, width, iters, precision), the device ops it
    dispatches, and the floor at ``peak_tflops``."""
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


def count_only(args, result: Dict[str, Any], peak_tflops: Optional[float], flush: Callable[[], None]) -> int:
    """--flops-only: count each variant, size, iteration count and precision of --modes, time nothing."""
    counted: FlopCounts = {}
    precisions = sorted({p for _, p in args.modes if p}, key=list(PRECISIONS).index)
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
