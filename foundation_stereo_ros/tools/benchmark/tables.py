"""The printed tables: one line per network configuration, then the network's stages, its FLOPs
and the node's own stages."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ...analysis.stages import NETWORK_STAGES
from .flops import FlopCounts, format_flops
from .node_stages import NODE_STAGES

_NODE_LEGEND = ("node %: the node's own work on the worker thread (all node stages but message building, which "
                "the publisher thread does beside the next frame) relative to the median latency")


def _row_line(r: Dict[str, Any], base: Dict[tuple, float], node: Dict[str, Dict[str, Any]]) -> str:
    size = f"{r['height']}x{r['width']}"
    if r.get("status") != "ok":
        return (f"{r['variant']:7} {size:>9} {r['iters']:>3} {r['mode']:24} {r.get('status')}: "
                f"{r.get('reason', '')}")
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
    return (f"{r['variant']:7} {size:>9} {r['iters']:>3} {r['mode']:24} {lat['median']:10.1f} "
            f"{lat['p95']:9.1f} {fps:>8} {mem:>9} {speed:>9} {dtxt:>13} {ntxt:>7} {ftxt:>6} {xtxt:>7}")


def _network_table(rows: Sequence[Dict[str, Any]], node: Dict[str, Dict[str, Any]],
                   peak_tflops: Optional[float]) -> List[str]:
    head = (f"{'variant':7} {'size':>9} {'it':>3} {'mode':24} {'median ms':>10} {'p95 ms':>9} {'pairs/s':>8} "
            f"{'peak MiB':>9} {'x eager32':>9} {'max|d-d32| px':>13} {'node %':>7} {'TFLOP':>6} {'x floor':>7}")
    lines = [head, "-" * len(head)]
    base = {(r["variant"], r["height"], r["width"], r["iters"]): r["latency_ms"]["median"]
            for r in rows if r.get("status") == "ok" and r["mode"] == "eager-fp32"}
    lines += [_row_line(r, base, node) for r in rows]
    if node and rows:
        lines.append(_NODE_LEGEND)
    if any((r.get("flops") or {}).get("total") for r in rows):
        lines.append("TFLOP: PyTorch's FLOP counter (2 per multiply-add) on the simulated CUDA device; x floor: the "
                     "median over TFLOP / peak, "
                     + (f"peak {peak_tflops:g} TFLOP/s dense bf16" if peak_tflops else
                        "no peak known for this device (--peak-tflops)"))
    return lines


def _network_stage_table(staged: Sequence[Dict[str, Any]]) -> List[str]:
    lines = ["", "network stages, median ms (share %)"]
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
    return lines


def _node_stage_table(node: Dict[str, Dict[str, Any]]) -> List[str]:
    lines = ["", "node stages per pair (network excluded), median ms; geometry on the host or the network's device",
             "(stand-in: the stored disparity's own copy, the network's new output memory; not in the total)"]
    hdr = (f"{'size':>9} {'geometry':>8} " + " ".join(f"{s:>16}" for s in NODE_STAGES) + f" {'total':>8}"
           + f" {'(stand-in)':>10}")
    lines += [hdr, "-" * len(hdr)]
    for size, nd in node.items():
        for name, path in (nd.get("by_geometry_device") or {nd.get("geometry_device", "-"): nd}).items():
            cells = [path["stages_ms"][s] for s in NODE_STAGES]
            stand_in = path.get("stand_in_ms")
            lines.append(f"{size:>9} {name:>8} " + " ".join(f"{c:16.2f}" if c is not None else f"{'n/a':>16}"
                                                            for c in cells) + f" {path['total_ms']:8.2f}"
                         + (f" {stand_in:10.2f}" if stand_in is not None else f" {'-':>10}"))
            for stage, why in (path.get("not_measured") or {}).items():
                lines.append(f"{'':>9} {'':>8} {stage} not measured: {why}")
    return lines


def format_tables(rows: Sequence[Dict[str, Any]], node: Dict[str, Dict[str, Any]],
                  peak_tflops: Optional[float] = None) -> str:
    lines = _network_table(rows, node, peak_tflops)
    counted: FlopCounts = {}
    for r in rows:
        flops = r.get("flops") or {}
        if flops.get("stages"):
            counted.setdefault((r["variant"], r["height"], r["width"], r["iters"], r["precision"]), flops)
    if counted:
        lines.append("")
        lines.append(format_flops(counted, peak_tflops))
    staged = [r for r in rows if r.get("stages_ms")]
    if staged:
        lines += _network_stage_table(staged)
    if node:
        lines += _node_stage_table(node)
    return "\n".join(lines)
