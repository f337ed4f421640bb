"""Training pairs from rosbag2 recordings that carry ground truth.

The bag is read with the evaluation tool's reader
(:class:`foundation_stereo_ros.evaluation.bag_io.StereoBagReader`: same topic detection, same
left/right/CameraInfo pairing as the node, ground truth attached by the left image's stamp) and
each pair is decoded and rectified with the node's own pipeline code
(:func:`~foundation_stereo_ros.pipeline.decode_stereo_pair`,
:class:`~foundation_stereo_ros.pipeline.Rectifier`), so the network is trained on exactly the
images it sees at run time. Images may be raw ``sensor_msgs/Image`` or ``CompressedImage`` (JPEG,
PNG) as robots record them; a pair the pipeline cannot decode is skipped and counted by its
problem key in the manifest's ``skipped``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import yaml

from foundation_stereo_ros.evaluation.bag_io import StereoBagReader
from foundation_stereo_ros.fileio import write_pfm, write_rgb
from foundation_stereo_ros.pipeline import (RECTIFY_MODES, Rectifier, StereoCalibration, StereoInputError,
                                            decode_stereo_pair)

MANIFEST = "manifest.yaml"


def _bag_key(bag: Path, options: Dict[str, object]) -> str:
    meta = bag / "metadata.yaml"
    st = meta.stat()
    text = json.dumps({"bag": str(bag.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns, **options},
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ExtractionOptions:
    """Which topics and pairs :func:`extract_bag` takes, and whether it rectifies them. Topics
    left None are found by the evaluation tool's detection."""

    left_topic: Optional[str] = None
    right_topic: Optional[str] = None
    left_info_topic: Optional[str] = None
    right_info_topic: Optional[str] = None
    gt_disparity_topic: Optional[str] = None
    gt_depth_topic: Optional[str] = None
    stride: int = 1  # every stride-th pair
    rectify: str = "auto"  # one of RECTIFY_MODES, as the node's parameter

    def topic_overrides(self) -> Dict[str, Optional[str]]:
        """The topics as :class:`StereoBagReader` names them."""
        return dict(left_image=self.left_topic, right_image=self.right_topic, left_info=self.left_info_topic,
                    right_info=self.right_info_topic, gt_disparity=self.gt_disparity_topic,
                    gt_depth=self.gt_depth_topic)


def _published_to_network(record: Any, calib: StereoCalibration) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """(the pair's ground truth as network disparity x_left - x_right, 0 = unknown, None) or
    (None, why there is none)."""
    if record.gt_disparity is not None:
        published = np.asarray(record.gt_disparity, dtype=np.float32)
        known = np.isfinite(published) & (published > 0)
        return np.where(known, published + np.float32(calib.delta_cx), 0.0), None
    if record.gt_depth is not None:
        z = np.asarray(record.gt_depth, dtype=np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            known = np.isfinite(z) & (z > 0)
            return np.where(known, calib.f * calib.baseline / z + calib.delta_cx, 0.0), None
    return None, "no_ground_truth"


def _training_pair(record: Any, rectifier: Rectifier, rectify: str) -> Tuple[Optional[tuple], Optional[str]]:
    """((left, right, disparity) as the network is trained on them, None), or (None, the problem
    key of a pair that cannot be used)."""
    try:
        calib = StereoCalibration.from_camera_info(record.left_info, record.right_info)
        pair = decode_stereo_pair(record.left, record.right)
        h, w = pair.left.shape[:2]
        calib.check_image_size(w, h)
        left, right = pair.left, pair.right
        if calib.needs_rectification(rectify):
            left, right = rectifier.rectify(left, right, calib)
    except StereoInputError as e:
        return None, e.problem
    disp, problem = _published_to_network(record, calib)
    if problem is not None:
        return None, problem
    if disp.shape != (h, w):
        return None, "ground_truth_size"
    return (left, right, disp), None


def _extract_pairs(bag: Path, tmp: Path, options: ExtractionOptions) -> Tuple[int, Dict[str, int], Any]:
    """Write the usable pairs into ``tmp``: (pairs written, skipped pairs by problem, the topics)."""
    rectifier = Rectifier()
    skipped: Dict[str, int] = {}
    written = 0
    with StereoBagReader(bag, **options.topic_overrides()) as reader:
        topics = reader.topics
        if not (topics.gt_disparity or topics.gt_depth):
            raise ValueError(f"{bag}: no ground-truth topic found; pass --gt-disparity-topic or --gt-depth-topic "
                             f"(topics: {', '.join(sorted(reader.types))})")
        for record in reader.pairs():
            if record.index % options.stride:
                continue
            pair, problem = _training_pair(record, rectifier, options.rectify)
            if problem is not None:
                skipped[problem] = skipped.get(problem, 0) + 1
                continue
            left, right, disp = pair
            stem = f"{written:06d}_{record.stamp_ns}"
            write_rgb(tmp / "left" / f"{stem}.png", left)
            write_rgb(tmp / "right" / f"{stem}.png", right)
            write_pfm(tmp / "disparity" / f"{stem}.pfm", np.where(disp > 0, disp, 0.0).astype(np.float32))
            written += 1
    return written, skipped, topics


def extract_bag(bag: Path, cache_root: Path, options: ExtractionOptions = ExtractionOptions(),
                log: Callable[[str], None] = lambda s: None) -> Path:
    """Extract the ground-truth pairs of ``bag`` (every ``options.stride``-th pair) into a folder
    under ``cache_root`` and return it."""
    if options.stride < 1:
        raise ValueError(f"bag stride must be >= 1, got {options.stride}")
    if options.rectify not in RECTIFY_MODES:
        raise ValueError(f"rectify must be one of {RECTIFY_MODES}, got {options.rectify!r}")
    bag = Path(bag)
    if bag.is_file():
        bag = bag.parent
    if not (bag / "metadata.yaml").is_file():
        raise ValueError(f"{bag}: not a rosbag2 folder (no metadata.yaml)")
    key_options = {**{k: v for k, v in options.topic_overrides().items() if v}, "stride": options.stride,
                   "rectify": options.rectify}
    out = Path(cache_root) / f"{bag.name}-{_bag_key(bag, key_options)}"
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
    written, skipped, topics = _extract_pairs(bag, tmp, options)
    if written == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{bag}: no usable pair with ground truth (skipped: {skipped or 'none paired'})")
    info = {"bag": str(bag.resolve()), "pairs": written, "skipped": skipped, "options": key_options,
            "topics": {k: getattr(topics, k) for k in ("left_image", "left_info", "right_image", "right_info",
                                                        "gt_disparity", "gt_depth")},
            "complete": True}
    (tmp / MANIFEST).write_text(yaml.safe_dump(info, sort_keys=False))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"{bag}: extracted {written} pairs into {out}" + (f" (skipped {skipped})" if skipped else ""))
    return out
