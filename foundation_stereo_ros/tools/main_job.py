"""foundation-stereo-demo: the main job. Real stereo data -> recording -> live node + offline evaluation -> report.

    foundation-stereo-demo [--output DIR] [--checkpoint PATH] [--frames N] [--image-scale S]

1. Builds a rosbag2 recording from real stereo data: the Middlebury "Aloe" pair shipped with
   Debian's opencv-doc (rectified images and ground-truth disparity), as a short camera pan -
   ``--frames`` horizontal windows sliding across the pair, recorded at ``--rate`` Hz.
2. Evaluates it offline through the node's processing code (foundation-stereo-eval).
3. Replays it live through ``stereo_depth_node`` (started as its own process) with the recorded
   timing, collects what the node publishes, and scores it the same way.
4. Writes one report (offline, live, and their difference) and prints the paths.

Backend: FoundationStereo when a checkpoint is given (``--checkpoint``), configured
($FOUNDATION_STEREO_CHECKPOINT) or found in ~/.cache/foundation_stereo/<23-51-11|11-33-40>/;
otherwise it says so, explains how to get one, and runs everything with the ``sgbm`` backend.

Calibration of the Aloe recording (the images are already rectified, so only the geometry is
chosen): fx = fy = 3740 px and baseline 0.160 m, Middlebury 2006's published full-size focal
length and baseline, with the principal point at the image centre. Middlebury's images are
cropped, which offsets true disparities by a per-scene constant this calibration does not
model, so depths come out larger than the real scene (a few metres instead of about one); the
disparity metrics are exact, and the depth metrics compare prediction and ground truth through
the same calibration.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from foundation_stereo_ros.evaluation import metrics as M
from foundation_stereo_ros.evaluation.bag_pairing import StereoTopics
from foundation_stereo_ros.evaluation.checkpoint_search import HOW_TO_GET, candidates, find_checkpoint
from foundation_stereo_ros.evaluation.replay import ReplayOptions, replay_live
from foundation_stereo_ros.evaluation.runner import BackendRun
from foundation_stereo_ros.fileio import read_disparity_file, read_rgb
from foundation_stereo_ros.pipeline import ProcessorConfig
from foundation_stereo_ros.pipeline.calibration import rectified_pair
from foundation_stereo_ros.tools.cli_args import default_device_name
from foundation_stereo_ros.tools.evaluate import EvaluationOptions, evaluate_bag, print_outcome
from foundation_stereo_ros.tools.make_bag import BagOptions, StereoFrame, resize_frame, write_stereo_bag
from foundation_stereo_ros.tools.progress import Progress

OPENCV_DATA_ENV = "OPENCV_SAMPLE_DATA"
DEFAULT_OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"

# Middlebury 2006 full-size geometry (see the module doc).
ALOE_FOCAL_PX = 3740.0
ALOE_BASELINE_M = 0.160
NAMESPACE = "/foundation_stereo_demo"
BAG_NAMESPACE = "/foundation_stereo_demo/camera"


def opencv_data_dir() -> Path:
    d = Path(os.environ.get(OPENCV_DATA_ENV, DEFAULT_OPENCV_DATA))
    if not (d / "aloeL.jpg").is_file():
        raise ValueError(f"the Middlebury Aloe pair is not in {d}: install Debian's opencv-doc "
                         f"('sudo apt-get install opencv-doc', scripts/setup_env.sh does it) or set {OPENCV_DATA_ENV}")
    return d


def aloe_frames(data_dir: Path, scale: float, frames: int, window: float = 0.8):
    """The Aloe pair at ``scale`` as ``frames`` views of a camera panning left to right: windows of
    ``window`` x the width sliding across the pair (each with its own principal point).
    Returns (list of StereoFrame, calibration of the full scaled pair)."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if not 0 < window <= 1:
        raise ValueError(f"window must be in (0, 1], got {window}")
    left, right = read_rgb(data_dir / "aloeL.jpg"), read_rgb(data_dir / "aloeR.jpg")
    # aloeGT.png holds the left view's disparity in pixels at this image size (0 = unknown).
    gt = read_disparity_file(data_dir / "aloeGT.png", scale=1.0)
    h, w = left.shape[:2]
    full = rectified_pair(ALOE_FOCAL_PX, (w - 1) / 2.0, (h - 1) / 2.0, ALOE_BASELINE_M, w, h)
    pair = resize_frame(StereoFrame(left, right, gt, calibration=full), scale)
    sh, sw = pair.left.shape[:2]
    cw = max(int(round(sw * window)), 1)
    xs = [int(round(x)) for x in np.linspace(0, sw - cw, frames)] if frames > 1 else [(sw - cw) // 2]
    out = []
    for x0 in xs:
        crop = (slice(None), slice(x0, x0 + cw))
        out.append(StereoFrame(np.ascontiguousarray(pair.left[crop]), np.ascontiguousarray(pair.right[crop]),
                               np.ascontiguousarray(pair.gt_disparity[crop]),
                               calibration=pair.calibration.cropped(x0, 0, cw, sh)))
    return out, pair.calibration


def compare_live_offline(offline_frames: Dict[int, Dict[str, Any]], live: Any, label: str) -> Dict[str, Any]:
    """Rows of (metric, offline, live, |difference|) for the totals over the frames the node
    answered, and the largest per-frame difference."""
    answered = [s for s in live.frames if s in offline_frames]
    offline_sub = M.total(offline_frames[s]["counts"] for s in answered).summary()
    rows = []
    for key, live_value in live.totals.summary().items():
        off = offline_sub.get(key)
        diff = abs(off - live_value) if off is not None and live_value is not None else None
        rows.append({"backend": label, "metric": key, "offline": off, "live": live_value, "difference": diff})
    worst = 0.0
    for s in answered:
        a = offline_frames[s]["counts"].summary()
        b = live.frames[s].counts.summary()
        for k in a:
            if a[k] is not None and b.get(k) is not None:
                worst = max(worst, abs(a[k] - b[k]))
    max_disp_diff = 0.0
    validity_differs = pixels = 0
    for s in answered:
        d_off, d_live = offline_frames[s]["disparity"], live.frames[s].disparity
        v_off, v_live = np.isfinite(d_off) & (d_off > 0), np.isfinite(d_live) & (d_live > 0)
        both = v_off & v_live
        validity_differs += int((v_off != v_live).sum())
        pixels += int(v_off.size)
        if both.any():
            max_disp_diff = max(max_disp_diff, float(np.abs(d_off[both] - d_live[both]).max()))
    return {"frames_compared": len(answered), "offline_over_answered_frames": offline_sub, "rows": rows,
            "max_per_frame_metric_difference": worst, "max_disparity_difference_px": max_disp_diff,
            "pixels_valid_in_only_one": validity_differs, "pixels_compared": pixels,
            "note": "offline totals restricted to the frames the node published; a dropped frame is not a "
                    "difference"}


def agreement_sentence(comparison: Dict[str, Any]) -> str:
    """How the live node's disparities compare with the offline evaluation's, in words."""
    if comparison["frames_compared"] == 0:
        return "no frame to compare with the offline evaluation (see the node log)."
    diff, odd = comparison["max_disparity_difference_px"], comparison["pixels_valid_in_only_one"]
    metric = comparison["max_per_frame_metric_difference"]
    if diff == 0.0 and odd == 0:
        return "its disparities are identical to the offline evaluation's, and so are the metrics."
    if diff < 0.01 and odd <= 1e-3 * comparison["pixels_compared"]:
        # GPU kernels (cuDNN autotuning, atomics) need not reproduce bit for bit across processes.
        return (f"its disparities agree with the offline evaluation's within {diff:.2g} px ({odd} pixels valid in "
                f"only one: floating-point non-determinism of the GPU kernels); largest metric difference "
                f"{metric:.3g}.")
    return (f"its disparities DIFFER from the offline evaluation's (up to {diff:.3g} px, {odd} pixels valid in only "
            f"one): the node and the evaluation did not run the same configuration.")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foundation-stereo-demo", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", "-o", type=Path, help="output folder (default: output/demo_<time>)")
    p.add_argument("--checkpoint", help="FoundationStereo checkpoint (default: $FOUNDATION_STEREO_CHECKPOINT or "
                   "~/.cache/foundation_stereo/<23-51-11|11-33-40>/model_best_bp2.pth)")
    p.add_argument("--backend", choices=("auto", "foundation_stereo", "sgbm"), default="auto",
                   help="auto: foundation_stereo with a checkpoint, else sgbm (default)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    p.add_argument("--frames", type=int, help="frames in the recording (default 8 on CUDA, 3 on the CPU)")
    p.add_argument("--image-scale", type=float, help="image size relative to the 1282x1110 Aloe pair "
                   "(default 0.5 on CUDA, 0.25 on the CPU)")
    p.add_argument("--iters", type=int, help="GRU iterations (default 32 on CUDA, 8 on the CPU)")
    p.add_argument("--rate", type=float, default=2.0, help="camera rate of the recording, Hz (default 2)")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="mcap", help="bag storage (default mcap)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of the first frame before the offline "
                   "evaluation (default 1)")
    p.add_argument("--no-live", action="store_true", help="skip the live replay through the node")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def choose_backend(args: argparse.Namespace) -> Dict[str, Any]:
    """Backend, checkpoint and device, with the message for the user."""
    device = default_device_name() if args.device == "auto" else args.device
    checkpoint: Optional[str] = args.checkpoint
    if checkpoint is None and args.backend != "sgbm":
        found = find_checkpoint()
        checkpoint = str(found) if found else None
    if args.backend == "foundation_stereo" and not checkpoint:
        raise ValueError("backend foundation_stereo needs a checkpoint. " + HOW_TO_GET)
    if args.backend == "sgbm" or (args.backend == "auto" and not checkpoint):
        message = None
        if args.backend == "auto":
            looked = ", ".join(str(c) for c in candidates())
            message = (f"No FoundationStereo checkpoint found (looked at: {looked}). {HOW_TO_GET} "
                       f"Running the whole pipeline with the sgbm backend (OpenCV semi-global matching) instead.")
        return {"backend": "sgbm", "checkpoint": "", "device": device, "message": message}
    return {"backend": "foundation_stereo", "checkpoint": str(checkpoint), "device": device,
            "message": f"Using the FoundationStereo checkpoint {checkpoint} on {device}."}


def _record(bag: Path, args: argparse.Namespace, scale: float, frames: int, say: Callable[[str], None]):
    """Step 1: the recording of the Aloe pan; returns its frames."""
    stereo_frames, _ = aloe_frames(opencv_data_dir(), scale, frames)
    options = BagOptions(rate_hz=args.rate, start_ns=1_700_000_000_000_000_000, storage=args.storage,
                         topics=StereoTopics.under(BAG_NAMESPACE))
    summary = write_stereo_bag(bag, stereo_frames, stereo_frames[0].calibration, options)
    h, w = stereo_frames[0].left.shape[:2]
    say(f"Recording: {summary.frames} frames of the Middlebury Aloe pair ({w}x{h}, {args.rate:g} Hz, "
        f"ground-truth disparity) -> {bag}")
    return stereo_frames


def _node_parameters(choice: Dict[str, Any], iters: int, stereo_frames: Sequence[StereoFrame]) -> Dict[str, Any]:
    """The processing parameters of the offline evaluation and of the live node alike."""
    params: Dict[str, Any] = {"backend": choice["backend"], "checkpoint": choice["checkpoint"],
                              "device": choice["device"], "iters": iters, "rectify": "auto"}
    if choice["backend"] == "sgbm":
        # Search just beyond the largest true disparity of the recording, in SGBM's steps of 16.
        largest = max(float(np.max(f.gt_disparity)) for f in stereo_frames)
        params["sgbm_num_disparities"] = int(16 * np.ceil((1.1 * largest + 1) / 16))
    return params


def _evaluate_offline(bag: Path, out: Path, args: argparse.Namespace, params: Dict[str, Any],
                      choice: Dict[str, Any], frames: int, scale: float):
    """Step 2: (the evaluation's outcome, each frame's counts and disparity by stamp)."""
    label = choice["backend"]
    offline_frames: Dict[int, Dict[str, Any]] = {}

    def keep(frame: Any) -> None:  # per-frame offline results, for the comparison with the live node
        bf = frame.backends[label]
        if bf.result is not None:
            offline_frames[frame.record.stamp_ns] = {"counts": bf.counts, "disparity": bf.result.disparity}

    options = EvaluationOptions(output_bag=out / "outputs", output_storage=args.storage, pictures=min(frames, 3),
                                warmup=args.warmup, show_progress=not args.no_progress,
                                extra_meta={"recording": "Middlebury 2006 'Aloe' (opencv-doc), camera pan",
                                            "calibration": {"fx_px_full_size": ALOE_FOCAL_PX,
                                                            "baseline_m": ALOE_BASELINE_M, "scale": scale},
                                            "notes": choice["message"] or ""})
    run_ = BackendRun(label, ProcessorConfig.from_mapping(params))
    outcome = evaluate_bag(bag, [run_], out / "report", options, on_frame=keep)
    return outcome, offline_frames


def _replay_live(bag: Path, out: Path, args: argparse.Namespace, params: Dict[str, Any], label: str, frames: int,
                 outcome: Any, say: Callable[[str], None]):
    """Step 3, the replay: (the node's result, the replay rate)."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # keep the demo off the robot's network
    lat = outcome.summary["backends"][label]["latency"]
    period = 1.0 / args.rate
    p95 = (lat.get("p95_ms") or 0.0) / 1e3
    # The node drops frames it cannot keep up with (newest pair wins), as it should on a robot.
    # Slow the replay down when this machine is slower than the recorded camera rate, so that
    # every frame gets an answer to compare.
    replay_rate = min(1.0, period / (1.5 * p95 + 0.1)) if p95 > 0 else 1.0
    pace = ("recorded timing" if replay_rate == 1.0 else
            f"{replay_rate:.2g} x recorded speed: this machine processes a frame in {p95 * 1e3:.0f} ms")
    say(f"Live replay through stereo_depth_node ({pace}) ...")
    bar = Progress(frames, "replaying", not args.no_progress)
    try:
        live = replay_live(bag, NAMESPACE, dict(params), ReplayOptions(
            rate=replay_rate, log_dir=out / "live", idle_timeout_s=max(20.0, 20 * p95), progress=bar.update))
    finally:
        bar.close()
    return live, replay_rate


def _compare_live(live: Any, replay_rate: float, offline_frames: Dict[int, Dict[str, Any]], label: str,
                  outcome: Any, result: Dict[str, Any], say: Callable[[str], None]) -> None:
    """Step 3, the comparison: into the report and ``result``."""
    comparison = compare_live_offline(offline_frames, live, label)
    outcome.add_sections({"live": {"replay_rate": replay_rate, "backends": {label: live.summary()}},
                          "live_vs_offline": comparison})
    result["live"] = live.summary()
    result["live_vs_offline"] = comparison
    say(f"Live: the node answered {len(live.frames)}/{live.published} frames; "
        f"{agreement_sentence(comparison)}")
    result["node_log"] = str(live.node_log)


def run(args: argparse.Namespace, out_stream: Any = None) -> Dict[str, Any]:
    """The main job; returns the paths and the summary (see the module doc)."""
    out_stream = out_stream or sys.stdout

    def say(text: str) -> None:
        print(text, file=out_stream, flush=True)

    choice = choose_backend(args)
    if choice["message"]:
        say(choice["message"])
    cuda = choice["device"].startswith("cuda")
    if choice["backend"] == "foundation_stereo" and not cuda:
        say("Note: FoundationStereo on the CPU takes from seconds (ViT-S, small images) to minutes (ViT-L) per "
            "frame; --frames, --image-scale and --iters trade detail for time.")
    frames = args.frames or (8 if cuda else 3)
    scale = args.image_scale or (0.5 if cuda else 0.25)
    iters = args.iters or (32 if cuda else 8)
    out = args.output or Path("output") / f"demo_{datetime.datetime.now():%Y%m%d_%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    bag = out / "recording"
    if bag.exists():
        raise ValueError(f"{bag} exists; choose another --output")

    stereo_frames = _record(bag, args, scale, frames, say)  # 1. the recording
    # 2. offline evaluation, with exactly the parameters the node gets below
    params = _node_parameters(choice, iters, stereo_frames)
    label = choice["backend"]
    say(f"Offline evaluation ({label}) ...")
    outcome, offline_frames = _evaluate_offline(bag, out, args, params, choice, frames, scale)
    result: Dict[str, Any] = {"recording": str(bag), "report": outcome.paths.as_dict(),
                              "outputs_bag": str(out / "outputs"), "backend": label}
    if not args.no_live:  # 3. live replay through the node
        live, replay_rate = _replay_live(bag, out, args, params, label, frames, outcome, say)
        _compare_live(live, replay_rate, offline_frames, label, outcome, result, say)
    print_outcome(outcome, out_stream)
    say(f"recording: {bag.resolve()}")
    if not args.no_live:
        say(f"node log: {Path(result['node_log']).resolve()}")
    result["summary"] = outcome.summary
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, RuntimeError) as exc:
        print(f"foundation-stereo-demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
