"""foundation-stereo-export: the network as ONNX for one camera resolution and GRU iteration count.

The graph takes float32 (1, 3, H, W) RGB 0..255 ``left``/``right`` images padded to multiples
of 32 and returns ``disparity`` (1, 1, H, W). After writing, it runs the graph once with ONNX
Runtime on the CPU and compares it with PyTorch on the same random pair (``--no-check`` skips
this), and checks the graph against the rules of TensorRT's ONNX parser (8.6 for opset 17, 10
otherwise; :mod:`foundation_stereo_ros.analysis.tensorrt_check`). Build a TensorRT engine from the file with ``trtexec`` (docs/deployment.md) or run it
with :class:`~foundation_stereo_ros.runtime.OnnxRunner` (the node's ``backend: onnx``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..analysis import onnx_export, tensorrt_check  # called as module.function, so tests can stub them
from ..model import CheckpointError, FoundationStereo, FoundationStereoConfig, load_model
from ..model.padding import InputPadder
from .cli_args import positive_int


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foundation-stereo-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="model_best_bp2.pth or its folder (cfg.yaml beside it)")
    src.add_argument("--random-weights", choices=["vits", "vitb", "vitl"],
                     help="export this variant with random weights (for timing and engine-build tests)")
    p.add_argument("--height", type=positive_int, required=True, help="camera image height (px)")
    p.add_argument("--width", type=positive_int, required=True, help="camera image width (px)")
    p.add_argument("--iters", type=positive_int, default=16, help="GRU iterations baked into the graph")
    p.add_argument("--opset", type=int, default=18,
                   help="ONNX opset (>= 17); 17 for TensorRT 8.6 (JetPack 6.0), 18 for TensorRT 10 (JetPack 6.1+)")
    p.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    p.add_argument("--external-data", action="store_true",
                   help="always store the weights in a .data file beside the .onnx")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison with PyTorch")
    p.add_argument("--tolerance", type=float, default=1e-2,
                   help="largest accepted |ONNX Runtime - PyTorch| disparity difference (px) in the check")
    return p


def check_against_pytorch(model, path: Path, input_height: int, input_width: int, iters: int) -> Dict[str, float]:
    """Run the export with ONNX Runtime (CPU) and PyTorch on one random pair: max/mean |difference| px."""
    import onnxruntime as ort  # optional: main() says how to install it or to pass --no-check

    gen = torch.Generator().manual_seed(123)
    left = torch.rand(1, 3, input_height, input_width, generator=gen) * 255
    right = torch.rand(1, 3, input_height, input_width, generator=gen) * 255
    with torch.no_grad():
        expected = model(left, right, iters=iters).disparity.numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["disparity"], {"left": left.numpy(), "right": right.numpy()})[0]
    if got.shape != expected.shape:
        raise ValueError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
    diff = np.abs(got - expected)
    return dict(max_abs_px=float(diff.max()), mean_abs_px=float(diff.mean()),
                max_disparity_px=float(np.abs(expected).max()))


def fp32_layers_path(onnx_path: Path) -> Path:
    """Where the export writes the trtexec options that keep the position layers in fp32."""
    return onnx_path.with_name(onnx_path.name + ".fp32_layers.txt")


def write_fp32_layers(onnx_path: Path) -> None:
    """Write the ``trtexec`` options that keep the lookup positions, the disparity accumulation
    and the upsampled output in fp32 in an ``--fp16`` engine, as the PyTorch path does."""
    try:
        layers = tensorrt_check.fp32_position_layers(onnx_path)
    except Exception as e:  # noqa: BLE001 - the export itself is fine; say what could not be done
        print(f"warning: the fp32 position layers could not be listed: {type(e).__name__}: {e}", file=sys.stderr)
        return
    path = fp32_layers_path(onnx_path)
    path.write_text(tensorrt_check.trtexec_precision_flags(layers) + "\n")
    print(f"{len(layers)} position layers must stay fp32 in an fp16 TensorRT engine: trtexec --fp16 $(cat {path}) "
          f"(docs/deployment.md)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.opset < 17:
        print(f"error: --opset must be >= 17 (LayerNormalization), got {args.opset}", file=sys.stderr)
        return 2
    if args.checkpoint:
        try:
            model = load_model(args.checkpoint, device="cpu")
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        torch.manual_seed(0)
        model = FoundationStereo(FoundationStereoConfig(vit_size=args.random_weights)).eval()
    ph, pw = InputPadder(args.height, args.width).padded_size
    out = Path(args.output)
    print(f"exporting {model.cfg.vit_size} for {args.height}x{args.width} images (network input {ph}x{pw}), "
          f"{args.iters} GRU iterations, opset {args.opset} -> {out}", flush=True)
    t = time.perf_counter()
    try:
        onnx_export.export_onnx(model, out, args.height, args.width, args.iters, opset=args.opset,
                                external_data=True if args.external_data else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"written in {time.perf_counter() - t:.1f} s", flush=True)
    trt = "8.6" if args.opset == 17 else "10"
    try:
        problems = tensorrt_check.tensorrt_problems(out, trt)
    except Exception as e:  # noqa: BLE001 - the export itself is fine; say the check could not run
        print(f"warning: the TensorRT {trt} parser check could not run: {type(e).__name__}: {e}", file=sys.stderr)
        problems = None
    if problems:
        print(f"warning: TensorRT {trt}'s ONNX parser would refuse this graph:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    elif problems is not None:
        print(f"TensorRT {trt} ONNX parser rules (ops, opset, Resize, Einsum): nothing found that it refuses")
    write_fp32_layers(out)
    if args.no_check:
        return 0
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("error: the check needs onnxruntime (pip install onnxruntime), or pass --no-check", file=sys.stderr)
        return 2
    stats = check_against_pytorch(model, out, ph, pw, args.iters)
    print(f"ONNX Runtime (CPU) vs PyTorch: max |diff| {stats['max_abs_px']:.3g} px, mean {stats['mean_abs_px']:.3g} px "
          f"(disparities up to {stats['max_disparity_px']:.1f} px)")
    if not stats["max_abs_px"] <= args.tolerance:
        print(f"error: the export differs from PyTorch by more than --tolerance {args.tolerance} px", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
