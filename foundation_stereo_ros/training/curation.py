"""Self-curation (Wen et al., CVPR 2025, Sec. 4): run a model over a dataset and flag the samples
it cannot reproduce from their own ground truth.

The paper trains on its synthetic data, then evaluates the model on that same data and treats
samples with a bad-pixel rate (error > 2 px) above 60 % as ambiguous (e.g. repetitive texture,
transparent or mirror surfaces, broken labels) and drops them. The same pass catches real-data
faults: swapped left/right, a wrong ground-truth scale, images from different moments.

A sample is rejected when its ground truth is missing or too sparse (``min_valid_percent``),
when it cannot be read, or when its bad-``bad_threshold_px`` rate exceeds ``max_bad_percent``
or its EPE exceeds ``max_epe`` (either criterion may be switched off, not both).
"""
from __future__ import annotations

import csv
import heapq
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..fileio import write_rgb
from ..pipeline.geometry import colorize_disparity
from .data import StereoDataset, StereoSample
from .metrics import bad_key, disparity_errors

Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (left, right) uint8 RGB -> (H, W) disparity


@dataclass(frozen=True)
class CurationCriteria:
    bad_threshold_px: float = 2.0
    max_bad_percent: Optional[float] = 60.0  # the paper's threshold on bad-2
    max_epe: Optional[float] = None
    min_valid_percent: float = 0.0  # reject samples whose valid ground truth covers less of the image

    def __post_init__(self) -> None:
        if not self.bad_threshold_px > 0:
            raise ValueError(f"bad-pixel threshold must be > 0 px, got {self.bad_threshold_px}")
        if self.max_bad_percent is None and self.max_epe is None:
            raise ValueError("set a bad-pixel limit (--max-bad) or an EPE limit (--max-epe), or both")
        if self.max_bad_percent is not None and not 0 <= self.max_bad_percent <= 100:
            raise ValueError(f"max_bad_percent must be in [0, 100], got {self.max_bad_percent}")
        if self.max_epe is not None and not self.max_epe > 0:
            raise ValueError(f"max_epe must be > 0 px, got {self.max_epe}")
        if not 0 <= self.min_valid_percent <= 100:
            raise ValueError(f"min_valid_percent must be in [0, 100], got {self.min_valid_percent}")

    def describe(self) -> str:
        t = f"{self.bad_threshold_px:g}"
        parts = []
        if self.max_bad_percent is not None:
            parts.append(f"bad-{t} > {self.max_bad_percent:g} % (error > {t} px on more than "
                         f"{self.max_bad_percent:g} % of the valid ground-truth pixels)")
        if self.max_epe is not None:
            parts.append(f"EPE > {self.max_epe:g} px")
        text = " or ".join(parts)
        if self.min_valid_percent > 0:
            text += f", or valid ground truth on less than {self.min_valid_percent:g} % of the image"
        return text


@dataclass
class SampleScore:
    name: str
    epe: float = float("nan")
    bad_percent: float = float("nan")
    valid_percent: float = 0.0
    kept: bool = False
    reason: str = ""

    @property
    def severity(self) -> Tuple[float, float]:
        """Sort key, larger = worse; unscored samples rank first."""
        bad = self.bad_percent if math.isfinite(self.bad_percent) else float("inf")
        epe = self.epe if math.isfinite(self.epe) else float("inf")
        return bad, epe


@dataclass
class CurationResult:
    criteria: CurationCriteria
    scores: List[SampleScore]
    worst: List[Tuple[SampleScore, StereoSample, np.ndarray]] = field(default_factory=list)

    @property
    def kept(self) -> List[str]:
        return [s.name for s in self.scores if s.kept]

    @property
    def rejected(self) -> List[str]:
        return [s.name for s in self.scores if not s.kept]


def judge(score: SampleScore, criteria: CurationCriteria) -> SampleScore:
    """Fill ``kept``/``reason`` of a scored sample."""
    reasons = []
    if score.valid_percent <= 0:
        reasons.append("no valid ground truth")
    elif score.valid_percent < criteria.min_valid_percent:
        reasons.append(f"valid ground truth on {score.valid_percent:.3g} % < {criteria.min_valid_percent:g} %")
    else:
        t = f"{criteria.bad_threshold_px:g}"
        if criteria.max_bad_percent is not None and not score.bad_percent <= criteria.max_bad_percent:
            reasons.append(f"bad-{t} {score.bad_percent:.3g} % > {criteria.max_bad_percent:g} %")
        if criteria.max_epe is not None and not score.epe <= criteria.max_epe:
            reasons.append(f"EPE {score.epe:.3g} px > {criteria.max_epe:g} px")
    score.kept = not reasons
    score.reason = "; ".join(reasons)
    return score


def curate(predict: Predictor, dataset: StereoDataset, criteria: CurationCriteria = CurationCriteria(),
           worst: int = 8, progress: Optional[Callable[[int, int, SampleScore], None]] = None,
           indices: Optional[Sequence[int]] = None) -> CurationResult:
    """Score every sample of ``dataset`` (or those at ``indices``: one share of a run over several
    processes, joined by :func:`merge_results`) with ``predict`` and judge it; keeps the ``worst``
    scored samples (with their prediction) for the report's pictures."""
    scores: List[SampleScore] = []
    heap: List[Tuple[Tuple[float, float], int, Tuple[SampleScore, StereoSample, np.ndarray]]] = []
    todo = range(len(dataset)) if indices is None else indices
    for done, i in enumerate(todo, start=1):
        name = dataset.specs[i].name
        try:
            sample = dataset[i]
        except (ValueError, OSError) as e:
            score = SampleScore(name, kept=False, reason=f"unreadable: {e}")
            scores.append(score)
            if progress:
                progress(done, len(todo), score)
            continue
        pred = np.asarray(predict(sample.left, sample.right), dtype=np.float32)
        if pred.shape != sample.disparity.shape:
            raise ValueError(f"{name}: the predictor returned {pred.shape}, expected {sample.disparity.shape}")
        m = disparity_errors(pred, sample.disparity, sample.valid, (criteria.bad_threshold_px,))
        score = judge(SampleScore(name, m["epe"], m[bad_key(criteria.bad_threshold_px)],
                                  100.0 * m["valid_pixels"] / sample.valid.size), criteria)
        scores.append(score)
        if worst > 0 and score.valid_percent > 0:
            item = (score.severity, i, (score, sample, pred))
            if len(heap) < worst:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
        if progress:
            progress(i + 1, len(dataset), score)
    return CurationResult(criteria, scores, _rank([(sev, i, entry) for sev, i, entry in heap], worst))


def _rank(items: List[Tuple[Tuple[float, float], int, Tuple[SampleScore, StereoSample, np.ndarray]]], worst: int
          ) -> List[Tuple[SampleScore, StereoSample, np.ndarray]]:
    """The ``worst`` items by (severity, index), listed worst first and, at equal severity, by index."""
    chosen = sorted(items, key=lambda it: it[:2], reverse=True)[:max(0, worst)]
    return [entry for _, _, entry in sorted(chosen, key=lambda it: (it[0], -it[1]), reverse=True)]


def merge_results(parts: Sequence[CurationResult], names: Sequence[str], worst: int = 8) -> CurationResult:
    """One result from the shares of a dataset (sample names ``names``, in dataset order) that
    several processes curated: the same as one process curating it all."""
    if not parts:
        raise ValueError("merge_results needs at least one part")
    order = {n: i for i, n in enumerate(names)}
    scores = sorted((s for p in parts for s in p.scores), key=lambda s: order[s.name])
    items = [(e[0].severity, order[e[0].name], e) for p in parts for e in p.worst]
    return CurationResult(parts[0].criteria, scores, _rank(items, worst))


# ------------------------------------------------------------------------- report

def _label(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.rectangle(out, (0, 0), (min(out.shape[1], 8 + 9 * len(text)), 22), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def sample_picture(sample: StereoSample, pred: np.ndarray, bad_threshold_px: float, max_width: int = 480) -> np.ndarray:
    """RGB mosaic: left | right / ground truth | prediction / error | bad pixels."""
    gt = np.where(sample.valid, sample.disparity, np.nan)
    hi = float(np.nanmax(gt)) if np.isfinite(gt).any() else float(np.nanmax(pred))
    err = np.where(sample.valid, np.abs(pred - sample.disparity), np.nan)
    bad = np.zeros(sample.left.shape, np.uint8)
    bad[sample.valid] = (60, 160, 60)
    bad[sample.valid & ~(np.abs(pred - sample.disparity) <= bad_threshold_px)] = (220, 40, 40)
    tiles = [_label(sample.left, "left"), _label(sample.right, "right"),
             _label(colorize_disparity(gt, 0.0, hi), "ground truth"),
             _label(colorize_disparity(pred, 0.0, hi), "prediction"),
             _label(colorize_disparity(err, 0.0, 4 * bad_threshold_px), f"|error| 0..{4 * bad_threshold_px:g} px"),
             _label(bad, f"red: error > {bad_threshold_px:g} px")]
    h, w = sample.left.shape[:2]
    s = min(1.0, max_width / w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    tiles = [cv2.resize(t, size, interpolation=cv2.INTER_AREA) if s < 1 else t for t in tiles]
    return np.concatenate([np.concatenate(tiles[i:i + 2], axis=1) for i in (0, 2, 4)], axis=0)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[-80:].strip("._") or "sample"


def write_curation(result: CurationResult, out_dir: Path, title: str = "") -> Dict[str, Path]:
    """kept.txt, rejected.txt, scores.csv, report.md and worst/*.png in ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "worst").mkdir(parents=True, exist_ok=True)
    c = result.criteria
    t = f"{c.bad_threshold_px:g}"
    paths = {k: out_dir / f for k, f in (("kept", "kept.txt"), ("rejected", "rejected.txt"),
                                         ("scores", "scores.csv"), ("report", "report.md"))}
    header = f"# foundation-stereo-curate: rejected when {c.describe()}\n"
    paths["kept"].write_text(header + "".join(n + "\n" for n in result.kept))
    paths["rejected"].write_text(header + "".join(n + "\n" for n in result.rejected))
    with open(paths["scores"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "epe", f"bad_{t}", "valid_percent", "kept", "reason"])
        for s in sorted(result.scores, key=lambda s: s.severity, reverse=True):
            w.writerow([s.name, f"{s.epe:.6g}", f"{s.bad_percent:.6g}", f"{s.valid_percent:.6g}", int(s.kept),
                        s.reason])
    reasons: Dict[str, int] = {}
    for s in result.scores:
        if not s.kept:
            key = s.reason.split(" ")[0] if s.reason.startswith(("bad-", "EPE")) else s.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    lines = [f"# Self-curation report{': ' + title if title else ''}", "",
             f"Rejected when {c.describe()}.", "",
             f"- samples: {len(result.scores)}", f"- kept: {len(result.kept)} (`kept.txt`)",
             f"- rejected: {len(result.rejected)} (`rejected.txt`; train without them with "
             f"`foundation-stereo-finetune ... --exclude rejected.txt`)"]
    lines += [f"  - {k}: {v}" for k, v in sorted(reasons.items())]
    lines += ["", "All per-sample numbers are in `scores.csv`, worst first.", "", "## Worst samples", "",
              f"| rank | sample | EPE (px) | bad-{t} (%) | valid GT (%) | verdict |", "|---|---|---|---|---|---|"]
    for rank, (score, sample, pred) in enumerate(result.worst, 1):
        pic = out_dir / "worst" / f"{rank:02d}_{_safe(Path(score.name).stem or score.name)}.png"
        write_rgb(pic, sample_picture(sample, pred, c.bad_threshold_px))
        verdict = "kept" if score.kept else f"rejected: {score.reason}"
        lines.append(f"| {rank} | `{score.name}` | {score.epe:.3g} | {score.bad_percent:.3g} | "
                     f"{score.valid_percent:.3g} | {verdict} |")
        paths[f"worst_{rank}"] = pic
    lines.append("")
    for rank, (score, _, _) in enumerate(result.worst, 1):
        lines += [f"### {rank}. `{score.name}`", "",
                  f"![{rank}](worst/{paths[f'worst_{rank}'].name})", ""]
    paths["report"].write_text("\n".join(lines))
    return paths
