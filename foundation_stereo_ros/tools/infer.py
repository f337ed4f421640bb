"""foundation-stereo-infer: disparity, depth and a coloured point cloud for one rectified pair.

    foundation-stereo-infer LEFT RIGHT --checkpoint PATH [--iters N] [--hierarchical] [--scale S]
        [--device cpu|cuda] [--precision fp32|fp16|bf16] [--intrinsics K.txt] [--z-far M]
        [--out-dir DIR]

Writes DIR/disparity.npy (float32, H x W, pixels at the input resolution), DIR/disparity.pfm and
DIR/disparity.png (the left image beside its colourised disparity). With --intrinsics (the
reference's K.txt: K flattened on line 1, baseline in metres on line 2) also DIR/depth.npy
(metres, NaN where invalid) and DIR/cloud.ply (coloured points up to --z-far metres; pixels whose
match falls outside the right image are removed).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import fileio
from ..model import load_model
from ..pipeline.geometry import colorize_disparity, depth_to_points, disparity_to_depth
from ..vocabulary import PRECISIONS
from .cli_args import resolve_device


class _StageTimer:
    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.t = time.perf_counter()

    def done(self, what: str) -> None:
        now = time.perf_counter()
        print(f"[foundation-stereo-infer] {what}: {1000 * (now - self.t):.0f} ms", file=self.stream, flush=True)
        self.t = now


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="foundation-stereo-infer", description=__doc__.split("\n\n")[0])
    p.add_argument("left", type=Path, help="rectified left image (PNG/JPG, colour or grey)")
    p.add_argument("right", type=Path, help="rectified right image, same size")
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="model_best_bp2.pth of a published checkpoint, or its folder (cfg.yaml beside it)")
    p.add_argument("--iters", type=int, default=32, help="GRU refinement iterations (default 32)")
    p.add_argument("--hierarchical", action="store_true",
                   help="coarse-to-fine: a half-resolution pass initialises the full pass (large images)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="network input resolution relative to the images, in (0, 1] (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp16/bf16 autocast needs CUDA (default fp32)")
    p.add_argument("--intrinsics", type=Path, help="K.txt: 3x3 K on line 1, baseline (m) on line 2")
    p.add_argument("--z-far", type=float, default=10.0, help="farthest point kept in cloud.ply (m)")
    p.add_argument("--out-dir", type=Path, default=Path("output"), help="output folder (default ./output)")
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error("--iters must be >= 1")
    if not 0 < args.scale <= 1:
        p.error("--scale must be in (0, 1]")
    if args.z_far <= 0:
        p.error("--z-far must be positive")
    return args


def predict_disparity(model, left: np.ndarray, right: np.ndarray, iters: int, hierarchical: bool,
                      scale: float, precision: str, device) -> np.ndarray:
    """(H, W) float32 disparity in input-resolution pixels for uint8 RGB (H, W, 3) images."""
    h, w = left.shape[:2]

    def to_tensor(img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().to(device)

    lt, rt = to_tensor(left), to_tensor(right)
    if scale != 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        lt = F.interpolate(lt, size=size, mode="bilinear", align_corners=False)
        rt = F.interpolate(rt, size=size, mode="bilinear", align_corners=False)
    disp = model.infer(lt, rt, iters=iters, hierarchical=hierarchical, precision=precision)
    if scale != 1.0:
        sx = w / disp.shape[-1]  # disparities are horizontal distances: they scale with width
        disp = F.interpolate(disp, size=(h, w), mode="bilinear", align_corners=False) * sx
    return disp[0, 0].float().cpu().numpy()


def depth_and_cloud(disp: np.ndarray, k: np.ndarray, baseline: float, left: np.ndarray,
                    z_far: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth (NaN where invalid) and the kept points/colours of the cloud.

    A pixel is invalid when its disparity is not positive or its match x - d lies left of the
    right image; points beyond ``z_far`` are dropped from the cloud.
    """
    w = disp.shape[1]
    outside = np.arange(w, dtype=np.float32)[None, :] - disp < 0  # match left of the right image
    disp = np.where(outside, np.nan, disp).astype(np.float32)
    depth = disparity_to_depth(disp, float(k[0, 0]), baseline)
    points = depth_to_points(depth, float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))
    keep = np.isfinite(depth) & (depth <= z_far)
    return depth, points[keep], left[keep]


def run(args: argparse.Namespace) -> List[Path]:
    timer = _StageTimer()
    device = resolve_device(args.device)
    intrinsics = fileio.read_intrinsics(args.intrinsics) if args.intrinsics else None
    left, right = fileio.read_rgb(args.left), fileio.read_rgb(args.right)
    if left.shape != right.shape:
        raise ValueError(f"left {left.shape[1]}x{left.shape[0]} and right {right.shape[1]}x{right.shape[0]} "
                         f"differ in size; the pair must be rectified to one size")
    timer.done(f"read {left.shape[1]}x{left.shape[0]} pair")
    model = load_model(args.checkpoint, device=device)
    timer.done(f"load {model.cfg.vit_size} checkpoint")
    disp = predict_disparity(model, left, right, args.iters, args.hierarchical, args.scale, args.precision, device)
    timer.done(f"inference ({args.iters} iterations{', hierarchical' if args.hierarchical else ''}, "
               f"{args.precision}, {device})")
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "disparity.npy", out / "disparity.pfm", out / "disparity.png"]
    np.save(written[0], disp.astype(np.float32))
    fileio.write_pfm(written[1], disp)
    finite = disp[np.isfinite(disp)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fileio.write_rgb(written[2], np.concatenate([left, colorize_disparity(disp, lo, hi)], axis=1))
    if intrinsics is not None:
        k, baseline = intrinsics
        depth, points, colours = depth_and_cloud(disp, k, baseline, left, args.z_far)
        np.save(out / "depth.npy", depth)
        fileio.write_ply(out / "cloud.ply", points, colours)
        written += [out / "depth.npy", out / "cloud.ply"]
    timer.done("write outputs")
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        written = run(args)
    except ValueError as e:  # CheckpointError included: one clear line, no traceback
        print(f"foundation-stereo-infer: error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
