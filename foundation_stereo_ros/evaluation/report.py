"""The evaluation report folder: per-frame CSV, summary JSON, Markdown and HTML with pictures.

Layout of ``<out>/``::

    frames.csv          one row per frame and backend (metrics, latency, skip reason)
    agreement.csv       one row per frame and backend pair (only with two or more backends)
    summary.json        totals per backend, agreement, latency statistics, the run's settings
    report.md           the same as tables, with the pictures
    report.html         the same, self-contained apart from the PNGs
    pictures/           colourised disparity and depth, error maps against ground truth,
                        latency_histogram.png

Pictures use OpenCV only (no plotting library): disparity and depth in the turbo colour map
(disparity: far = blue, near = red; depth: near = red, far = blue; invalid = black), error maps
|pred - gt| from 0 (blue) to 2 x the largest bad-pixel threshold (red), missing predictions where
ground truth exists white, no ground truth black.
"""
from __future__ import annotations

import csv
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from foundation_stereo_ros.evaluation import metrics as M
from foundation_stereo_ros.evaluation.runner import FrameEvaluation, Totals

PathLike = os.PathLike

METRIC_COLUMNS: Tuple[Tuple[str, str, str], ...] = (  # key, header, format
    ("epe", "EPE (px)", "{:.3f}"),
    ("bad_1", "bad-1 (%)", "{:.2f}"),
    ("bad_2", "bad-2 (%)", "{:.2f}"),
    ("bad_3", "bad-3 (%)", "{:.2f}"),
    ("d1", "D1 (%)", "{:.2f}"),
    ("abs_rel", "AbsRel", "{:.4f}"),
    ("delta1", "δ<1.25 (%)", "{:.2f}"),
    ("completeness", "completeness (%)", "{:.2f}"),
    ("gt_coverage", "GT coverage (%)", "{:.2f}"),
)


def _fmt(value: Any, fmt: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


# ---------------------------------------------------------------------------------------------
# pictures

def _turbo(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB; non-finite values black."""
    v = np.asarray(values, np.float32)
    valid = np.isfinite(v)
    span = max(hi - lo, 1e-6)
    grey = np.zeros(v.shape, np.uint8)
    grey[valid] = np.clip((v[valid] - lo) / span * 255.0, 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    rgb[~valid] = 0
    return rgb


def colorize_disparity_map(disparity: np.ndarray, lo: float, hi: float) -> np.ndarray:
    d = np.asarray(disparity, np.float32).copy()
    d[~M.valid_mask(d)] = np.nan
    return _turbo(d, lo, hi)


def colorize_depth_map(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    z = np.asarray(depth, np.float32).copy()
    z[~M.valid_mask(z)] = np.nan
    return _turbo(-z, -far, -near)  # negated so that near is red, as in the disparity pictures


def error_map(pred: np.ndarray, gt: np.ndarray, max_err: float) -> np.ndarray:
    p, g = np.asarray(pred, np.float32), np.asarray(gt, np.float32)
    gv, pv = M.valid_mask(g), M.valid_mask(p)
    err = np.full(p.shape, np.nan, np.float32)
    both = gv & pv
    err[both] = np.abs(p[both] - g[both])
    rgb = _turbo(err, 0.0, max_err)
    rgb[gv & ~pv] = 255
    return rgb


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])):
        raise ValueError(f"{path}: could not write PNG")


_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def latency_histogram(latencies_ms: Dict[str, Sequence[float]], width: int = 720, height: int = 360) -> np.ndarray:
    """RGB picture of per-backend latency histograms (bars side by side in shared bins)."""
    img = np.full((height, width, 3), 255, np.uint8)
    series = {k: np.asarray(v, np.float64) for k, v in latencies_ms.items() if len(v)}
    left, right, top, bottom = 60, 20, 20 + 18 * max(len(series), 1), 45
    cv2.line(img, (left, height - bottom), (width - right, height - bottom), (0, 0, 0), 1)
    cv2.line(img, (left, top), (left, height - bottom), (0, 0, 0), 1)
    cv2.putText(img, "latency (ms)", (width // 2 - 50, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                cv2.LINE_AA)
    cv2.putText(img, "frames", (5, top - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if not series:
        cv2.putText(img, "no latency samples", (left + 20, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
        return img
    allv = np.concatenate(list(series.values()))
    lo, hi = float(allv.min()), float(allv.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    nbins = int(min(30, max(5, math.ceil(math.sqrt(allv.size)))))
    edges = np.linspace(lo, hi, nbins + 1)
    hists = {k: np.histogram(v, edges)[0] for k, v in series.items()}
    peak = max(int(h.max()) for h in hists.values())
    plot_w, plot_h = width - left - right, height - top - bottom
    bin_w = plot_w / nbins
    bar_w = max(1.0, bin_w / len(hists))
    for si, (name, h) in enumerate(hists.items()):
        colour = _PALETTE[si % len(_PALETTE)]
        for b, count in enumerate(h):
            if count == 0:
                continue
            x0 = int(left + b * bin_w + si * bar_w)
            y0 = int(height - bottom - count / peak * (plot_h - 5))
            cv2.rectangle(img, (x0, y0), (int(x0 + bar_w) - 1, height - bottom - 1), colour, -1)
        cv2.rectangle(img, (left + 10, 8 + 18 * si), (left + 24, 20 + 18 * si), colour, -1)
        med = float(np.median(series[name]))
        cv2.putText(img, f"{name} (median {med:.1f} ms, n={series[name].size})", (left + 30, 19 + 18 * si),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(0, nbins + 1, max(1, nbins // 6)):
        x = int(left + i * bin_w)
        cv2.line(img, (x, height - bottom), (x, height - bottom + 4), (0, 0, 0), 1)
        cv2.putText(img, f"{edges[i]:.1f}", (x - 15, height - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, str(peak), (10, top + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img


# ---------------------------------------------------------------------------------------------
# the report

@dataclass
class ReportPaths:
    folder: Path
    frames_csv: Path
    summary_json: Path
    markdown: Path
    html: Path
    pictures: Path
    agreement_csv: Optional[Path] = None

    def as_dict(self) -> Dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items() if v is not None}


class ReportWriter:
    """Collects frames as they are evaluated (rows are written at once, pictures for the frames
    ``picture_frame(index)`` selects) and writes the summary files at :meth:`finish`."""

    def __init__(self, folder: Path, labels: Sequence[str], picture_frame: Callable[[int], bool] = lambda i: i == 0,
                 thresholds: Sequence[float] = M.DEFAULT_BAD_THRESHOLDS):
        self.folder = Path(folder)
        self.pictures = self.folder / "pictures"
        self.pictures.mkdir(parents=True, exist_ok=True)
        self.labels = list(labels)
        self.picture_frame = picture_frame
        self.thresholds = tuple(thresholds)
        self._metric_keys = ["completeness", "gt_coverage", "epe"] + [f"bad_{t:g}".replace(".", "p")
                                                                      for t in self.thresholds] + ["d1", "abs_rel",
                                                                                                   "delta1"]
        self._csv_file = open(self.folder / "frames.csv", "w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["frame", "stamp_ns", "backend", "status", "latency_ms", *self._metric_keys, "message"])
        self._agr_file = None
        self._agr = None
        if len(self.labels) > 1:
            self._agr_file = open(self.folder / "agreement.csv", "w", newline="")
            self._agr = csv.writer(self._agr_file)
            self._agr.writerow(["frame", "stamp_ns", "a", "b", "mean_abs_diff", "within_1px", "within_3px",
                                "both_valid", "valid_overlap"])
        self.picture_sets: List[Dict[str, Any]] = []

    def add(self, frame: FrameEvaluation) -> None:
        rec = frame.record
        for label in self.labels:
            bf = frame.backends[label]
            if bf.problem is not None:
                self._csv.writerow([rec.index, rec.stamp_ns, label, f"skipped:{bf.problem}", "",
                                    *[""] * len(self._metric_keys), bf.message])
                continue
            summary = bf.counts.summary() if bf.counts else {}
            self._csv.writerow([rec.index, rec.stamp_ns, label, "ok",
                                f"{bf.latency_s * 1e3:.3f}" if bf.latency_s is not None else "",
                                *[_csv_value(summary.get(k)) for k in self._metric_keys], ""])
        if self._agr is not None:
            for (a, b), agr in frame.agreement.items():
                s = agr.summary()
                self._agr.writerow([rec.index, rec.stamp_ns, a, b, *[_csv_value(s[k]) for k in
                                                                      ("mean_abs_diff", "within_1px", "within_3px",
                                                                       "both_valid", "valid_overlap")]])
        self._csv_file.flush()
        if self.picture_frame(rec.index):
            self._pictures(frame)

    def _pictures(self, frame: FrameEvaluation) -> None:
        ok = [frame.backends[lb] for lb in self.labels if frame.backends[lb].result is not None]
        if not ok:
            return
        idx = frame.record.index
        stem = f"frame{idx:05d}"
        entry: Dict[str, Any] = {"frame": idx, "stamp_ns": frame.record.stamp_ns, "images": []}
        _write_png(self.pictures / f"{stem}_left.png", ok[0].result.left_rect)
        entry["images"].append(("left (rectified)", f"pictures/{stem}_left.png"))
        disps = [bf.result.disparity for bf in ok] + ([frame.gt_disparity] if frame.gt_disparity is not None else [])
        hi = max((float(np.nanpercentile(d[M.valid_mask(d)], 99.5)) for d in disps if M.valid_mask(d).any()),
                 default=1.0)
        depths = [bf.result.depth for bf in ok if bf.result.depth is not None]
        if frame.gt_depth is not None:
            depths.append(frame.gt_depth)
        zs = [d[M.valid_mask(d)] for d in depths if M.valid_mask(d).any()]
        near = min((float(np.percentile(z, 1)) for z in zs), default=0.0)
        far = max((float(np.percentile(z, 99)) for z in zs), default=1.0)
        if frame.gt_disparity is not None:
            _write_png(self.pictures / f"{stem}_gt_disparity.png", colorize_disparity_map(frame.gt_disparity, 0, hi))
            entry["images"].append(("ground-truth disparity", f"pictures/{stem}_gt_disparity.png"))
        max_err = 2.0 * max(self.thresholds) if self.thresholds else 6.0
        for bf in ok:
            r, lb = bf.result, bf.label
            _write_png(self.pictures / f"{stem}_{lb}_disparity.png", colorize_disparity_map(r.disparity, 0, hi))
            entry["images"].append((f"{lb}: disparity", f"pictures/{stem}_{lb}_disparity.png"))
            if r.depth is not None:
                _write_png(self.pictures / f"{stem}_{lb}_depth.png", colorize_depth_map(r.depth, near, far))
                entry["images"].append((f"{lb}: depth", f"pictures/{stem}_{lb}_depth.png"))
            if frame.gt_disparity is not None:
                _write_png(self.pictures / f"{stem}_{lb}_error.png", error_map(r.disparity, frame.gt_disparity, max_err))
                entry["images"].append((f"{lb}: |error| 0..{max_err:g} px", f"pictures/{stem}_{lb}_error.png"))
        self.picture_sets.append(entry)

    def close(self) -> None:
        """Close the CSV files (safe to call again)."""
        self._csv_file.close()
        if self._agr_file is not None:
            self._agr_file.close()

    def finish(self, totals: Totals, meta: Dict[str, Any], extra_sections: Optional[Dict[str, Any]] = None) -> ReportPaths:
        """Write summary.json, latency_histogram.png, report.md and report.html."""
        self.close()
        summary = {"meta": meta, **totals.summary()}
        if extra_sections:
            summary.update(extra_sections)
        summary_path = self.folder / "summary.json"
        summary_path.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
        hist = latency_histogram({lb: [s * 1e3 for s in totals.backends[lb].latencies_s] for lb in self.labels})
        _write_png(self.pictures / "latency_histogram.png", hist)
        md, page = _render(summary, self.picture_sets, self.labels, has_agreement=len(self.labels) > 1)
        (self.folder / "report.md").write_text(md)
        (self.folder / "report.html").write_text(page)
        return ReportPaths(self.folder, self.folder / "frames.csv", summary_path, self.folder / "report.md",
                           self.folder / "report.html", self.pictures,
                           self.folder / "agreement.csv" if len(self.labels) > 1 else None)


def _csv_value(v: Any) -> str:
    return "" if v is None else f"{v:.6g}"


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------------
# Markdown and HTML

def _tables(summary: Dict[str, Any], labels: Sequence[str], has_agreement: bool) -> List[Tuple[str, List[str], List[List[str]]]]:
    """(title, header, rows) of every table in the report, shared by Markdown and HTML."""
    tables = []
    backends = summary["backends"]
    has_gt = summary.get("has_ground_truth")
    cols = [c for c in METRIC_COLUMNS if has_gt or c[0] == "completeness"]
    header = ["backend", "frames", "skipped", *[c[1] for c in cols], "latency median (ms)", "latency p95 (ms)"]
    rows = []
    for lb in labels:
        b = backends[lb]
        rows.append([lb, str(b["frames"]), str(b["skipped"]), *[_fmt(b["metrics"].get(c[0]), c[2]) for c in cols],
                     _fmt(b["latency"]["median_ms"], "{:.1f}"), _fmt(b["latency"]["p95_ms"], "{:.1f}")])
    tables.append(("Summary" + ("" if has_gt else " (no ground truth in the bag)"), header, rows))
    if has_agreement and summary.get("agreement"):
        rows = [[a["a"], a["b"], _fmt(a["mean_abs_diff"]), _fmt(a["within_1px"], "{:.2f}"),
                 _fmt(a["within_3px"], "{:.2f}"), _fmt(a["both_valid"], "{:.2f}")] for a in summary["agreement"]]
        tables.append(("Agreement between backends", ["a", "b", "mean |a - b| (px)", "within 1 px (%)",
                                                      "within 3 px (%)", "both valid (%)"], rows))
    problems = [(lb, p, n) for lb in labels for p, n in backends[lb]["problems"].items()]
    if problems:
        tables.append(("Skipped frames", ["backend", "problem", "frames"], [[a, b, str(c)] for a, b, c in problems]))
    live = summary.get("live")
    if live:
        rows = []
        for lb, entry in live.get("backends", {}).items():
            m = entry.get("metrics", {})
            rows.append([lb, str(entry.get("frames", 0)), str(entry.get("dropped", 0)),
                         *[_fmt(m.get(c[0]), c[2]) for c in cols],
                         _fmt(entry.get("latency", {}).get("median_ms"), "{:.1f}"),
                         _fmt(entry.get("latency", {}).get("p95_ms"), "{:.1f}")])
        tables.append(("Live replay through the node (end-to-end latency: publish to receipt)",
                       ["backend", "frames", "dropped", *[c[1] for c in cols], "latency median (ms)",
                        "latency p95 (ms)"], rows))
    comparison = summary.get("live_vs_offline")
    if comparison:
        rows = [[c["backend"], c["metric"], _fmt(c["offline"], "{:.6g}"), _fmt(c["live"], "{:.6g}"),
                 _fmt(c["difference"], "{:.3g}")] for c in comparison.get("rows", [])]
        tables.append(("Live replay vs offline evaluation", ["backend", "metric", "offline", "live", "|difference|"],
                       rows))
    return tables


def _meta_lines(meta: Dict[str, Any]) -> List[Tuple[str, str]]:
    out = []
    for key in ("bag", "camera", "recording", "frames", "unpaired", "topics", "calibration", "sync", "backends", "notes"):
        if key in meta and meta[key] not in (None, {}, []):
            value = meta[key]
            out.append((key, json.dumps(value, default=_json_default) if isinstance(value, (dict, list)) else str(value)))
    return out


def _render(summary: Dict[str, Any], picture_sets: List[Dict[str, Any]], labels: Sequence[str],
            has_agreement: bool) -> Tuple[str, str]:
    meta = summary.get("meta", {})
    title = f"Stereo evaluation: {Path(str(meta.get('bag', 'recording'))).name}"
    if meta.get("camera"):
        title += f", camera {meta['camera']}"
    tables = _tables(summary, labels, has_agreement)
    md = [f"# {title}", ""]
    for k, v in _meta_lines(meta):
        md.append(f"- **{k}**: {v}")
    md.append("")
    def cells(values: Sequence[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    for name, header, rows in tables:
        md += [f"## {name}", "", cells(header), "|" + "---|" * len(header)]
        md += [cells(r) for r in rows]
        md.append("")
    md += ["## Latency", "", "Processing time per frame (decode, rectify, match, depth), warm-up runs excluded.",
           "", "![latency histogram](pictures/latency_histogram.png)", ""]
    for ps in picture_sets:
        md += [f"## Frame {ps['frame']} (stamp {ps['stamp_ns']} ns)", ""]
        md += [f"**{cap}**  \n![{cap}]({path})  " for cap, path in ps["images"]]
        md.append("")
    md += ["## Definitions", "",
           "EPE: mean |pred - gt| over pixels with both; bad-x: share of ground-truth pixels off by more than x px "
           "or without prediction; D1: KITTI outliers (> 3 px and > 5 %); AbsRel and δ<1.25 on depth; "
           "completeness: share of pixels with a valid disparity. Totals are pixel-weighted over all frames.", ""]

    esc = html.escape
    h = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
         "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}"
         "td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:4px}"
         "figure img{max-width:420px;image-rendering:pixelated}figcaption{font-size:0.85em}</style>",
         "</head><body>", f"<h1>{esc(title)}</h1>", "<ul>"]
    h += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in _meta_lines(meta)]
    h.append("</ul>")
    for name, header, rows in tables:
        h += [f"<h2>{esc(name)}</h2>", "<table>", "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in header) + "</tr>"]
        h += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
        h.append("</table>")
    h += ["<h2>Latency</h2>", "<p>Processing time per frame (decode, rectify, match, depth), warm-up runs excluded.</p>",
          "<img src='pictures/latency_histogram.png' alt='latency histogram'>"]
    for ps in picture_sets:
        h.append(f"<h2>Frame {ps['frame']} (stamp {ps['stamp_ns']} ns)</h2><div>")
        h += [f"<figure><img src='{esc(path)}' alt='{esc(cap)}'><figcaption>{esc(cap)}</figcaption></figure>"
              for cap, path in ps["images"]]
        h.append("</div>")
    h += ["</body></html>", ""]
    return "\n".join(md), "\n".join(h)
