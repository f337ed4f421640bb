"""foundation-stereo-make-bag: stereo image pairs (+ calibration, + optional ground truth) -> rosbag2.

Usage::

    foundation-stereo-make-bag OUT_BAG --left 'data/left/*.png' --right 'data/right/*.png' \\
        --calib calib.yaml [--gt-disparity 'data/disp/*.pfm'] [--rate 10] [--storage mcap] [--compressed jpeg]
    foundation-stereo-make-bag OUT_BAG --cameras front,rear --left 'data/{camera}/left/*.png' \\
        --right 'data/{camera}/right/*.png' --calib 'calib/{camera}.yaml'

The bag carries, for every pair, ``<ns>/left/image_rect``, ``<ns>/right/image_rect`` (or
``image_raw`` with ``--raw``, for images the node must still rectify; with ``--compressed jpeg|png``
sensor_msgs/CompressedImage on ``<image topic>/compressed``, as compressed_image_transport
publishes them and robots record them), both ``camera_info`` and,
when given, ``<ns>/gt/disparity`` (stereo_msgs/DisparityImage, NaN = unknown) and
``<ns>/gt/depth`` (32FC1 metres, NaN = unknown); ``<ns>`` is ``/stereo`` by default, which is what
the node subscribes to when started in that namespace. Frames are stamped and logged at ``--rate``
Hz, so replaying the bag reproduces a camera running at that rate.

Several cameras (``--cameras front,rear``): each camera's topics go under its own namespace,
``<ns>/<camera>/left/image_rect`` ... (``<ns>`` is empty by default: ``/front/left/image_rect``), as
the node's ``cameras`` parameter subscribes to them. ``{camera}`` in ``--left``, ``--right``,
``--calib``, ``--gt-disparity``, ``--gt-depth``, ``--frame-id`` and ``--right-frame-id`` stands for
the camera's name (``--left 'data/{camera}/left/*.png' --calib 'calib/{camera}.yaml'``); without it
every camera gets the same files. ``--scale rear=0.5`` scales one camera (cameras may differ in
size). The cameras are stamped together: frame i of every camera has the same stamp.

Ground-truth disparity files hold x_left - x_right in pixels (Middlebury/KITTI/Scene Flow
convention): PFM, .npy, 8-bit PNG (value = disparity) or 16-bit PNG (value = 256 * disparity,
KITTI), 0 or non-finite = unknown. The GT topic stores it as DisparityImage does, minus
``cx_left - cx_right``. Depth files: PFM/.npy in metres or 16-bit PNG in millimetres.
"""
from __future__ import annotations

import argparse
import glob
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import cv2
import numpy as np

from foundation_stereo_ros.evaluation.bag_io import (COMPRESSED_CODECS, STORAGES, StereoBagWriter, StereoTopics,
                                                     camera_info_msg, compressed_image_msg, disparity_msg, image_msg)
from foundation_stereo_ros.evaluation.calibration_files import load_stereo_calibration
from foundation_stereo_ros.fileio import read_depth_file, read_disparity_file, read_rgb
from foundation_stereo_ros.pipeline.calibration import StereoCalibration
from foundation_stereo_ros.vocabulary import is_camera_namespace

ENCODINGS = ("rgb8", "bgr8", "mono8")


@dataclass
class StereoFrame:
    """One pair for the bag: RGB uint8 (H, W, 3) or grey (H, W) images, optional ground truth
    (raw disparity x_left - x_right in px, 0 = unknown; depth in metres, NaN/0 = unknown) and an
    optional per-frame calibration (default: the bag's)."""

    left: np.ndarray
    right: np.ndarray
    gt_disparity: Optional[np.ndarray] = None
    gt_depth: Optional[np.ndarray] = None
    calibration: Optional[StereoCalibration] = None


@dataclass
class BagSummary:
    path: Path
    frames: int
    topics: StereoTopics
    counts: dict
    start_ns: int
    period_ns: int


def _convert(rgb: np.ndarray, encoding: str) -> np.ndarray:
    if rgb.ndim == 2:
        grey = rgb
        return grey if encoding == "mono8" else np.repeat(grey[:, :, None], 3, axis=2)
    if encoding == "rgb8":
        return rgb
    if encoding == "bgr8":
        return np.ascontiguousarray(rgb[:, :, ::-1])
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


@dataclass(frozen=True)
class BagOptions:
    """How :func:`write_stereo_bag` writes: timing, storage, topic names, encoding and frame ids."""

    rate_hz: float = 10.0  # frame i is stamped and logged at start_ns + i / rate_hz
    start_ns: Optional[int] = None  # stamp of the first frame (default: now)
    storage: str = "sqlite3"  # one of STORAGES
    topics: Optional[StereoTopics] = None  # default: StereoTopics.under()
    encoding: str = "rgb8"  # one of ENCODINGS
    frame_id: str = "stereo_left_optical_frame"
    right_frame_id: str = "stereo_right_optical_frame"
    version: int = 8  # rosbag2 metadata version: 8 for Humble and newer, 9 Jazzy and newer
    compressed: Optional[str] = None  # one of COMPRESSED_CODECS: CompressedImage on <image topic>/compressed
    jpeg_quality: int = 95  # compressed_image_transport's parameters and defaults
    png_level: int = 3

    def image_msg(self, array: np.ndarray, stamp_ns: int, frame_id: str):
        """The image message of an array already in ``encoding``: Image, or CompressedImage."""
        if self.compressed:
            return compressed_image_msg(array, self.encoding, stamp_ns, frame_id, self.compressed,
                                        self.jpeg_quality, self.png_level)
        return image_msg(array, self.encoding, stamp_ns, frame_id)


@dataclass
class CameraStream:
    """One stereo camera of a bag: its frames, their default calibration, topics and frame ids."""

    frames: Iterable[StereoFrame]
    calibration: StereoCalibration
    topics: StereoTopics
    frame_id: str = "stereo_left_optical_frame"
    right_frame_id: str = "stereo_right_optical_frame"


def write_stereo_bag(path: Path, frames: Iterable[StereoFrame], calibration: StereoCalibration,
                     options: BagOptions = BagOptions()) -> BagSummary:
    """Write ``frames`` to a new bag at ``path``; frame i is stamped and logged at
    ``options.start_ns + i / options.rate_hz``."""
    camera = CameraStream(frames, calibration, options.topics or StereoTopics.under(), options.frame_id,
                          options.right_frame_id)
    return write_camera_bag(path, {"": camera}, options)[""]


def write_camera_bag(path: Path, cameras: Mapping[str, CameraStream],
                     options: BagOptions = BagOptions()) -> Dict[str, BagSummary]:
    """Write several stereo cameras to a new bag at ``path``, stamped together: frame i of every
    camera is stamped and logged at ``options.start_ns + i / options.rate_hz`` (a camera with fewer
    frames stops earlier). ``options.topics`` and the frame ids are ignored: each camera has its
    own. Returns each camera's summary (its topics' message counts)."""
    if not cameras:
        raise ValueError("no camera to write")
    if not np.isfinite(options.rate_hz) or options.rate_hz <= 0:
        raise ValueError(f"rate must be positive, got {options.rate_hz} Hz")
    if options.encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {options.encoding!r}")
    if options.compressed is not None and options.compressed not in COMPRESSED_CODECS:
        raise ValueError(f"compression must be one of {COMPRESSED_CODECS}, got {options.compressed!r}")
    if not 1 <= options.jpeg_quality <= 100 or not 0 <= options.png_level <= 9:
        raise ValueError(f"JPEG quality must be 1..100 and PNG level 0..9, got {options.jpeg_quality} and "
                         f"{options.png_level}")
    streams = {name: replace(cam, topics=cam.topics.compressed() if options.compressed else cam.topics)
               for name, cam in cameras.items()}
    topic_owner: Dict[str, str] = {}
    for name, cam in streams.items():
        for topic in (*cam.topics.stereo(), cam.topics.gt_disparity, cam.topics.gt_depth):
            if topic and topic_owner.setdefault(topic, name) != name:
                raise ValueError(f"cameras {topic_owner[topic]!r} and {name!r} would both write {topic}")
    options = replace(options, start_ns=time.time_ns() if options.start_ns is None else int(options.start_ns))
    period = int(round(1e9 / options.rate_hz))
    writer = StereoBagWriter(path, storage=options.storage, version=options.version)
    try:
        frames = _write_cameras(writer, streams, options, period)
    except BaseException:
        # A half-written bag would be read later as if it were complete.
        shutil.rmtree(path, ignore_errors=True)
        raise
    return {name: BagSummary(Path(path), frames[name], cam.topics,
                             {t: n for t, n in writer.counts.items() if topic_owner.get(t) == name},
                             options.start_ns, period)
            for name, cam in streams.items()}


def _write_cameras(writer: StereoBagWriter, cameras: Mapping[str, CameraStream], options: BagOptions,
                   period: int) -> Dict[str, int]:
    """Frame i of every camera, then frame i + 1 ...: the bag's log order is the stamp order."""
    iterators = {name: iter(cam.frames) for name, cam in cameras.items()}
    written = {name: 0 for name in cameras}
    with writer:
        i = 0
        while iterators:
            stamp = options.start_ns + i * period
            for name in list(iterators):
                fr = next(iterators[name], None)
                if fr is None:
                    del iterators[name]
                    continue
                try:
                    _write_frame(writer, fr, cameras[name], options, i, stamp)
                except ValueError as exc:
                    raise ValueError(f"camera {name}: {exc}" if name else str(exc)) from None
                written[name] += 1
            i += 1
    empty = [name for name, n in written.items() if n == 0]
    if empty:
        raise ValueError("no frames to write" + (f" for camera(s) {', '.join(empty)}" if any(empty) else ""))
    return written


def _write_frame(writer: StereoBagWriter, fr: StereoFrame, camera: CameraStream, options: BagOptions, i: int,
                 stamp: int) -> None:
    """Frame ``i`` of one camera: both images, both CameraInfo and its ground truth."""
    topics, encoding = camera.topics, options.encoding
    calib = fr.calibration or camera.calibration
    left, right = np.asarray(fr.left), np.asarray(fr.right)
    if left.shape != right.shape:
        raise ValueError(f"frame {i}: left {left.shape} and right {right.shape} differ in size")
    if left.dtype != np.uint8:
        raise ValueError(f"frame {i}: images must be uint8, got {left.dtype}")
    h, w = left.shape[:2]
    if (calib.left.width, calib.left.height) != (w, h):
        raise ValueError(f"frame {i}: images are {w}x{h}, the calibration is for "
                         f"{calib.left.width}x{calib.left.height}")
    writer.write(topics.left_image, options.image_msg(_convert(left, encoding), stamp, camera.frame_id))
    writer.write(topics.left_info, camera_info_msg(calib.left, stamp, camera.frame_id))
    writer.write(topics.right_image, options.image_msg(_convert(right, encoding), stamp, camera.right_frame_id))
    writer.write(topics.right_info, camera_info_msg(calib.right, stamp, camera.right_frame_id))
    _write_ground_truth(writer, fr, calib, topics, i, stamp, camera.frame_id)


def _write_ground_truth(writer: StereoBagWriter, fr: StereoFrame, calib: StereoCalibration, topics: StereoTopics,
                        i: int, stamp: int, frame_id: str) -> None:
    """Frame ``i``'s ground truth as published: disparity minus delta_cx, NaN where unknown."""
    h, w = np.asarray(fr.left).shape[:2]
    if fr.gt_disparity is not None:
        if topics.gt_disparity is None:
            raise ValueError("ground-truth disparity given but no gt_disparity topic")
        gt = np.asarray(fr.gt_disparity, dtype=np.float32)
        if gt.shape != (h, w):
            raise ValueError(f"frame {i}: ground-truth disparity is {gt.shape[::-1]}, images {w}x{h}")
        known = np.isfinite(gt) & (gt > 0)
        published = np.full(gt.shape, np.nan, np.float32)
        published[known] = gt[known] - calib.delta_cx
        writer.write(topics.gt_disparity, disparity_msg(published, stamp, frame_id, calib.f,
                                                        calib.baseline))
    if fr.gt_depth is not None:
        if topics.gt_depth is None:
            raise ValueError("ground-truth depth given but no gt_depth topic")
        z = np.asarray(fr.gt_depth, dtype=np.float32).copy()
        if z.shape != (h, w):
            raise ValueError(f"frame {i}: ground-truth depth is {z.shape[::-1]}, images {w}x{h}")
        z[~np.isfinite(z) | (z <= 0)] = np.nan
        writer.write(topics.gt_depth, image_msg(z, "32FC1", stamp, frame_id))


# ---------------------------------------------------------------------------------------------
# files -> frames

def expand(patterns: Sequence[str], what: str) -> List[Path]:
    """Files named by globs or paths, each pattern's matches sorted by name."""
    files: List[Path] = []
    for pat in patterns:
        matches = sorted(glob.glob(pat)) if any(c in pat for c in "*?[") else [pat]
        if not matches:
            raise ValueError(f"{what}: nothing matches {pat!r}")
        for m in matches:
            if not Path(m).is_file():
                raise ValueError(f"{what}: {m} is not a file")
        files.extend(Path(m) for m in matches)
    return files


def resize_frame(frame: StereoFrame, factor: float) -> StereoFrame:
    """The frame resized by ``factor``: images with area averaging, ground truth with nearest
    neighbour (keeps unknown pixels unknown) and disparities multiplied by ``factor``."""
    h, w = frame.left.shape[:2]
    for name, values in (("ground-truth disparity", frame.gt_disparity), ("ground-truth depth", frame.gt_depth)):
        # Checked before resizing, which would otherwise hide a map that belongs to other images.
        if values is not None and values.shape[:2] != (h, w):
            raise ValueError(f"{name} is {values.shape[1]}x{values.shape[0]}, the images are {w}x{h}")
    if factor == 1.0:
        return frame
    size = (int(round(w * factor)), int(round(h * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR

    def gt(values: Optional[np.ndarray], mult: float) -> Optional[np.ndarray]:
        if values is None:
            return None
        return cv2.resize(values, size, interpolation=cv2.INTER_NEAREST) * np.float32(mult)

    return StereoFrame(cv2.resize(frame.left, size, interpolation=interp),
                       cv2.resize(frame.right, size, interpolation=interp),
                       gt(frame.gt_disparity, factor), gt(frame.gt_depth, 1.0),
                       frame.calibration.scaled(factor) if frame.calibration else None)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foundation-stereo-make-bag", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Calibration formats: OpenCV FileStorage YAML/XML (M1 D1 M2 D2 + R1 R2 "
                                       "P1 P2 or R T; several --calib files are merged), K.txt (K and "
                                       "baseline), or the package's simple YAML (fx cx cy baseline, or "
                                       "left/right CameraInfo); see the README.")
    p.add_argument("output", type=Path, help="bag folder to create (must not exist)")
    p.add_argument("--left", nargs="+", required=True, help="left images (files or quoted globs, sorted by name)")
    p.add_argument("--right", nargs="+", required=True, help="right images, as many as --left")
    p.add_argument("--calib", nargs="+", required=True, action="extend", help="calibration file(s)")
    p.add_argument("--gt-disparity", nargs="+", help="ground-truth disparity maps, one per pair")
    p.add_argument("--gt-disparity-scale", type=float, help="stored value = scale * disparity "
                   "(default: 256 for 16-bit PNG, else 1)")
    p.add_argument("--gt-depth", nargs="+", help="ground-truth depth maps, one per pair")
    p.add_argument("--gt-depth-scale", type=float, help="stored value = scale * metres "
                   "(default: 1000 for 16-bit PNG, else 1)")
    p.add_argument("--rate", type=float, default=10.0, help="frame rate in Hz (default 10)")
    p.add_argument("--start-time", type=float, help="stamp of the first frame, seconds since the epoch "
                   "(default: now)")
    p.add_argument("--repeat", type=int, default=1, help="write the sequence this many times (default 1)")
    p.add_argument("--scale", default="1", help="resize images, calibration and ground truth by this factor "
                   "(default 1); per camera: 0.5,rear=0.25")
    p.add_argument("--cameras", help="comma list of camera names: one stereo camera per name, under "
                   "<namespace>/<name>/; {camera} in file options stands for the name")
    p.add_argument("--storage", choices=STORAGES, default="sqlite3", help="rosbag2 storage (default sqlite3)")
    p.add_argument("--bag-version", type=int, choices=(8, 9), default=8,
                   help="rosbag2 metadata version: 8 for Humble and newer (default), 9 Jazzy and newer")
    p.add_argument("--namespace", help="topic namespace (default /stereo; with --cameras none: /<camera>/...)")
    p.add_argument("--raw", action="store_true", help="name the image topics image_raw: the images are not "
                   "rectified and the node must rectify them with the calibration")
    p.add_argument("--encoding", choices=ENCODINGS, default="rgb8", help="image encoding (default rgb8)")
    p.add_argument("--compressed", choices=COMPRESSED_CODECS, help="write sensor_msgs/CompressedImage on "
                   "<image topic>/compressed, as compressed_image_transport publishes them (default: raw Image)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1..100 (default 95, as "
                   "compressed_image_transport)")
    p.add_argument("--png-level", type=int, default=3, help="PNG compression level 0..9 (default 3)")
    p.add_argument("--frame-id", help="frame_id of the left camera (default stereo_left_optical_frame; with "
                   "--cameras <camera>_left_optical_frame)")
    p.add_argument("--right-frame-id", help="frame_id of the right camera (default stereo_right_optical_frame; "
                   "with --cameras <camera>_right_optical_frame)")
    p.add_argument("--translation-unit", choices=("m", "cm", "mm"), default="m",
                   help="unit of T/P in OpenCV calibration files (default m)")
    return p


CAMERA_FIELD = "{camera}"  # stands for the camera's name in file and frame-id options


def camera_names(text: Optional[str]) -> List[str]:
    """``--cameras front,rear`` -> ['front', 'rear'] (ROS name tokens, each once); None -> []."""
    if text is None:
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--cameras: empty list")
    for n in names:
        if not is_camera_namespace(n):
            raise ValueError(f"--cameras: {n!r} is not a ROS namespace (letters, digits, '_' and '/')")
    if len(set(names)) != len(names):
        raise ValueError(f"--cameras: a camera is named twice in {names}")
    return names


def scale_factors(text: str, cameras: Sequence[str]) -> Dict[str, float]:
    """``--scale 0.5`` (every camera) or ``--scale 0.5,rear=0.25`` (per camera) -> {camera: factor}."""
    default, per_camera = 1.0, {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, eq, value = item.rpartition("=")
        try:
            factor = float(value)
        except ValueError:
            raise ValueError(f"--scale: {item!r} is not a number or CAMERA=NUMBER") from None
        if not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"--scale must be positive, got {value}")
        if not eq:
            default = factor
        elif name not in cameras:
            raise ValueError(f"--scale {item!r}: no camera {name!r} in --cameras {','.join(cameras) or '(none)'}")
        else:
            per_camera[name] = factor
    return {c: per_camera.get(c, default) for c in cameras}


def _for_camera(values: Optional[Sequence[str]], name: str) -> Optional[List[str]]:
    return None if values is None else [v.replace(CAMERA_FIELD, name) for v in values]


def camera_stream(args: argparse.Namespace, name: str, scale: float, topics: StereoTopics) -> CameraStream:
    """The frames (read lazily), calibration, topics and frame ids of one camera of the command
    line (``name`` '' for a bag of one camera)."""
    lefts, rights = expand(_for_camera(args.left, name), "--left"), expand(_for_camera(args.right, name), "--right")
    if len(lefts) != len(rights):
        raise ValueError(f"{len(lefts)} left and {len(rights)} right images; they must pair up")
    gts = expand(_for_camera(args.gt_disparity, name), "--gt-disparity") if args.gt_disparity else None
    depths = expand(_for_camera(args.gt_depth, name), "--gt-depth") if args.gt_depth else None
    for option, files in (("--gt-disparity", gts), ("--gt-depth", depths)):
        if files is not None and len(files) != len(lefts):
            raise ValueError(f"{len(files)} {option} files for {len(lefts)} pairs")
    first = read_rgb(lefts[0])
    calib = load_stereo_calibration(_for_camera(args.calib, name), size=(first.shape[1], first.shape[0]),
                                    translation_unit=args.translation_unit)

    def frames() -> Iterable[StereoFrame]:
        for _ in range(args.repeat):
            for i, (lp, rp) in enumerate(zip(lefts, rights)):
                fr = StereoFrame(read_rgb(lp), read_rgb(rp),
                                 read_disparity_file(gts[i], args.gt_disparity_scale) if gts else None,
                                 read_depth_file(depths[i], args.gt_depth_scale) if depths else None)
                try:
                    yield resize_frame(fr, scale)
                except ValueError as exc:
                    raise ValueError(f"pair {i} ({lp.name}, {rp.name}): {exc}") from None

    prefix = f"{name.replace('/', '_')}_" if name else "stereo_"
    frame_id = args.frame_id or f"{prefix}left_optical_frame"
    right_frame_id = args.right_frame_id or f"{prefix}right_optical_frame"
    return CameraStream(frames(), calib.scaled(scale), topics, frame_id.replace(CAMERA_FIELD, name),
                        right_frame_id.replace(CAMERA_FIELD, name))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cameras = camera_names(args.cameras)
        if args.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
        scales = scale_factors(args.scale, cameras or [""])
        image = "image_raw" if args.raw else "image_rect"
        namespace = args.namespace if args.namespace is not None else ("" if cameras else "/stereo")
        streams = {}
        for name in cameras or [""]:
            topics = StereoTopics.under(f"{namespace.rstrip('/')}/{name}" if name else namespace, image)
            try:
                streams[name] = camera_stream(args, name, scales[name], topics)
            except ValueError as exc:
                raise ValueError(f"camera {name}: {exc}" if name else str(exc)) from None
        start = None if args.start_time is None else int(round(args.start_time * 1e9))
        options = BagOptions(rate_hz=args.rate, start_ns=start, storage=args.storage, encoding=args.encoding,
                             version=args.bag_version, compressed=args.compressed, jpeg_quality=args.jpeg_quality,
                             png_level=args.png_level)
        summaries = write_camera_bag(args.output, streams, options)
    except ValueError as exc:
        print(f"foundation-stereo-make-bag: error: {exc}", file=sys.stderr)
        return 2
    for name, summary in summaries.items():
        what = f"camera {name}: " if name else ""
        print(f"{what}wrote {summary.frames} stereo pairs to {summary.path} ({args.storage}, {args.rate:g} Hz)")
        for topic, count in sorted(summary.counts.items()):
            print(f"  {topic}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
