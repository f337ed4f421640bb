"""foundation-stereo-memory: the largest camera resolution each variant fits in a GPU memory budget.

For each variant, precision and inference kind (single pass, hierarchical) the peak memory of
one inference is measured at a few sample sizes: ``torch.cuda.max_memory_allocated`` on a GPU
(weights included); without a GPU, ``--device simulated-cuda`` (the default there) runs the
real forward pass on shape-only ("fake") CUDA tensors, with CUDA's autocast rules and the
attention kernels a GPU would pick, and traces the peak of live tensor storage op by op;
``--device cpu`` traces a real CPU pass the same way (fp32 only). A trace says nothing about
cuDNN workspaces, allocator rounding or the CUDA context, so its table is labelled as such.

A curve ``peak = a + b P + c P^2`` in the padded pixel count ``P`` is fitted to those peaks, and
for each budget (default 8, 16 and 24 GiB: Jetson Orin NX/AGX and desktop cards) and aspect ratio
the largest size whose fitted peak stays ``--reserve-gib`` below the budget is found. Each answer
is then measured at its own size and moved, 32 columns at a time, to the largest size whose
measured peak fits (``verified_peak_mib``; on a GPU only the answers that fit the card; not with
``--device cpu``), so the table rests on measured peaks, not only on the fit.

The peak does not depend on the GRU iteration count (each iteration's tensors are released
before the next one), so a few iterations suffice.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import weakref
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..analysis.simulated import (is_simulated, simulated_cuda, simulated_cuda_model, simulated_inputs,
                                  simulation_problem)
from ..model import FoundationStereo, FoundationStereoConfig
from ..model.config import VIT_SPECS
from ..vocabulary import PRECISIONS
from .cli_args import comma_list, parse_size, positive_int, resolve_device

DEFAULT_SAMPLES = ((240, 320), (480, 640), (720, 960))
ASPECTS = {"4:3": 4.0 / 3.0, "16:9": 16.0 / 9.0}


class StoragePeak:
    """Peak bytes of live tensor storage while active (a ``TorchDispatchMode``).

    Every storage an op returns is counted once, from its creation until it is garbage
    collected; storage that existed before (weights, inputs) is not counted. Works for real and
    fake tensors on any device.
    """

    def __init__(self) -> None:
        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if hasattr(t, "untyped_storage"):
                        tracker._count(t.untyped_storage())
                return out

        self._mode = _Mode()
        self._live: Dict[int, int] = {}
        self._seen_before: set = set()
        self.current = 0
        self.peak = 0

    def ignore(self, tensors: Sequence[Any]) -> None:
        """Storages that exist already (weights, inputs): never counted."""
        for t in tensors:
            self._seen_before.add(id(t.untyped_storage()))

    def _count(self, storage: Any) -> None:
        key = id(storage)
        if key in self._live or key in self._seen_before:
            return
        n = int(storage.nbytes())
        self._live[key] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __enter__(self) -> "StoragePeak":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)


SIMULATED = "simulated-cuda"
METHOD_CUDA = "cuda max_memory_allocated"
METHOD_CPU = "cpu tensor storage (traced)"
METHOD_SIMULATED = "simulated cuda tensor storage (traced; no workspaces or context)"


def padded_pixels(height: int, width: int) -> int:
    return (math.ceil(height / 32) * 32) * (math.ceil(width / 32) * 32)


def measure_peak_mib(model: Any, height: int, width: int, precision: str, hierarchical: bool, iters: int
                     ) -> Tuple[Optional[float], str]:
    """(peak MiB of one inference including the weights and, for fp16/bf16, the model's copies of
    its convolution and linear weights in that dtype), method); None when it ran out of memory."""
    param = next(model.parameters())
    if is_simulated(param):
        with simulated_cuda(param.fake_mode):
            model.prepare(precision)  # the copies live as long as the model: weights, not peak
    else:
        model.prepare(precision)
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    weights += model.cast_weights.nbytes()
    if is_simulated(param):
        with simulated_cuda(param.fake_mode):
            left, right = simulated_inputs(height, width)
            peak = _traced_peak(model, left, right, precision, hierarchical, iters)
        return (weights + peak) / 2 ** 20, METHOD_SIMULATED
    device = param.device
    gen = torch.Generator().manual_seed(0)
    left = (torch.rand(1, 3, height, width, generator=gen) * 255).to(device)
    right = (torch.rand(1, 3, height, width, generator=gen) * 255).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            with torch.no_grad():
                model.infer(left, right, iters=iters, hierarchical=hierarchical, precision=precision)
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            return None, METHOD_CUDA
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, METHOD_CUDA
    return (weights + _traced_peak(model, left, right, precision, hierarchical, iters)) / 2 ** 20, METHOD_CPU


def _traced_peak(model: Any, left: Any, right: Any, precision: str, hierarchical: bool, iters: int) -> int:
    """Bytes of the inputs plus the peak of storage made during one inference."""
    tracker = StoragePeak()
    tracker.ignore(list(model.parameters()) + list(model.buffers()) + model.cast_weights.tensors() + [left, right])
    with torch.no_grad(), tracker:
        model.infer(left, right, iters=iters, hierarchical=hierarchical, precision=precision)
    return tracker.peak + left.nbytes + right.nbytes


def fit_peak(pixels: Sequence[float], peaks_mib: Sequence[float]) -> Tuple[float, float, float]:
    """(a, b, c) of ``peak = a + b P + c P^2`` by least squares; c >= 0 (refit linear otherwise)."""
    p = np.asarray(pixels, np.float64)
    y = np.asarray(peaks_mib, np.float64)
    if p.size < 2 or np.unique(p).size < 2:
        raise ValueError("need peaks at two or more different sizes to fit")
    if np.unique(p).size >= 3:
        a, b, c = np.linalg.lstsq(np.stack([np.ones_like(p), p, p * p], 1), y, rcond=None)[0]
        if c >= 0:
            return float(a), float(b), float(c)
    a, b = np.linalg.lstsq(np.stack([np.ones_like(p), p], 1), y, rcond=None)[0]
    return float(a), float(b), 0.0


def _size_at(width: int, aspect: float) -> Tuple[int, int]:
    """(height, width): the height a multiple of 32 (at least 32) closest to ``width / aspect``."""
    return max(32, int(round(width / aspect / 32)) * 32), width


def largest_size(fit: Tuple[float, float, float], budget_mib: float, aspect: float,
                 max_width: int = 8192) -> Optional[Tuple[int, int]]:
    """Largest (height, width), both multiples of 32 and ``width / height`` close to ``aspect``,
    whose fitted peak is within ``budget_mib``; None if even 32 pixels high does not fit."""
    a, b, c = fit
    best = None
    for width in range(32, max_width + 1, 32):
        height, _ = _size_at(width, aspect)
        p = float(height * width)
        if a + b * p + c * p * p <= budget_mib:
            best = (height, width)
        elif best is not None and b > 0:
            break  # the fit grows with size: nothing wider fits either
    return best


def search_measured(measure: Any, guess: Tuple[int, int], usable_mib: float, aspect: float,
                    max_measurements: int = 12) -> Dict[str, Any]:
    """From the fit's answer, find the largest width (multiple of 32, height by ``aspect``) whose
    measured peak fits ``usable_mib``: shrink towards the budget while it does not fit, then step
    up by 32 while it does. ``measure((h, w))`` returns MiB, or None for out of memory."""
    width = guess[1]
    tried: Dict[int, Optional[float]] = {}

    def fits(w: int) -> bool:
        if w not in tried:
            tried[w] = measure(_size_at(w, aspect))
        return tried[w] is not None and tried[w] <= usable_mib

    while not fits(width) and len(tried) < max_measurements:
        if width <= 32:
            return dict(size=None, measurements=len(tried))
        peak = tried[width]
        factor = math.sqrt(usable_mib / peak) if peak else 0.8
        width = max(32, min(width - 32, int(width * factor) // 32 * 32))
    if not fits(width):
        return dict(size=list(_size_at(width, aspect)), measurements=len(tried), verified_peak_mib=tried[width],
                    verified_within_budget=False)
    while len(tried) < max_measurements and fits(width + 32):
        width += 32
    return dict(size=list(_size_at(width, aspect)), verified_peak_mib=tried[width], verified_within_budget=True,
                maximal=(width + 32) in tried, measurements=len(tried))


def analyse(model: Any, variant: str, precision: str, hierarchical: bool, samples: Sequence[Tuple[int, int]],
            budgets_gib: Sequence[float], reserve_gib: float, iters: int, verify: bool,
            device_total_mib: Optional[float]) -> Dict[str, Any]:
    """Measured sample peaks, the fit and the largest size per budget and aspect (one table row).
    With ``verify`` each answer of the fit is measured and corrected by :func:`search_measured`."""
    measured = []
    method = ""
    for h, w in samples:
        peak, method = measure_peak_mib(model, h, w, precision, hierarchical, iters)
        measured.append(dict(height=h, width=w, padded_pixels=padded_pixels(h, w), peak_mib=peak))
    ok = [m for m in measured if m["peak_mib"] is not None]
    row: Dict[str, Any] = dict(variant=variant, precision=precision, hierarchical=hierarchical, method=method,
                               samples=measured, reserve_gib=reserve_gib)
    try:
        fit = fit_peak([m["padded_pixels"] for m in ok], [m["peak_mib"] for m in ok])
    except ValueError as e:
        row.update(status="no_fit", reason=str(e))
        return row
    row["fit_mib"] = dict(a=fit[0], b_per_pixel=fit[1], c_per_pixel2=fit[2])

    def measure(size: Tuple[int, int]) -> Optional[float]:
        return measure_peak_mib(model, size[0], size[1], precision, hierarchical, iters)[0]

    fits: Dict[str, Dict[str, Any]] = {}
    for budget in budgets_gib:
        usable = (budget - reserve_gib) * 1024.0
        for name, aspect in ASPECTS.items():
            size = largest_size(fit, usable, aspect)
            entry: Dict[str, Any] = dict(size=list(size) if size else None, fit_size=list(size) if size else None)
            if size and verify and (device_total_mib is None or usable <= device_total_mib):
                entry.update(search_measured(measure, size, usable, aspect))
            fits[f"{budget:g}GiB {name}"] = entry
    row["largest"] = fits
    row["status"] = "ok"
    return row


def format_table(rows: Sequence[Dict[str, Any]], budgets_gib: Sequence[float]) -> str:
    cols = [f"{b:g}GiB {a}" for b in budgets_gib for a in ASPECTS]
    head = f"{'variant':7} {'precision':9} {'hier':5} " + " ".join(f"{c:>15}" for c in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for c in cols:
            e = (r.get("largest") or {}).get(c)
            if not e or not e.get("size"):
                cells.append(f"{'-':>15}")
                continue
            txt = f"{e['size'][0]}x{e['size'][1]}"
            if "verified_within_budget" in e:
                txt += "" if e["verified_within_budget"] else "!"
            cells.append(f"{txt:>15}")
        lines.append(f"{r['variant']:7} {r['precision']:9} {str(r['hierarchical']):5} " + " ".join(cells))
    lines.append("")
    lines.append("sizes are height x width (multiples of 32); each measured again at its own size and corrected "
                 "(unless --no-verify); '!' marks one whose peak still exceeded the budget")
    methods = sorted({r.get("method", "") for r in rows})
    lines.append(f"peaks: {', '.join(methods)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foundation-stereo-memory", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default=None,
                   help=f"cuda[:N], cpu (a traced CPU pass, fp32 only) or {SIMULATED} (a traced pass on shape-only "
                        f"CUDA tensors, no GPU needed; default: cuda if available, else {SIMULATED})")
    p.add_argument("--variants", type=comma_list(str), default=["vits", "vitl"], help="comma list of vits, vitb, vitl")
    p.add_argument("--precisions", type=comma_list(str), default=None,
                   help=f"comma list of fp32, fp16, bf16 (default: fp32,bf16 on a GPU or {SIMULATED}, fp32 on the CPU)")
    p.add_argument("--samples", type=comma_list(parse_size), default=list(DEFAULT_SAMPLES),
                   help="comma list of HEIGHTxWIDTH sizes whose peaks are measured for the fit")
    p.add_argument("--budgets-gib", type=comma_list(float), default=[8.0, 16.0, 24.0], help="comma list of GiB")
    p.add_argument("--reserve-gib", type=float, default=1.0,
                   help="left free in each budget for the CUDA context, the node and fragmentation")
    p.add_argument("--iters", type=positive_int, default=4, help="GRU iterations per measured inference")
    p.add_argument("--no-hierarchical", action="store_true", help="skip hierarchical inference")
    p.add_argument("--no-verify", action="store_true", help="do not re-measure the sizes found (always skipped with --device cpu)")
    p.add_argument("--json", default=None, help="write the results here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    simulated = args.device == SIMULATED or (args.device is None and not torch.cuda.is_available())
    if simulated and simulation_problem() is not None:
        if args.device == SIMULATED:
            print(f"error: {simulation_problem()}", file=sys.stderr)
            return 2
        print(f"note: {simulation_problem()}; tracing a real CPU pass instead", file=sys.stderr)
        simulated, args.device = False, "cpu"
    try:
        device = torch.device("cuda") if simulated else resolve_device(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    on_gpu = device.type == "cuda" and not simulated
    precisions = args.precisions or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    bad = [v for v in args.variants if v not in VIT_SPECS] + [p for p in precisions if p not in PRECISIONS]
    if bad:
        print(f"error: unknown variant(s) or precision(s): {bad}", file=sys.stderr)
        return 2
    if device.type != "cuda" and precisions != ["fp32"]:
        print(f"error: fp16/bf16 need a CUDA device (or --device {SIMULATED})", file=sys.stderr)
        return 2
    if any(b <= args.reserve_gib for b in args.budgets_gib):
        print(f"error: every budget must exceed --reserve-gib ({args.reserve_gib:g})", file=sys.stderr)
        return 2
    total = torch.cuda.get_device_properties(device).total_memory / 2 ** 20 if on_gpu else None
    name = torch.cuda.get_device_name(device) if on_gpu else (f"{SIMULATED} (traced on the CPU)" if simulated else "cpu")
    result: Dict[str, Any] = dict(device=SIMULATED if simulated else str(device), device_name=name,
                                  device_total_mib=total, torch=torch.__version__, iters=args.iters, rows=[])
    kinds = [False] if args.no_hierarchical else [False, True]
    for variant in args.variants:
        torch.manual_seed(0)
        if simulated:
            model = simulated_cuda_model(variant)
        else:
            model = FoundationStereo(FoundationStereoConfig(vit_size=variant)).eval().to(device)
        for precision in precisions:
            for hierarchical in kinds:
                row = analyse(model, variant, precision, hierarchical, args.samples, args.budgets_gib,
                              args.reserve_gib, args.iters, verify=(on_gpu or simulated) and not args.no_verify,
                              device_total_mib=total)
                result["rows"].append(row)
                print(f"{variant} {precision} hierarchical={hierarchical}: "
                      + ", ".join(f"{m['height']}x{m['width']} {m['peak_mib']:.0f} MiB" if m["peak_mib"] is not None
                                  else f"{m['height']}x{m['width']} out of memory" for m in row["samples"]),
                      flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(result, indent=1))
        del model
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
    print()
    print(f"# largest camera size per memory budget ({args.reserve_gib:g} GiB kept free), {result['device_name']}")
    print(format_table(result["rows"], args.budgets_gib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
