"""foundation-stereo-finetune: fine-tune a published FoundationStereo checkpoint on your own data.

    foundation-stereo-finetune --checkpoint PATH --train [LAYOUT:]PATH [--train ...]
        [--val [LAYOUT:]PATH ...] --output DIR [--steps N] [--batch-size B] [--lr LR] [--resume] ...

LAYOUT is one of sceneflow, middlebury, kitti, fsd, folder, bag (detected when left out). The
DepthAnything branch stays frozen; the rest trains with the paper's sequence loss. DIR/best and
DIR/last are published-format checkpoints (model_best_bp2.pth + cfg.yaml) that the node and
foundation-stereo-infer load unchanged; DIR/train_log.csv and DIR/val_log.csv hold the losses and
validation metrics; DIR/state.pt lets --resume continue an interrupted run exactly.

Several GPUs or machines: start the same command with torchrun, e.g.
``torchrun --nproc_per_node 4 -m foundation_stereo_ros.tools.finetune ...`` (DistributedDataParallel;
--batch-size is per process). DIR must be a folder every machine sees.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..model import load_model
from ..training import AugmentConfig, DataOptions, FineTuner, TrainConfig, open_dataset, read_name_list
from ..training import distributed
from ..training.trainer import TRAINING_PRECISIONS, TrainingDiverged
from .cli_args import resolve_device

LAYOUT_HELP = """dataset layouts (LAYOUT:PATH, or PATH to detect):
  folder      PATH/left/*.png, PATH/right/*.png, PATH/disparity/*.{pfm,npy,png} (same stems;
              16-bit PNG = px * 256 as KITTI, 8-bit PNG = px); or PATH/depth/* with
              PATH/calib.yaml {focal_px, baseline_m[, delta_cx]}
  sceneflow   frames_cleanpass|frames_finalpass/.../left|right/*.png + disparity/.../left/*.pfm
  middlebury  <scene>/im0.png, im1.png, disp0.pfm|disp0GT.pfm (inf = unknown)
  kitti       training/image_2, image_3, disp_occ_0 (2015) or colored_0, colored_1, disp_occ (2012)
  fsd         <scene>/dataset/data/left/rgb/*.jpg, right/rgb/*.jpg, left/disparity/*.png
  bag         rosbag2 folder with stereo images, CameraInfo and a ground-truth disparity or
              depth topic registered to the rectified left image (extracted once to DIR/data_cache)
"""


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset options")
    g.add_argument("--sceneflow-pass", choices=["clean", "final", "both"], default="clean",
                   help="Scene Flow render pass (default clean)")
    g.add_argument("--kitti-gt", choices=["occ", "noc"], default="occ",
                   help="KITTI ground truth: all pixels (occ) or non-occluded only (default occ)")
    g.add_argument("--middlebury-nocc", action="store_true",
                   help="Middlebury: use only the non-occluded pixels of mask0nocc.png where present")
    g.add_argument("--disparity-scale", type=float,
                   help="folder layout: stored value = disparity * SCALE (default 256 for 16-bit PNG, else 1)")
    g.add_argument("--depth-scale", type=float,
                   help="folder layout: stored value = depth in metres * SCALE (default 1000 for 16-bit PNG, else 1)")
    b = p.add_argument_group("rosbag options (default: the topics the evaluation tool detects)")
    for flag in ("left-topic", "right-topic", "left-info-topic", "right-info-topic", "gt-disparity-topic",
                 "gt-depth-topic"):
        b.add_argument(f"--{flag}", help=flag.replace("-", " "))
    b.add_argument("--bag-stride", type=int, default=1, help="use every N-th pair of a bag (default 1)")
    b.add_argument("--rectify", choices=["auto", "always", "never"], default="auto",
                   help="rectify bag images from their CameraInfo as the node does (default auto)")


def data_options(args: argparse.Namespace):
    passes = ("clean", "final") if args.sceneflow_pass == "both" else (args.sceneflow_pass,)
    bag = {k: getattr(args, k) for k in ("left_topic", "right_topic", "left_info_topic", "right_info_topic",
                                         "gt_disparity_topic", "gt_depth_topic") if getattr(args, k)}
    bag.update(stride=args.bag_stride, rectify=args.rectify)
    return DataOptions(sceneflow_passes=passes, kitti_gt=args.kitti_gt, middlebury_nocc=args.middlebury_nocc,
                       disparity_scale=args.disparity_scale, depth_scale=args.depth_scale, bag=bag)


def open_datasets(sources: Sequence[str], options, cache_dir: Path, log):
    out = None
    for src in sources:
        ds = open_dataset(src, options, cache_dir=cache_dir, log=log)
        out = ds if out is None else out + ds
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="foundation-stereo-finetune", description=__doc__.split("\n\n")[0],
                                epilog=LAYOUT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="published checkpoint to start from (model_best_bp2.pth or its folder, cfg.yaml beside it)")
    p.add_argument("--train", action="append", required=True, metavar="[LAYOUT:]PATH",
                   help="training data (repeat to combine datasets)")
    p.add_argument("--val", action="append", default=[], metavar="[LAYOUT:]PATH",
                   help="validation data (repeat); without it --val-fraction of the training data is held out")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of the training samples held out for validation when no --val is given (default 0.05; "
                        "0 = no validation)")
    p.add_argument("--exclude", action="append", default=[], type=Path, metavar="LIST",
                   help="file of sample names to leave out, e.g. rejected.txt of foundation-stereo-curate")
    p.add_argument("--output", required=True, type=Path, help="run folder (checkpoints, logs, state)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its state.pt")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    o.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"samples per process and forward pass (default {d.batch_size}); the global batch is "
                        f"batch size x processes x --accumulate")
    o.add_argument("--accumulate", type=int, default=d.accumulate,
                   help="gradient accumulation: forward passes per optimizer step (default 1)")
    o.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr:g})")
    o.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"default {d.weight_decay:g}")
    o.add_argument("--warmup", type=float, default=d.warmup_fraction,
                   help=f"linear warm-up share of the steps, then linear decay (default {d.warmup_fraction:g})")
    o.add_argument("--grad-clip", type=float, default=d.grad_clip,
                   help=f"max gradient norm, 0 = off (default {d.grad_clip:g})")
    o.add_argument("--train-iters", type=int, default=d.train_iters,
                   help=f"GRU iterations in training (default {d.train_iters})")
    o.add_argument("--valid-iters", type=int, default=d.valid_iters,
                   help=f"GRU iterations for validation (default {d.valid_iters})")
    o.add_argument("--gamma", type=float, default=d.gamma, help=f"sequence-loss decay (default {d.gamma:g})")
    o.add_argument("--freeze", nargs="+", default=[], metavar="MODULE",
                   help="also freeze these modules, e.g. feature (the whole feature encoder) or cnet; "
                        "feature.dino (DepthAnything) is always frozen")
    o.add_argument("--train-batchnorm-stats", action="store_true",
                   help="update BatchNorm running statistics (default: frozen, right for small batches)")
    o.add_argument("--precision", choices=TRAINING_PRECISIONS, default="auto",
                   help="auto = bf16 (or fp16) autocast on CUDA, fp32 on the CPU")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    o.add_argument("--seed", type=int, default=d.seed)
    o.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others before it stops with an error "
                        f"(default {distributed.DEFAULT_TIMEOUT_S:g}; rank 0 validates while the others wait)")
    o.add_argument("--workers", type=int, default=d.num_workers,
                   help=f"data-loading processes (default {d.num_workers})")
    a = p.add_argument_group("augmentation")
    a.add_argument("--crop", type=int, nargs=2, default=[320, 736], metavar=("H", "W"),
                   help="training crop, multiples of 32 (default 320 736)")
    a.add_argument("--no-augment", action="store_true", help="random crops only: no scaling, colour or eraser")
    a.add_argument("--scale-range", type=float, nargs=2, default=[-0.2, 0.4], metavar=("LO", "HI"),
                   help="log2 scale range (default -0.2 0.4)")
    a.add_argument("--asymmetric-prob", type=float, default=0.2,
                   help="probability that the right view's colour changes differ slightly from the left's "
                        "(default 0.2)")
    a.add_argument("--vflip-prob", type=float, default=0.0, help="vertical flip probability (default 0)")
    a.add_argument("--eraser-prob", type=float, default=0.5, help="right-view occlusion patches (default 0.5)")
    a.add_argument("--grayscale-prob", type=float, default=0.0, help="grey conversion of both views (default 0)")
    lg = p.add_argument_group("logging")
    lg.add_argument("--val-every", type=int, default=d.val_every, help=f"default {d.val_every}")
    lg.add_argument("--save-every", type=int, default=d.save_every, help=f"default {d.save_every}")
    lg.add_argument("--log-every", type=int, default=d.log_every, help=f"default {d.log_every}")
    lg.add_argument("--max-val-samples", type=int, help="validate on at most this many samples")
    add_data_arguments(p)
    args = p.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        p.error("--val-fraction must be in [0, 1)")
    if args.bag_stride < 1:
        p.error("--bag-stride must be >= 1")
    return args


def build(args: argparse.Namespace, log, device):
    """(model, train set, val set, TrainConfig, AugmentConfig) from the arguments."""
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr,
                         weight_decay=args.weight_decay,
                         warmup_fraction=args.warmup, grad_clip=args.grad_clip, train_iters=args.train_iters,
                         valid_iters=args.valid_iters, gamma=args.gamma, precision=args.precision,
                         freeze=tuple(args.freeze), freeze_batchnorm=not args.train_batchnorm_stats,
                         val_every=args.val_every, save_every=args.save_every, log_every=args.log_every,
                         max_val_samples=args.max_val_samples, seed=args.seed, num_workers=args.workers)
    crop = tuple(args.crop)
    if args.no_augment:
        augment = AugmentConfig.crop_only(crop)
    else:
        augment = AugmentConfig(crop_size=crop, min_log2_scale=args.scale_range[0], max_log2_scale=args.scale_range[1],
                                asymmetric_prob=args.asymmetric_prob, vflip_prob=args.vflip_prob,
                                eraser_prob=args.eraser_prob, grayscale_prob=args.grayscale_prob)
    options = data_options(args)
    cache = args.output / "data_cache"
    train = open_datasets(args.train, options, cache, log)
    excluded: List[str] = []
    for lst in args.exclude:
        excluded += read_name_list(lst)
    if excluded:
        before = len(train)
        train = train.without(excluded)
        log(f"left out {before - len(train)} samples named in {', '.join(map(str, args.exclude))}")
    if args.val:
        val = open_datasets(args.val, options, cache, log).without(excluded)
    elif args.val_fraction > 0 and len(train) >= 2:
        train, val = train.split(args.val_fraction)
        log(f"holding out {len(val)} of the training samples for validation (--val-fraction {args.val_fraction:g})")
    else:
        val = None
        log("no validation data: only training losses are logged")
    model = load_model(args.checkpoint, device=device)
    return model, train, val, config, augment


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    ctx = distributed.SINGLE

    def log(msg: str) -> None:
        if ctx.is_main:
            print(f"[foundation-stereo-finetune] {msg}", file=sys.stderr, flush=True)

    def error(msg: str) -> None:
        where = f"rank {ctx.rank}: " if ctx.world_size > 1 else ""
        print(f"foundation-stereo-finetune: error: {where}{msg}", file=sys.stderr, flush=True)

    try:
        ctx, device = distributed.init_from_environment(resolve_device(args.device), args.dist_timeout)
        if args.resume and not (args.output / "state.pt").is_file():
            raise ValueError(f"--resume: {args.output / 'state.pt'} does not exist")
        if not ctx.is_main:
            distributed.barrier(ctx)  # rank 0 fills the data cache (bags) first
        model, train, val, config, augment = build(args, log, device)
        if ctx.is_main:
            distributed.barrier(ctx)
        info = {"checkpoint": str(args.checkpoint), "train": list(args.train), "val": list(args.val),
                "exclude": [str(e) for e in args.exclude], "processes": ctx.world_size}
        result = FineTuner(model, train, val, config, args.output, augment=augment, log=log, run_info=info,
                           distributed=ctx).run(resume=args.resume)
    except ValueError as e:  # CheckpointError included: one clear line, no traceback
        error(str(e))
        return 2
    except TrainingDiverged as e:
        error(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except RuntimeError as e:
        if ctx.world_size == 1 or not distributed.lost_contact(e):
            raise
        # a peer died or stopped answering: gloo reports a closed connection, NCCL and gloo a timeout
        error(f"lost contact with the other processes (one died or stalled longer than --dist-timeout "
              f"{args.dist_timeout:g} s): {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return 1
    distributed.shutdown()
    if ctx.is_main:
        print(result["last_checkpoint"])
        if result["validation"]:
            print(result["best_checkpoint"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
