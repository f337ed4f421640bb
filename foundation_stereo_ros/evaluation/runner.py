"""Run recorded stereo pairs through one or more backends and collect the numbers.

Every pair goes through :meth:`foundation_stereo_ros.pipeline.StereoProcessor.process_messages_batch`,
the call the live node makes (a batch of one, or one pair per camera of a multi-camera bag), so a
bag is processed offline exactly as the node processes it.
:func:`frame_counts_for` is the one place where a frame's outputs are scored; the live replay
(:mod:`.replay`) scores what the node published with the same function, which is what makes
offline and live numbers comparable.
"""
from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml

from foundation_stereo_ros.evaluation import metrics as M
from foundation_stereo_ros.evaluation.bag_pairing import StereoRecord
from foundation_stereo_ros.pipeline import SPECS, FrameError, MessageFrame, Outputs, StereoProcessor
from foundation_stereo_ros.pipeline.geometry import disparity_to_depth

_LABEL_OK = re.compile(r"[^A-Za-z0-9_.=-]+")


@dataclass(frozen=True)
class BackendRun:
    """One backend configuration to evaluate; ``label`` names it in reports and file names."""

    label: str
    config: Any  # foundation_stereo_ros.pipeline.ProcessorConfig


def coerce_value(text: str, name: Optional[str] = None) -> Any:
    """A command-line value as the type of processing parameter ``name`` (so that a checkpoint
    called '2025' stays a string); without a known name, as bool, int, float or str, whichever it
    reads as. A value that does not read as its parameter's type is returned as is, for the
    configuration's validation to reject with its message."""
    kind = SPECS[name].type if name in SPECS else None
    low = text.strip().lower()
    if kind is str:
        return text
    if kind in (None, bool) and low in ("true", "false"):
        return low == "true"
    for conv in ((int, float) if kind is None else (kind,) if kind is not bool else ()):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_backend_spec(spec: str, base: Any) -> BackendRun:
    """``sgbm`` or ``foundation_stereo:iters=8,scale=0.5``: a backend with parameter overrides on
    top of ``base`` (a ProcessorConfig). Raises ValueError naming the bad part."""
    name, _, rest = spec.partition(":")
    changes: Dict[str, Any] = {"backend": name.strip()}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"backend spec {spec!r}: {item!r} is not key=value")
        changes[key.strip()] = coerce_value(value.strip(), key.strip())
    try:
        config = type(base).from_mapping({**base.as_dict(), **changes})
    except ValueError as exc:
        raise ValueError(f"backend spec {spec!r}: {exc}") from None
    return BackendRun(_LABEL_OK.sub("_", spec.strip().replace(":", "-").replace(",", "-")), config)


def focal_and_baseline(record: StereoRecord) -> Tuple[float, float]:
    """f (px) and baseline (m) of the pair from its right CameraInfo P, as the node reads them."""
    p = np.asarray(record.right_info.p, dtype=np.float64).reshape(3, 4)
    if not (np.isfinite(p[0, 0]) and p[0, 0] > 0):
        raise ValueError(f"right CameraInfo P[0,0] must be a positive focal length, got {p[0, 0]}")
    return float(p[0, 0]), float(-p[0, 3] / p[0, 0])


def ground_truth(record: StereoRecord) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(disparity in the published convention, 0 = unknown; depth in metres, NaN = unknown),
    each derived from the other through Z = f * t / d (f, t of the pair's CameraInfo) when the
    bag carries only one."""
    disp, depth = record.gt_disparity, record.gt_depth
    if disp is None and depth is None:
        return None, None
    f, t = focal_and_baseline(record)
    if disp is None and depth is not None:
        disp = M.depth_to_disparity(depth, f, t)
    if depth is None and disp is not None:
        depth = disparity_to_depth(disp, f, t)
    return disp, depth


def frame_counts_for(disparity: np.ndarray, depth: Optional[np.ndarray], gt_disparity: Optional[np.ndarray],
                     gt_depth: Optional[np.ndarray],
                     thresholds: Sequence[float] = M.DEFAULT_BAD_THRESHOLDS) -> M.ErrorCounts:
    """Score one frame's outputs (the node's published disparity and depth)."""
    return M.frame_counts(disparity, gt_disparity, depth if gt_depth is not None else None, gt_depth, thresholds)


@dataclass
class BackendFrame:
    """One backend's outcome on one pair."""

    label: str
    result: Any = None  # StereoResult, None when the frame was skipped
    problem: Optional[str] = None  # FrameError.problem of a skipped frame
    message: str = ""
    latency_s: Optional[float] = None
    counts: Optional[M.ErrorCounts] = None


@dataclass
class FrameEvaluation:
    record: StereoRecord
    gt_disparity: Optional[np.ndarray]
    gt_depth: Optional[np.ndarray]
    backends: Dict[str, BackendFrame]
    agreement: Dict[Tuple[str, str], M.AgreementCounts] = field(default_factory=dict)


@dataclass
class BackendTotals:
    counts: M.ErrorCounts = field(default_factory=M.ErrorCounts)
    latencies_s: List[float] = field(default_factory=list)
    problems: Counter = field(default_factory=Counter)
    frames: int = 0  # frames with outputs

    def summary(self) -> Dict[str, Any]:
        return {"frames": self.frames, "skipped": sum(self.problems.values()), "problems": dict(self.problems),
                "metrics": self.counts.summary(), "latency": M.latency_stats(self.latencies_s)}


class Totals:
    """Pixel-weighted totals per backend and per backend pair, fed frame by frame."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self.backends: Dict[str, BackendTotals] = {lb: BackendTotals() for lb in labels}
        self.agreement: Dict[Tuple[str, str], M.AgreementCounts] = {
            pair: M.AgreementCounts() for pair in itertools.combinations(labels, 2)}
        self.frames = 0
        self.has_gt = False

    def add(self, frame: FrameEvaluation) -> None:
        self.frames += 1
        self.has_gt = self.has_gt or frame.gt_disparity is not None
        for label, bf in frame.backends.items():
            tot = self.backends[label]
            if bf.problem is not None:
                tot.problems[bf.problem] += 1
                continue
            tot.frames += 1
            if bf.latency_s is not None:
                tot.latencies_s.append(bf.latency_s)
            if bf.counts is not None:
                tot.counts = tot.counts + bf.counts
        for pair, agr in frame.agreement.items():
            self.agreement[pair] = self.agreement[pair] + agr

    def summary(self) -> Dict[str, Any]:
        return {"frames": self.frames, "has_ground_truth": self.has_gt,
                "backends": {lb: self.backends[lb].summary() for lb in self.labels},
                "agreement": [{"a": a, "b": b, **self.agreement[(a, b)].summary()} for a, b in self.agreement]}


class Evaluator:
    """Processes recorded pairs with each backend in turn (they share nothing but the input)."""

    def __init__(self, runs: Sequence[BackendRun], points: bool = False, warmup: int = 1,
                 thresholds: Sequence[float] = M.DEFAULT_BAD_THRESHOLDS):
        if not runs:
            raise ValueError("no backend to evaluate")
        labels = [r.label for r in runs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"backend labels must differ, got {labels}")
        if warmup < 0:
            raise ValueError(f"warm-up runs must be >= 0, got {warmup}")
        self.runs = list(runs)
        # Loading a checkpoint or building a matcher happens here, so a bad checkpoint fails
        # before the first frame with the loader's message.
        self.processors: Dict[str, Any] = {}
        for r in self.runs:
            same = [p for p in self.processors.values() if p.config.backend_key() == r.config.backend_key()]
            # Configurations that differ only in options (iters, scale ...) share one loaded network.
            self.processors[r.label] = same[0].reconfigured(r.config) if same else StereoProcessor(r.config)
        self.outputs = Outputs(depth=True, points=points, disparity_color=False)
        self.warmup = warmup
        self.thresholds = tuple(thresholds)
        self._warm = False

    @property
    def labels(self) -> List[str]:
        return [r.label for r in self.runs]

    def _warm_up(self, records: Sequence[StereoRecord]) -> None:
        # The first call pays for lazy initialisation (CUDA context, cuDNN autotuning, allocator
        # growth); untimed runs keep that out of the latency statistics.
        frames = [_message_frame(r, self.outputs) for r in records]
        for proc in self.processors.values():
            for _ in range(self.warmup):
                if all(isinstance(r, FrameError) for r in proc.process_messages_batch(frames)):
                    return  # a bad first frame: warm up on the next one
        self._warm = True

    def evaluate(self, record: StereoRecord) -> FrameEvaluation:
        return self.evaluate_batch([record])[0]

    def evaluate_batch(self, records: Sequence[StereoRecord]) -> List[FrameEvaluation]:
        """Several pairs (one per camera) processed together, as the node processes the cameras
        it has pairs for: one :meth:`StereoProcessor.process_messages_batch` call per backend, so
        pairs of one size are matched in one network call. Each frame's latency is its batch's
        (every frame of a batch waits for all of it); its outputs are its own, the same as alone."""
        if not self._warm:
            self._warm_up(records)
        per_record: List[Dict[str, BackendFrame]] = [{} for _ in records]
        frames = [_message_frame(r, self.outputs) for r in records]
        for label, proc in self.processors.items():
            t0 = time.perf_counter()
            results = proc.process_messages_batch(frames)
            seconds = time.perf_counter() - t0
            for out, result in zip(per_record, results):
                if isinstance(result, FrameError):
                    out[label] = BackendFrame(label, problem=result.problem, message=str(result))
                else:
                    out[label] = BackendFrame(label, result=result, latency_s=seconds)
        return [self._score(record, backends) for record, backends in zip(records, per_record)]

    def _score(self, record: StereoRecord, frames: Dict[str, BackendFrame]) -> FrameEvaluation:
        ok = [bf for bf in frames.values() if bf.result is not None]
        gt_disp = gt_depth = None
        if ok:  # a pair every backend skipped may have an unusable calibration
            gt_disp, gt_depth = ground_truth(record)
        for bf in ok:
            bf.counts = frame_counts_for(bf.result.disparity, bf.result.depth, gt_disp, gt_depth, self.thresholds)
        agreement = {}
        for a, b in itertools.combinations(self.labels, 2):
            if frames[a].result is not None and frames[b].result is not None:
                agreement[(a, b)] = M.agreement_counts(frames[a].result.disparity, frames[b].result.disparity)
        return FrameEvaluation(record, gt_disp, gt_depth, frames, agreement)

    def run(self, records: Iterable[StereoRecord]) -> Iterable[FrameEvaluation]:
        for rec in records:
            yield self.evaluate(rec)


def _message_frame(record: StereoRecord, outputs: Outputs) -> MessageFrame:
    return MessageFrame(record.left, record.right, record.left_info, record.right_info, outputs)


def config_from_parameter_file(path: str, node_name: Optional[str] = None) -> Dict[str, Any]:
    """The processing parameters of a ROS 2 parameter YAML (``<node>: ros__parameters: {...}``,
    or ``/**``), as a dict; non-processing parameters (topics, sync, QoS) are dropped by the caller."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read parameters ({exc})") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected '<node name>: {{ros__parameters: ...}}' at the top level")
    params: Dict[str, Any] = {}
    # Lowest precedence first, as rcl applies them: wildcard sections, then the node's own.
    keys = sorted((k for k in data if isinstance(data[k], Mapping) and "ros__parameters" in data[k]),
                  key=lambda k: 0 if str(k).rsplit("/", 1)[-1] == "**" else 1)
    for key in keys:
        name = str(key).rsplit("/", 1)[-1]
        if node_name is None or name in (node_name, "**"):
            params.update(data[key]["ros__parameters"] or {})
    if not params:
        raise ValueError(f"{path}: no ros__parameters section" + (f" for node {node_name}" if node_name else ""))
    return params
