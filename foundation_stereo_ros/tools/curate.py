"""foundation-stereo-curate: the paper's self-curation pass over a stereo dataset.

    foundation-stereo-curate --checkpoint PATH [LAYOUT:]DATASET [...] --output DIR
        [--bad-threshold 2] [--max-bad 60] [--max-epe PX] [--iters 32] [--scale S] [--worst 8]

Runs the model on every sample, compares with the sample's own ground truth and rejects those
with an extreme error (default: error > 2 px on more than 60 % of the valid pixels, the
paper's rule). Writes DIR/kept.txt and DIR/rejected.txt (sample names, one per line; pass
rejected.txt to foundation-stereo-finetune --exclude), DIR/scores.csv (every sample, worst
first) and DIR/report.md with pictures of the worst samples in DIR/worst/.

--jobs N scores the samples in N processes (each with its own copy of the model); under torchrun
each rank scores its share and rank 0 writes the results. Either way the results are those of one
process.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..model import load_model
from ..training import CurationCriteria, curate, distributed, predict, write_curation
from ..training.curation import CurationResult, merge_results
from ..training.augment import resize_sample
from ..vocabulary import PRECISIONS
from .cli_args import resolve_device
from .finetune import LAYOUT_HELP, add_data_arguments, data_options, open_datasets


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="foundation-stereo-curate", description=__doc__.split("\n\n")[0],
                                epilog=LAYOUT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="+", metavar="[LAYOUT:]DATASET", help="datasets to curate")
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="model_best_bp2.pth of a published or fine-tuned checkpoint, or its folder")
    p.add_argument("--output", required=True, type=Path, help="report folder")
    p.add_argument("--bad-threshold", type=float, default=2.0, help="bad-pixel error threshold in px (default 2)")
    p.add_argument("--max-bad", type=float, default=60.0,
                   help="reject when more than this %% of valid pixels are bad (default 60, the paper's; "
                        "negative = off)")
    p.add_argument("--max-epe", type=float, help="also reject when the EPE exceeds this many px")
    p.add_argument("--min-valid", type=float, default=0.0,
                   help="reject when valid ground truth covers less than this %% of the image (default 0)")
    p.add_argument("--iters", type=int, default=32, help="GRU iterations (default 32)")
    p.add_argument("--hierarchical", action="store_true", help="coarse-to-fine inference (large images)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="run at this fraction of the resolution, ground truth resampled to match (default 1)")
    p.add_argument("--worst", type=int, default=8, help="pictures of the N worst samples (default 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp16/bf16 autocast needs CUDA (default fp32)")
    p.add_argument("--jobs", type=int, default=1,
                   help="processes that share the samples (default 1); under torchrun the ranks share them")
    add_data_arguments(p)
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.iters < 1:
        p.error("--iters must be >= 1")
    if not 0 < args.scale <= 1:
        p.error("--scale must be in (0, 1]")
    if args.worst < 0:
        p.error("--worst must be >= 0")
    return args


class _Rescaled:
    """A dataset view at ``scale`` of the resolution (ground truth resampled and rescaled)."""

    def __init__(self, base, scale: float):
        self.base, self.scale, self.specs = base, scale, base.specs

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        s = self.base[i]
        h, w = s.left.shape[:2]
        return resize_sample(s, max(1, round(w * self.scale)), max(1, round(h * self.scale)))


def _criteria(args: argparse.Namespace) -> CurationCriteria:
    return CurationCriteria(bad_threshold_px=args.bad_threshold,
                            max_bad_percent=None if args.max_bad < 0 else args.max_bad, max_epe=args.max_epe,
                            min_valid_percent=args.min_valid)


def _dataset(args: argparse.Namespace, log):
    dataset = open_datasets(args.datasets, data_options(args), args.output / "data_cache", log)
    return _Rescaled(dataset, args.scale) if args.scale != 1.0 else dataset


def _score(args: argparse.Namespace, indices: Optional[Sequence[int]], log, device=None) -> CurationResult:
    """Curate the samples at ``indices`` (all when None) in this process."""
    dataset = _dataset(args, log)
    model = load_model(args.checkpoint, device=device if device is not None else resolve_device(args.device))

    def predictor(left, right):
        return predict(model, left, right, args.iters, args.precision, args.hierarchical)

    def progress(i: int, n: int, score) -> None:
        if i == n or i % max(1, n // 20) == 0:
            log(f"{i}/{n} samples scored")

    return curate(predictor, dataset, _criteria(args), worst=args.worst, progress=progress, indices=indices)


def _score_share(args: argparse.Namespace, indices: Sequence[int]) -> CurationResult:
    """One --jobs process's share (a module-level function: it runs in a spawned process)."""
    return _score(args, indices, lambda _msg: None)


def _curate(args: argparse.Namespace, log) -> Optional[CurationResult]:
    """The whole dataset's result, on one process, --jobs processes or torchrun's ranks (None on
    ranks other than 0)."""
    names = [spec.name for spec in _dataset(args, log).specs]  # also fills the cache of bags once
    if distributed.launched_by_torchrun():
        ctx, device = distributed.init_from_environment(resolve_device(args.device))
        try:
            part = _score(args, range(ctx.rank, len(names), ctx.world_size), log if ctx.is_main else lambda _m: None,
                          device)
            parts = distributed.gather_objects(part, ctx)
        finally:
            distributed.shutdown()
        return merge_results(parts, names, args.worst) if ctx.is_main else None
    if args.jobs == 1:
        return _score(args, None, log)
    jobs = min(args.jobs, max(1, len(names)))
    log(f"scoring {len(names)} samples in {jobs} processes")
    # spawn: the children start clean (no forked PyTorch threads or CUDA context)
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_score_share, [args] * jobs, [range(k, len(names), jobs) for k in range(jobs)]))
    return merge_results(parts, names, args.worst)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(f"[foundation-stereo-curate] {msg}", file=sys.stderr, flush=True)

    try:
        result = _curate(args, log)
        if result is None:
            return 0  # a torchrun rank other than 0: rank 0 writes the results
        paths = write_curation(result, args.output, title=", ".join(args.datasets) + f" with {args.checkpoint}")
    except ValueError as e:  # CheckpointError and bad data included
        print(f"foundation-stereo-curate: error: {e}", file=sys.stderr)
        return 2
    criteria = result.criteria
    log(f"kept {len(result.kept)}, rejected {len(result.rejected)} of {len(result.scores)} "
        f"(rejected when {criteria.describe()})")
    for key in ("report", "kept", "rejected", "scores"):
        print(paths[key])
    return 0


if __name__ == "__main__":
    sys.exit(main())
