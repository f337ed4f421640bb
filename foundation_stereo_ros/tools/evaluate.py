"""foundation-stereo-eval: evaluate stereo depth on a rosbag2 recording (sqlite3 or mcap).

Usage::

    foundation-stereo-eval BAG [--backend sgbm --backend foundation_stereo:iters=16] \\
        [--checkpoint PATH] [--params config/zed.yaml] [--output DIR] [--output-bag DIR]

Pairs left/right images (sensor_msgs/Image, or CompressedImage on ``<image topic>/compressed``
as robots record them) and CameraInfo as the node does, runs every pair through the node's
processing code (:class:`foundation_stereo_ros.pipeline.StereoProcessor`) with each backend,
scores the outputs against the ground-truth topic when the bag has one, and writes a report
folder (frames.csv, summary.json, report.md, report.html, pictures/). ``--output-bag`` also
writes the outputs (disparity, depth, depth/camera_info, points2, left/image_rect) to a new bag
for RViz or Foxglove. A bag of several stereo cameras (``/front/left/image_rect``,
``/rear/left/image_rect`` ...; ``--cameras front,rear`` or all found): each camera paired on its
own, the pairs the cameras complete together processed as one batch (one network call per image
size, as the node's ``cameras`` parameter runs them), one report folder per camera, DIR/<camera>/,
and DIR/cameras.json. Several bags: one report folder each, DIR/<bag name>/, and DIR/bags.json
with every bag's summary; ``--jobs N`` evaluates them in N processes (under torchrun, the ranks
share them and rank 0 writes bags.json), with the results of one process. Exit status: 0 done, 2
bad input (bag, options, checkpoint).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, TypeVar

from foundation_stereo_ros.evaluation import bag_io as B
from foundation_stereo_ros.evaluation import metrics as M
from foundation_stereo_ros.evaluation.bag_io import STORAGES, StereoBagReader
from foundation_stereo_ros.evaluation.bag_pairing import detect_cameras
from foundation_stereo_ros.evaluation.cameras import CameraBagReader
from foundation_stereo_ros.evaluation.checkpoint_search import HOW_TO_GET, find_checkpoint
from foundation_stereo_ros.evaluation.output_bag import OutputBag, output_namespace, picture_frames, topic_token
from foundation_stereo_ros.evaluation.report import ReportPaths, ReportWriter
from foundation_stereo_ros.evaluation.runner import (BackendRun, Evaluator, FrameEvaluation, Totals, coerce_value,
                                                     config_from_parameter_file, parse_backend_spec)
from foundation_stereo_ros.pipeline import SPECS, ProcessorConfig
from foundation_stereo_ros.tools.cli_args import default_device_name
from foundation_stereo_ros.tools.progress import Progress, progress
from foundation_stereo_ros.vocabulary import PRECISIONS

T = TypeVar("T")


@dataclass
class EvaluationOutcome:
    paths: ReportPaths
    summary: Dict[str, Any]
    output_bag: Optional[Path] = None
    writer: Optional[ReportWriter] = None
    totals: Optional[Totals] = None
    meta: Optional[Dict[str, Any]] = None

    def add_sections(self, sections: Dict[str, Any]) -> None:
        """Rewrite summary.json and the reports with extra top-level sections (``live``,
        ``live_vs_offline``: see report.py)."""
        self.paths = self.writer.finish(self.totals, self.meta, sections)
        self.summary = json.loads(self.paths.summary_json.read_text())


SYNC_PARAMETERS = ("approximate_sync", "sync_tolerance_s", "queue_size")


@dataclass(frozen=True)
class EvaluationOptions:
    """What :func:`evaluate_bag` reads, writes besides the report, and how it scores."""

    topic_overrides: Optional[Mapping[str, str]] = None  # StereoBagReader topic names (default: detected)
    sync: Optional[Mapping[str, Any]] = None  # the node's synchronisation parameters (SYNC_PARAMETERS)
    output_bag: Optional[Path] = None  # also write every frame's outputs to this new bag
    output_storage: str = "sqlite3"
    max_frames: int = 0  # stop after this many pairs (0: all)
    pictures: int = 3  # frames with pictures, spread over the bag
    warmup: int = 1  # untimed runs of the first pair per backend
    thresholds: Sequence[float] = M.DEFAULT_BAD_THRESHOLDS  # bad-pixel thresholds, px
    show_progress: bool = True
    extra_meta: Optional[Mapping[str, Any]] = None  # more entries for summary.json's meta
    #: Camera namespaces of a multi-camera bag (see :func:`evaluate_cameras`); None: detected (one
    #: camera: :func:`evaluate_bag`, several: :func:`evaluate_cameras`).
    cameras: Optional[Sequence[str]] = None


def evaluate_bag(bag: Path, runs: Sequence[BackendRun], output: Path, options: EvaluationOptions = EvaluationOptions(),
                 on_frame: Optional[Callable[[FrameEvaluation], None]] = None) -> EvaluationOutcome:
    """Evaluate ``runs`` on ``bag`` and write the report to ``output``; ``on_frame`` sees every
    frame's evaluation. See the module doc."""
    o = options
    evaluator = Evaluator(runs, points=o.output_bag is not None, warmup=o.warmup, thresholds=o.thresholds)
    with StereoBagReader(bag, sync=o.sync, **(o.topic_overrides or {})) as reader:
        counts = reader.topic_counts
        n_pairs = min(counts.get(t, 0) for t in reader.topics.stereo())  # for the progress bar
        if o.max_frames:
            n_pairs = min(n_pairs, o.max_frames)
        output.mkdir(parents=True, exist_ok=True)
        writer = ReportWriter(output, evaluator.labels, picture_frames(n_pairs, o.pictures), o.thresholds)
        out_bag = None
        if o.output_bag is not None:
            ns = output_namespace(reader.topics)
            out_bag = OutputBag(o.output_bag, o.output_storage, {
                lb: ns if len(runs) == 1 else f"{ns}/{topic_token(lb)}" for lb in evaluator.labels})
        totals = Totals(evaluator.labels)
        try:
            pairs = reader.pairs()
            for frame in progress(evaluator.run(_take(pairs, o.max_frames)), n_pairs, "evaluating", o.show_progress):
                totals.add(frame)
                writer.add(frame)
                if out_bag is not None:
                    out_bag.add(frame)
                if on_frame is not None:
                    on_frame(frame)
        finally:
            writer.close()
            if out_bag is not None:
                out_bag.close()
        meta = _meta(bag, reader, totals, runs, o)
    if totals.frames == 0:
        raise ValueError(f"{bag}: no synchronised stereo pairs (topics {reader.topics.stereo()}, "
                         f"unpaired messages {reader.unpaired})")
    paths = writer.finish(totals, meta)
    return EvaluationOutcome(paths, json.loads(paths.summary_json.read_text()), o.output_bag, writer, totals, meta)


def several_cameras(bag: Path, options: EvaluationOptions) -> bool:
    """Whether ``bag`` is evaluated per camera: cameras named, or several detected (and no topic
    named, which picks one camera)."""
    if options.cameras is not None:
        return True
    if options.topic_overrides:
        return False
    return len(detect_cameras(B.topic_types(bag))) > 1


def evaluate_recording(bag: Path, runs: Sequence[BackendRun], output: Path,
                       options: EvaluationOptions = EvaluationOptions()) -> Dict[str, Any]:
    """The summary of one bag: :func:`evaluate_bag`'s, or for several cameras ``{"cameras": {name:
    summary}}`` of :func:`evaluate_cameras`."""
    if several_cameras(bag, options):
        outcomes = evaluate_cameras(bag, runs, output, options)
        return {"cameras": {name: o.summary for name, o in outcomes.items()}}
    return evaluate_bag(bag, runs, output, options).summary


def evaluate_cameras(bag: Path, runs: Sequence[BackendRun], output: Path,
                     options: EvaluationOptions = EvaluationOptions()) -> Dict[str, EvaluationOutcome]:
    """Evaluate every camera of a multi-camera bag (``options.cameras``, default: detected), each
    paired on its own, the cameras' pairs completed together processed in one batch (one network
    call per image size; see :mod:`foundation_stereo_ros.evaluation.cameras`). One report per
    camera in ``output/<camera>/`` (as one camera's bag would give) and ``output/cameras.json``
    with every camera's summary."""
    o = options
    if o.topic_overrides:
        raise ValueError("topic options pick one camera; they do not go with --cameras")
    evaluator = Evaluator(runs, points=o.output_bag is not None, warmup=o.warmup, thresholds=o.thresholds)
    with CameraBagReader(bag, o.cameras, sync=o.sync) as reader:
        folders = {name: output / (topic_token(name) if name else "root") for name in reader.names}
        expected = reader.expected_pairs(o.max_frames)
        writers, totals, spaces = {}, {}, {}
        for name in reader.names:
            folders[name].mkdir(parents=True, exist_ok=True)
            writers[name] = ReportWriter(folders[name], evaluator.labels, picture_frames(expected[name], o.pictures),
                                         o.thresholds)
            totals[name] = Totals(evaluator.labels)
            ns = output_namespace(reader.topics[name])
            spaces[name] = {lb: ns if len(runs) == 1 else f"{ns}/{topic_token(lb)}" for lb in evaluator.labels}
        out_bag = OutputBag(o.output_bag, o.output_storage, {}) if o.output_bag is not None else None
        bar = Progress(sum(expected.values()), "evaluating", o.show_progress)
        try:
            for batch in reader.batches(o.max_frames):
                frames = evaluator.evaluate_batch([record for _, record in batch])
                for (name, _), frame in zip(batch, frames):
                    totals[name].add(frame)
                    writers[name].add(frame)
                    if out_bag is not None:
                        out_bag.add(frame, spaces[name])
                bar.update(len(batch))
        finally:
            bar.close()
            for writer in writers.values():
                writer.close()
            if out_bag is not None:
                out_bag.close()
        empty = [name for name in reader.names if totals[name].frames == 0]
        if empty:
            raise ValueError(f"{bag}: no synchronised stereo pairs for camera(s) {', '.join(empty)} (topics "
                             f"{[reader.topics[n].stereo() for n in empty]}, unpaired {reader.unpaired()})")
        outcomes = {}
        for name in reader.names:
            meta = _meta(bag, reader.readers[name], totals[name], runs, o)
            meta.update(camera=name, cameras=reader.names)
            paths = writers[name].finish(totals[name], meta)
            outcomes[name] = EvaluationOutcome(paths, json.loads(paths.summary_json.read_text()), o.output_bag,
                                               writers[name], totals[name], meta)
    output.mkdir(parents=True, exist_ok=True)
    (output / "cameras.json").write_text(json.dumps(
        {"bag": str(bag), "cameras": {n: oc.summary for n, oc in outcomes.items()}}, indent=2) + "\n")
    return outcomes


def _meta(bag: Path, reader: StereoBagReader, totals: Totals, runs: Sequence[BackendRun],
          options: EvaluationOptions) -> Dict[str, Any]:
    """The summary's ``meta``: what was evaluated, how, when and where."""
    meta = {
        "bag": str(bag), "frames": totals.frames, "unpaired": reader.unpaired,
        "topics": {k: v for k, v in reader.topics.__dict__.items() if v},
        "backends": {r.label: _config_summary(r.config) for r in runs},
        "sync": reader.sync, "bad_thresholds_px": list(options.thresholds), "warmup_runs": options.warmup,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
    }
    meta.update(options.extra_meta or {})
    return meta


def _take(items: Iterable[T], n: int) -> Iterator[T]:
    for i, item in enumerate(items):
        if n and i >= n:
            return
        yield item


def _config_summary(config: Any) -> Dict[str, Any]:
    d = config.as_dict()
    if d["backend"] == "sgbm":
        return {k: v for k, v in d.items() if not k.startswith(("checkpoint", "iters", "hierarchical", "device",
                                                                 "precision", "scale"))}
    return {k: v for k, v in d.items() if not k.startswith("sgbm_")}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foundation-stereo-eval", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", type=Path, nargs="+", help="rosbag2 folder (sqlite3 or mcap); several: a report each")
    p.add_argument("--backend", action="append", metavar="SPEC",
                   help="backend to evaluate, repeatable: 'sgbm', 'foundation_stereo', or with overrides "
                        "'foundation_stereo:iters=8,scale=0.5' (default: foundation_stereo when a checkpoint is "
                        "given or found, else sgbm)")
    p.add_argument("--params", type=Path, help="node parameter YAML (e.g. config/zed.yaml); its processing "
                   "parameters are the defaults of every backend")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="processing parameter for "
                   "every backend (repeatable), e.g. --set max_depth=10")
    g = p.add_argument_group("FoundationStereo")
    g.add_argument("--checkpoint", help="checkpoint .pth or folder (default: $FOUNDATION_STEREO_CHECKPOINT or "
                   "~/.cache/foundation_stereo/<23-51-11|11-33-40>/)")
    g.add_argument("--iters", type=int, help="GRU iterations")
    g.add_argument("--scale", type=float, help="network input resolution relative to the camera")
    g.add_argument("--precision", choices=PRECISIONS)
    g.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda when available)")
    g.add_argument("--hierarchical", action="store_true", default=None, help="coarse-to-fine inference")
    t = p.add_argument_group("topics (default: detected from the bag)")
    for name, helptext in (("left-topic", "left image: Image, or CompressedImage (.../compressed)"),
                           ("right-topic", "right image, as --left-topic"), ("left-info", "left "
                           "CameraInfo"), ("right-info", "right CameraInfo"), ("gt-disparity-topic",
                           "ground-truth disparity (DisparityImage or 32FC1)"), ("gt-depth-topic",
                           "ground-truth depth (32FC1 m or 16UC1 mm)")):
        t.add_argument(f"--{name}", help=helptext)
    o = p.add_argument_group("output")
    o.add_argument("--output", "-o", type=Path, help="report folder (default: ./eval_<bag name>_<time>)")
    o.add_argument("--output-bag", type=Path, help="also write the outputs to this new bag")
    o.add_argument("--output-storage", choices=STORAGES, default="sqlite3", help="storage of --output-bag")
    o.add_argument("--pictures", type=int, default=3, help="frames with pictures, spread over the bag (default 3)")
    o.add_argument("--max-frames", type=int, default=0, help="stop after this many pairs (0: all)")
    o.add_argument("--warmup", type=int, default=1, help="untimed runs of the first pair per backend (default 1)")
    o.add_argument("--bad-thresholds", default="1,2,3", help="bad-pixel thresholds in px (default 1,2,3)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cameras", help="comma list of camera namespaces of a multi-camera bag (e.g. front,rear): "
                   "each camera is paired on its own, pairs completed together run as one batch, one report per "
                   "camera in DIR/<camera>/ and DIR/cameras.json (default: every camera found, when there are "
                   "several)")
    o.add_argument("--jobs", type=int, default=1,
                   help="processes that share several bags (default 1); under torchrun the ranks share them")
    return p


def sync_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The node's synchronisation parameters from --params (the node's defaults otherwise)."""
    if args.params is None:
        return {}
    params = config_from_parameter_file(str(args.params), node_name="stereo_depth_node")
    return {k: params[k] for k in SYNC_PARAMETERS if k in params}


def build_runs(args: argparse.Namespace) -> List[BackendRun]:
    """The backend configurations the options describe (ValueError on bad options)."""
    values: Dict[str, Any] = {}
    if args.params is not None:
        params = config_from_parameter_file(str(args.params), node_name="stereo_depth_node")
        values.update({k: v for k, v in params.items() if k in SPECS})
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or key not in SPECS:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(SPECS))}")
        values[key] = coerce_value(value, key)
    for name in ("checkpoint", "iters", "scale", "precision", "hierarchical"):
        v = getattr(args, name)
        if v is not None:
            values[name] = v
    values["device"] = default_device_name() if args.device == "auto" else args.device
    if not values.get("checkpoint"):
        found = find_checkpoint()
        if found is not None:
            values["checkpoint"] = str(found)
    specs = args.backend or ["foundation_stereo" if values.get("checkpoint") else "sgbm"]
    if not args.backend and not values.get("checkpoint"):
        print(f"foundation-stereo-eval: no FoundationStereo checkpoint given or found; evaluating the sgbm "
              f"backend. {HOW_TO_GET}", file=sys.stderr)
    values.pop("backend", None)
    base = ProcessorConfig.from_mapping({**values, "backend": "sgbm"})
    return [parse_backend_spec(s, base) for s in specs]


def _under_torchrun() -> bool:
    # training.distributed.launched_by_torchrun's test; that module imports torch, which an SGBM
    # evaluation does without.
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _summary_of(bag: Path, runs: Sequence[BackendRun], output: Path, options: EvaluationOptions) -> Dict[str, Any]:
    """One bag's summary (a module-level function: --jobs runs it in spawned processes)."""
    return evaluate_recording(bag, runs, output, options)


def evaluate_bags(bags: Sequence[Path], runs: Sequence[BackendRun], output: Path, options: EvaluationOptions,
                  jobs: int = 1) -> Optional[Dict[str, Dict[str, Any]]]:
    """Evaluate each bag into ``output/<bag name>/`` in ``jobs`` processes (or over torchrun's
    ranks) and write ``output/bags.json``; returns {bag name: summary} in the order given (None on
    ranks other than 0)."""
    names = [b.name for b in bags]
    if len(set(names)) != len(names):
        raise ValueError(f"several bags share a folder name ({', '.join(names)}): their reports would collide")
    if options.output_bag is not None:
        raise ValueError("--output-bag takes one bag")
    work = [(b, runs, output / b.name, options) for b in bags]
    if _under_torchrun():
        import torch  # here: without torchrun the SGBM evaluation runs without PyTorch

        from foundation_stereo_ros.training import distributed

        ctx, _ = distributed.init_from_environment(torch.device("cpu"))
        try:
            mine = {k: _summary_of(*work[k]) for k in range(ctx.rank, len(work), ctx.world_size)}
            shares = distributed.gather_objects(mine, ctx)
        finally:
            distributed.shutdown()
        if not ctx.is_main:
            return None
        done = {k: v for share in shares for k, v in share.items()}
        summaries = [done[k] for k in range(len(work))]
    elif jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(work)),
                                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            summaries = list(pool.map(_summary_of, *zip(*work)))
    else:
        summaries = [_summary_of(*w) for w in work]
    result = dict(zip(names, summaries))
    output.mkdir(parents=True, exist_ok=True)
    (output / "bags.json").write_text(json.dumps({"bags": result}, indent=2))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.jobs < 1:
        print("foundation-stereo-eval: error: --jobs must be >= 1", file=sys.stderr)
        return 2
    try:
        thresholds = tuple(float(v) for v in args.bad_thresholds.split(",") if v.strip())
        runs = build_runs(args)
        several = len(args.bag) > 1 or _under_torchrun()
        stem = "bags" if several else args.bag[0].name
        output = args.output or Path(f"eval_{stem}_{datetime.datetime.now():%Y%m%d_%H%M%S}")
        overrides = {"left_image": args.left_topic, "right_image": args.right_topic, "left_info": args.left_info,
                     "right_info": args.right_info, "gt_disparity": args.gt_disparity_topic,
                     "gt_depth": args.gt_depth_topic}
        options = EvaluationOptions(topic_overrides={k: v for k, v in overrides.items() if v},
                                    sync=sync_settings(args), output_bag=args.output_bag,
                                    output_storage=args.output_storage, max_frames=args.max_frames,
                                    pictures=args.pictures, warmup=args.warmup, thresholds=thresholds,
                                    show_progress=not args.no_progress and args.jobs == 1)
        if args.cameras is not None:
            options = replace(options, cameras=[c.strip() for c in args.cameras.split(",") if c.strip()])
        if several:
            summaries = evaluate_bags(args.bag, runs, output, options, args.jobs)
        elif several_cameras(args.bag[0], options):
            outcomes = evaluate_cameras(args.bag[0], runs, output, options)
        else:
            outcomes = {"": evaluate_bag(args.bag[0], runs, output, options)}
    except ValueError as exc:  # also CheckpointError, BackendError, bad bags
        print(f"foundation-stereo-eval: error: {exc}", file=sys.stderr)
        return 2
    if not several:
        for name, outcome in outcomes.items():
            if name:
                print(f"camera {name}:")
            print_outcome(outcome)
        if len(outcomes) > 1 or "" not in outcomes:
            print(f"cameras: {(output / 'cameras.json').resolve()}")
    elif summaries is not None:
        for name in summaries:
            print(f"{name}: {(output / name / 'report.html').resolve()}")
        print(f"summary: {(output / 'bags.json').resolve()}")
    return 0


def print_outcome(outcome: EvaluationOutcome, stream: Any = None) -> None:
    stream = stream or sys.stdout
    s = outcome.summary
    for label, b in s["backends"].items():
        m, lat = b["metrics"], b["latency"]
        parts = [f"{label}: {b['frames']} frames"]
        if b["skipped"]:
            parts.append(f"{b['skipped']} skipped")
        for key, name, fmt in (("epe", "EPE", "{:.3f} px"), ("bad_3", "bad-3", "{:.2f} %"), ("d1", "D1", "{:.2f} %"),
                               ("abs_rel", "AbsRel", "{:.4f}"), ("completeness", "completeness", "{:.1f} %")):
            if m.get(key) is not None:
                parts.append(f"{name} {fmt.format(m[key])}")
        if lat["median_ms"] is not None:
            parts.append(f"latency median {lat['median_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms")
        print(", ".join(parts), file=stream)
    # Absolute paths: they are printed to be opened, from wherever.
    print(f"report:  {outcome.paths.html.resolve()}", file=stream)
    print(f"         {outcome.paths.markdown.resolve()}", file=stream)
    print(f"summary: {outcome.paths.summary_json.resolve()}", file=stream)
    print(f"frames:  {outcome.paths.frames_csv.resolve()}", file=stream)
    if outcome.output_bag is not None:
        print(f"outputs: {outcome.output_bag.resolve()}", file=stream)


if __name__ == "__main__":
    sys.exit(main())
