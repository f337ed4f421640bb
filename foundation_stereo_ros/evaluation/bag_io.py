"""rosbag2 recordings (sqlite3 and mcap) through the `rosbags` package: no ROS install needed.

Writing: :class:`StereoBagWriter` serialises messages built by the package's one set of builders
(:mod:`foundation_stereo_ros.ros.messages`) with the classes of the `rosbags` typestore, so a
bag holds field for field what the node publishes. Reading: :class:`StereoBagReader` finds the
stereo topics, pairs left/right images with their CameraInfo exactly as the node's synchroniser
does (:mod:`.bag_pairing`) and attaches ground truth (a disparity or a depth topic) stamped like
the left image.

Topic layout written by ``foundation-stereo-make-bag`` (``<ns>`` defaults to ``/stereo``):
``<ns>/left/image_rect``, ``<ns>/left/camera_info``, ``<ns>/right/image_rect``,
``<ns>/right/camera_info`` (``image_raw`` instead of ``image_rect`` for images that still need
rectification), ``<ns>/gt/disparity`` (stereo_msgs/DisparityImage, NaN = unknown) and
``<ns>/gt/depth`` (sensor_msgs/Image 32FC1 metres, NaN = unknown). These are the node's own
input names under the namespace ``<ns>``, so a replay needs no remapping. With ``--compressed``
the images are ``sensor_msgs/CompressedImage`` on ``<image topic>/compressed``, as
compressed_image_transport publishes them (:func:`compressed_image_msg`); the reader takes either
kind and prefers a raw image topic where a camera has both.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from foundation_stereo_ros.evaluation.bag_pairing import (CAMERA_INFO, COMPRESSED_IMAGE, IMAGE, IMAGE_TYPES,
                                                          BagRecord, StereoPairer, StereoRecord, StereoTopics,
                                                          detect_topics, image_topic_of)
from foundation_stereo_ros.pipeline.calibration import CameraModel
from foundation_stereo_ros.pipeline.compressed import CODECS as COMPRESSED_CODECS  # what the pipeline decodes
from foundation_stereo_ros.pipeline.compressed import compress_image
from foundation_stereo_ros.pipeline.geometry import pack_rgb
from foundation_stereo_ros.ros import messages
from foundation_stereo_ros.ros.messages import (MessageClasses, disparity_from_msg, image_layout, image_to_array,
                                               stamp_to_ns)

PathLike = Union[str, os.PathLike]

STORAGES = ("sqlite3", "mcap")

__all__ = ["CAMERA_INFO", "COMPRESSED_CODECS", "COMPRESSED_IMAGE", "IMAGE", "IMAGE_TYPES", "STORAGES", "BagRecord", "StereoBagReader", "StereoBagWriter",
           "StereoPairer", "StereoRecord", "StereoTopics", "bag_folder", "camera_info_msg", "compress_image",
           "compressed_image_msg", "detect_topics", "disparity_array", "disparity_msg", "gt_depth_array", "header",
           "image_msg", "image_to_array", "image_topic_of", "message_classes", "pointcloud2_msg", "stamp_to_ns", "topic_types",
           "typestore"]


@lru_cache(maxsize=None)
def typestore():
    """The ROS 2 Jazzy message definitions of `rosbags` (Image, CameraInfo and DisparityImage are
    identical from Humble on)."""
    return get_typestore(Stores.ROS2_JAZZY)


@lru_cache(maxsize=None)
def message_classes() -> MessageClasses:
    """The typestore's classes for the builders of :mod:`foundation_stereo_ros.ros.messages`."""
    return MessageClasses.from_typestore(typestore())


# ---------------------------------------------------------------------------------------------
# message building: the shared builders, stamped in nanoseconds

def header(stamp_ns: int, frame_id: str):
    return messages.header_msg(message_classes(), stamp_ns, frame_id)


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """sensor_msgs/Image from an (H, W) or (H, W, C) array, converted to the pixel type of
    ``encoding`` (little-endian, rows packed)."""
    dtype, _ = image_layout(encoding)
    return messages.image_msg(message_classes(), np.asarray(array).astype(dtype, copy=False), encoding,
                              header(stamp_ns, frame_id))


def compressed_image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str, codec: str = "jpeg",
                         jpeg_quality: int = 95, png_level: int = 3):
    """sensor_msgs/CompressedImage of an rgb8, bgr8 or mono8 image (see
    :func:`foundation_stereo_ros.pipeline.compressed.compress_image`)."""
    return messages.compressed_image_msg(message_classes(), array, encoding, header(stamp_ns, frame_id), codec,
                                         jpeg_quality, png_level)


def camera_info_msg(cam: CameraModel, stamp_ns: int, frame_id: str):
    return messages.camera_info_msg(message_classes(), cam, header(stamp_ns, frame_id))


def disparity_msg(disparity: np.ndarray, stamp_ns: int, frame_id: str, focal_px: float, baseline_m: float,
                  min_disparity: Optional[float] = None, max_disparity: Optional[float] = None,
                  delta_d: float = 0.0, valid_window: Optional[Tuple[int, int, int, int]] = None,
                  fill_invalid: bool = False):
    """stereo_msgs/DisparityImage (32FC1). The range defaults to that of the valid values, the valid
    window (x, y, width, height) to the whole image. Invalid pixels stay NaN, or with
    ``fill_invalid`` become ``min_disparity - 1`` as stereo_image_proc (and the node) publish them."""
    d = np.asarray(disparity, dtype=np.float32)
    valid = np.isfinite(d)
    lo = float(min_disparity) if min_disparity is not None else (float(d[valid].min()) if valid.any() else 0.0)
    hi = float(max_disparity) if max_disparity is not None else (float(d[valid].max()) if valid.any() else 0.0)
    return messages.disparity_image_msg(message_classes(), d, header(stamp_ns, frame_id), focal_px, baseline_m,
                                        lo, hi, delta_d, valid_window, fill_invalid)


def pointcloud2_msg(points: np.ndarray, rgb: Optional[np.ndarray], stamp_ns: int, frame_id: str,
                    organized: bool = True):
    """sensor_msgs/PointCloud2 with x y z float32 and packed rgb (float32 bits, as RViz expects).
    ``points`` is (H, W, 3) with NaN for invalid pixels; a dense cloud drops them. ``rgb`` is
    (H, W, 3) uint8 or (H, W) packed uint32."""
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 3 or pts.shape[2] != 3:
        raise ValueError(f"points must be (H, W, 3), got {pts.shape}")
    colors = None if rgb is None else (pack_rgb(rgb) if np.ndim(rgb) == 3 else rgb)
    return messages.pointcloud2_msg(message_classes(), pts, colors, header(stamp_ns, frame_id), organized)


# ---------------------------------------------------------------------------------------------
# writing

class StereoBagWriter:
    """Write messages to a new rosbag2 folder. ``storage`` is ``sqlite3`` or ``mcap``; ``version``
    8 is read by rosbag2 from Humble on, 9 needs Jazzy or newer."""

    def __init__(self, path: PathLike, storage: str = "sqlite3", version: int = 8):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if version not in (8, 9):
            raise ValueError(f"rosbag2 version must be 8 or 9, got {version}")
        self.path = Path(path)
        if self.path.exists():
            raise ValueError(f"{self.path} exists; rosbag2 writes a new folder (remove it or choose another path)")
        plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
        self._writer = Writer(self.path, version=version, storage_plugin=plugin)
        self._connections: Dict[str, Any] = {}
        self.counts: Dict[str, int] = {}

    def open(self) -> None:
        self._writer.open()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "StereoBagWriter":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, topic: str, msg: Any, log_time_ns: Optional[int] = None) -> None:
        """Serialise ``msg`` (a rosbags message) on ``topic``; log time defaults to its stamp."""
        ts = typestore()
        msgtype = msg.__msgtype__
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=ts)
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise ValueError(f"topic {topic} already carries {conn.msgtype}, cannot add {msgtype}")
        if log_time_ns is None:
            log_time_ns = stamp_to_ns(msg.header.stamp)
        self._writer.write(conn, int(log_time_ns), ts.serialize_cdr(msg, msgtype))
        self.counts[topic] = self.counts.get(topic, 0) + 1


# ---------------------------------------------------------------------------------------------
# reading

def disparity_array(msg: Any) -> np.ndarray:
    """Disparity (px, 0 where invalid or unknown) from a DisparityImage or a 32FC1 Image: ground truth,
    or what the node published (values below min_disparity mark invalid pixels there)."""
    img = msg.image if hasattr(msg, "image") else msg
    if img.encoding != "32FC1":
        raise ValueError(f"ground-truth disparity must be 32FC1, got {img.encoding!r}")
    if hasattr(msg, "min_disparity") and msg.max_disparity > msg.min_disparity:
        d = disparity_from_msg(msg)  # stereo_image_proc marks holes with values below min_disparity
    else:
        d = image_to_array(img).astype(np.float32)
    d[~np.isfinite(d) | (d <= 0)] = 0.0
    return d


def gt_depth_array(msg: Any) -> np.ndarray:
    """Ground-truth depth in metres (NaN where unknown) from 32FC1 metres or 16UC1 millimetres (REP 118)."""
    if msg.encoding not in ("32FC1", "16UC1", "mono16"):
        raise ValueError(f"ground-truth depth must be 32FC1 (m) or 16UC1 (mm), got {msg.encoding!r}")
    z = image_to_array(msg)
    if msg.encoding != "32FC1":
        z = z.astype(np.float32) / 1000.0
    z = z.astype(np.float32)
    z[~np.isfinite(z) | (z <= 0)] = np.nan
    return z


def bag_folder(path: PathLike) -> Path:
    """The rosbag2 folder of ``path`` (the folder, or a storage file inside it); ValueError when
    it is no bag."""
    folder = Path(path)
    if not folder.exists():
        raise ValueError(f"{folder}: no such bag")
    if folder.is_file():  # rosbag2 bags are folders; accept the storage file inside too
        folder = folder.parent
    if not (folder / "metadata.yaml").is_file():
        raise ValueError(f"{folder}: not a rosbag2 folder (no metadata.yaml)")
    return folder


def topic_types(path: PathLike) -> Dict[str, str]:
    """The bag's topic -> message type table."""
    with AnyReader([bag_folder(path)], default_typestore=typestore()) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


class StereoBagReader:
    """Read a rosbag2 folder (or a single .mcap/.db3 file's folder) and yield synchronised pairs."""

    def __init__(self, path: PathLike, topics: Optional[StereoTopics] = None, sync: Optional[Dict[str, Any]] = None,
                 **overrides: Optional[str]):
        """``topics``: all names (default: detected); ``overrides``: single names (``left_image=...``);
        ``sync``: the node's ``approximate_sync``, ``sync_tolerance_s``, ``queue_size`` (default: its
        defaults, exact pairing)."""
        sync = dict(sync or {})
        self.sync = {"approximate": bool(sync.pop("approximate_sync", False)),
                     "tolerance_s": float(sync.pop("sync_tolerance_s", 0.005)),
                     "queue_size": int(sync.pop("queue_size", 5))}
        if sync:
            raise ValueError(f"unknown sync settings {sorted(sync)}; expected approximate_sync, sync_tolerance_s, "
                             f"queue_size")

        self.path = bag_folder(path)
        self._reader = AnyReader([self.path], default_typestore=typestore())
        self._reader.open()
        try:
            self.types = {c.topic: c.msgtype for c in self._reader.connections}
            self.topics = self._resolve_topics(topics, overrides)
        except BaseException:
            self._reader.close()
            raise
        self.unpaired: Dict[str, int] = {}

    def _resolve_topics(self, topics: Optional[StereoTopics], overrides: Dict[str, Optional[str]]) -> StereoTopics:
        base = topics
        if base is None:
            try:
                base = detect_topics(self.types)
            except ValueError:
                if not all(overrides.get(k) for k in ("left_image", "left_info", "right_image", "right_info")):
                    raise
                base = StereoTopics(overrides["left_image"], overrides["left_info"],  # type: ignore[arg-type]
                                    overrides["right_image"], overrides["right_info"])  # type: ignore[arg-type]
        values = {k: getattr(base, k) for k in ("left_image", "left_info", "right_image", "right_info",
                                                 "gt_disparity", "gt_depth")}
        unknown = sorted(set(overrides) - set(values))
        if unknown:
            raise ValueError(f"unknown topic roles {unknown}; expected {sorted(values)}")
        values.update({k: v for k, v in overrides.items() if v})
        for role, topic in values.items():
            if topic and topic not in self.types:
                raise ValueError(f"topic {topic} ({role}) is not in {self.path}; it has: {', '.join(sorted(self.types))}")
        for role, kinds in (("left_image", IMAGE_TYPES), ("right_image", IMAGE_TYPES), ("left_info", (CAMERA_INFO,)),
                            ("right_info", (CAMERA_INFO,))):
            if self.types[values[role]] not in kinds:
                raise ValueError(f"topic {values[role]} ({role}) carries {self.types[values[role]]}, expected "
                                 f"{' or '.join(kinds)}")
        return StereoTopics(**values)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "StereoBagReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    @property
    def topic_counts(self) -> Dict[str, int]:
        """Messages per topic, from the bag's metadata."""
        counts: Dict[str, int] = {}
        for c in self._reader.connections:
            counts[c.topic] = counts.get(c.topic, 0) + int(c.msgcount)
        return counts

    def records(self, topics: Optional[Iterable[str]] = None, raw: bool = False) -> Iterator[BagRecord]:
        """Messages of ``topics`` (default: the stereo and ground-truth topics) in log-time order."""
        wanted = set(topics) if topics is not None else {t for t in (*self.topics.stereo(), self.topics.gt_disparity,
                                                                      self.topics.gt_depth) if t}
        conns = [c for c in self._reader.connections if c.topic in wanted]
        if not conns:  # rosbags reads every connection when given none
            return
        for conn, t, data in self._reader.messages(connections=conns):
            msg = self._reader.deserialize(data, conn.msgtype)
            yield BagRecord(conn.topic, int(t), msg, bytes(data) if raw else b"", conn.msgtype)

    def pairs(self) -> Iterator[StereoRecord]:
        """Synchronised pairs in bag order with ground truth attached by the left image's stamp.
        Memory stays bounded: a first pass notes which stamps have ground truth, so a pair waits
        only for ground truth that is known to come."""
        gt_topics = {t: kind for t, kind in ((self.topics.gt_disparity, "disp"), (self.topics.gt_depth, "depth")) if t}
        expected: Dict[int, set] = {}
        for rec in self.records(gt_topics):
            expected.setdefault(stamp_to_ns(rec.msg.header.stamp), set()).add(gt_topics[rec.topic])
        got: Dict[int, Dict[str, Any]] = {}
        waiting: List[StereoRecord] = []
        pairer = StereoPairer(self.topics, **self.sync)
        self.unpaired = {}

        def ready(p: StereoRecord) -> bool:
            return set(got.get(p.stamp_ns, {})) >= expected.get(p.stamp_ns, set())

        def attach(p: StereoRecord) -> StereoRecord:
            found = got.pop(p.stamp_ns, {})
            if "disp" in found:
                p.gt_disparity = disparity_array(found["disp"])
            if "depth" in found:
                p.gt_depth = gt_depth_array(found["depth"])
            return p

        for rec in self.records():
            if rec.topic in gt_topics:
                got.setdefault(stamp_to_ns(rec.msg.header.stamp), {})[gt_topics[rec.topic]] = rec.msg
            else:
                pair = pairer.add(rec)
                if pair is not None:
                    waiting.append(pair)
            while waiting and ready(waiting[0]):
                yield attach(waiting.pop(0))
        for p in waiting:  # cannot happen with complete ground truth, kept for robustness
            yield attach(p)
        self.unpaired = pairer.unpaired()
