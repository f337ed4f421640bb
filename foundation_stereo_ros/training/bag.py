"""Training pairs from rosbag2 recordings that carry ground truth.

The bag is read with the evaluation tool's reader
(:class:`foundation_stereo_ros.evaluation.bag_io.StereoBagReader`: same topic detection, same
left/right/CameraInfo pairing as the node, ground truth attached by the left image's stamp) and
each pair is decoded and rectified with the node's own pipeline code
(:func:`~foundation_stereo_ros.pipeline.decode_stereo_pair`,
:class:`~foundation_stereo_ros.pipeline.Rectifier`), so the network is trained on exactly the
images it sees at run time.

Ground truth must be registered to the rectified left image at its resolution (what the node
publishes): a ``stereo_msgs/DisparityImage`` (or 32FC1 image) in the published convention
``x_left - x_right - delta_cx``, or a depth image (32FC1 metres or 16UC1 millimetres). Both are
converted to the network's convention ``x_left - x_right``: d = d_published + delta_cx, and
d = f * t / Z + delta_cx for depth, with f, t and delta_cx from the pair's CameraInfo.

The pairs are extracted once into a cache folder in the ``folder`` layout of :mod:`.data`
(``left/NNNNNN.png``, ``right/NNNNNN.png``, ``disparity/NNNNNN.pfm``), keyed by the bag and the
extraction options, and reused by later runs.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

MANIFEST = "manifest.yaml"


def _bag_key(bag: Path, options: Dict[str, object]) -> str:
    meta = bag / "metadata.yaml"
    st = meta.stat()
    text = json.dumps({"bag": str(bag.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns, **options},
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def extract_bag(bag: Path, cache_root: Path, left_topic: Optional[str] = None, right_topic: Optional[str] = None,
                left_info_topic: Optional[str] = None, right_info_topic: Optional[str] = None,
                gt_disparity_topic: Optional[str] = None, gt_depth_topic: Optional[str] = None,
                stride: int = 1, rectify: str = "auto", log: Callable[[str], None] = lambda s: None) -> Path:
    """Extract the ground-truth pairs of ``bag`` (every ``stride``-th pair) into a folder under
    ``cache_root`` and return it. Topics default to the evaluation tool's detection."""
    import yaml

    from foundation_stereo_ros.evaluation.bag_io import StereoBagReader
    from foundation_stereo_ros.fileio import write_pfm, write_rgb
    from foundation_stereo_ros.pipeline import (RECTIFY_MODES, Rectifier, StereoCalibration, StereoInputError,
                                                decode_stereo_pair)

    if stride < 1:
        raise ValueError(f"bag stride must be >= 1, got {stride}")
    if rectify not in RECTIFY_MODES:
        raise ValueError(f"rectify must be one of {RECTIFY_MODES}, got {rectify!r}")
    bag = Path(bag)
    if bag.is_file():
        bag = bag.parent
    overrides = dict(left_image=left_topic, right_image=right_topic, left_info=left_info_topic,
                     right_info=right_info_topic, gt_disparity=gt_disparity_topic, gt_depth=gt_depth_topic)
    if not (bag / "metadata.yaml").is_file():
        raise ValueError(f"{bag}: not a rosbag2 folder (no metadata.yaml)")
    options = {**{k: v for k, v in overrides.items() if v}, "stride": stride, "rectify": rectify}
    out = Path(cache_root) / f"{bag.name}-{_bag_key(bag, options)}"
    manifest = out / MANIFEST
    if manifest.is_file():
        done = yaml.safe_load(manifest.read_text()) or {}
        if done.get("complete"):
            log(f"{bag}: using the {done.get('pairs')} pairs extracted before in {out}")
            return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("left", "right", "disparity"):
        (tmp / sub).mkdir(parents=True)

    rectifier = Rectifier()
    skipped: Dict[str, int] = {}
    written = 0
    with StereoBagReader(bag, **overrides) as reader:
        topics = reader.topics
        if not (topics.gt_disparity or topics.gt_depth):
            raise ValueError(f"{bag}: no ground-truth topic found; pass --gt-disparity-topic or --gt-depth-topic "
                             f"(topics: {', '.join(sorted(reader.types))})")
        for record in reader.pairs():
            if record.index % stride:
                continue
            try:
                calib = StereoCalibration.from_camera_info(record.left_info, record.right_info)
                pair = decode_stereo_pair(record.left, record.right)
                h, w = pair.left.shape[:2]
                calib.check_image_size(w, h)
                left, right = pair.left, pair.right
                if calib.needs_rectification(rectify):
                    left, right = rectifier.rectify(left, right, calib)
            except StereoInputError as e:
                skipped[e.problem] = skipped.get(e.problem, 0) + 1
                continue
            if record.gt_disparity is not None:
                published = np.asarray(record.gt_disparity, dtype=np.float32)
                known = np.isfinite(published) & (published > 0)
                disp = np.where(known, published + np.float32(calib.delta_cx), 0.0)
            elif record.gt_depth is not None:
                z = np.asarray(record.gt_depth, dtype=np.float32)
                with np.errstate(divide="ignore", invalid="ignore"):
                    known = np.isfinite(z) & (z > 0)
                    disp = np.where(known, calib.f * calib.baseline / z + calib.delta_cx, 0.0)
            else:
                skipped["no_ground_truth"] = skipped.get("no_ground_truth", 0) + 1
                continue
            if disp.shape != (h, w):
                skipped["ground_truth_size"] = skipped.get("ground_truth_size", 0) + 1
                continue
            stem = f"{written:06d}_{record.stamp_ns}"
            write_rgb(tmp / "left" / f"{stem}.png", left)
            write_rgb(tmp / "right" / f"{stem}.png", right)
            write_pfm(tmp / "disparity" / f"{stem}.pfm", np.where(disp > 0, disp, 0.0).astype(np.float32))
            written += 1
    if written == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{bag}: no usable pair with ground truth (skipped: {skipped or 'none paired'})")
    info = {"bag": str(bag.resolve()), "pairs": written, "skipped": skipped, "options": options,
            "topics": {k: getattr(topics, k) for k in ("left_image", "left_info", "right_image", "right_info",
                                                        "gt_disparity", "gt_depth")},
            "complete": True}
    (tmp / MANIFEST).write_text(yaml.safe_dump(info, sort_keys=False))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"{bag}: extracted {written} pairs into {out}" + (f" (skipped {skipped})" if skipped else ""))
    return out
