"""rosbag2 recordings (sqlite3 and mcap) through the `rosbags` package: no ROS install needed.

Writing: :class:`StereoBagWriter` builds sensor_msgs/Image, sensor_msgs/CameraInfo,
stereo_msgs/DisparityImage and sensor_msgs/PointCloud2 messages from NumPy arrays.
Reading: :class:`StereoBagReader` finds the stereo topics, pairs left/right images with their
CameraInfo exactly as the node's synchroniser does (:func:`pair_stereo_records`) and attaches
ground truth (a disparity or a depth topic) stamped like the left image.

Topic layout written by ``foundation-stereo-make-bag`` (``<ns>`` defaults to ``/stereo``):
``<ns>/left/image_rect``, ``<ns>/left/camera_info``, ``<ns>/right/image_rect``,
``<ns>/right/camera_info`` (``image_raw`` instead of ``image_rect`` for images that still need
rectification), ``<ns>/gt/disparity`` (stereo_msgs/DisparityImage, NaN = unknown) and
``<ns>/gt/depth`` (sensor_msgs/Image 32FC1 metres, NaN = unknown). These are the node's own
input names under the namespace ``<ns>``, so a replay needs no remapping.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from foundation_stereo_ros.evaluation.calibration_files import CameraInfoData

PathLike = Union[str, os.PathLike]

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
DISPARITY = "stereo_msgs/msg/DisparityImage"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
STORAGES = ("sqlite3", "mcap")

_typestore = None


def typestore():
    """The ROS 2 Jazzy message definitions of `rosbags` (Image, CameraInfo and DisparityImage are
    identical from Humble on)."""
    global _typestore
    if _typestore is None:
        from rosbags.typesys import Stores, get_typestore

        _typestore = get_typestore(Stores.ROS2_JAZZY)
    return _typestore


@dataclass(frozen=True)
class StereoTopics:
    """Topic names of one stereo recording; ground-truth topics are optional."""

    left_image: str
    left_info: str
    right_image: str
    right_info: str
    gt_disparity: Optional[str] = None
    gt_depth: Optional[str] = None

    @classmethod
    def under(cls, namespace: str = "/stereo", image: str = "image_rect", gt: bool = True) -> "StereoTopics":
        ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        return cls(f"{ns}/left/{image}", f"{ns}/left/camera_info", f"{ns}/right/{image}",
                   f"{ns}/right/camera_info", f"{ns}/gt/disparity" if gt else None, f"{ns}/gt/depth" if gt else None)

    def stereo(self) -> Tuple[str, str, str, str]:
        return (self.left_image, self.left_info, self.right_image, self.right_info)


# ---------------------------------------------------------------------------------------------
# message building (rosbags dataclasses)

def _stamp(stamp_ns: int):
    ts = typestore()
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header(stamp_ns: int, frame_id: str):
    Header = typestore().types["std_msgs/msg/Header"]
    return Header(stamp=_stamp(stamp_ns), frame_id=frame_id)


_ENCODINGS = {  # encoding -> (dtype, channels)
    "mono8": (np.uint8, 1), "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4), "mono16": (np.uint16, 1), "16UC1": (np.uint16, 1), "32FC1": (np.float32, 1),
    "8UC1": (np.uint8, 1), "8UC3": (np.uint8, 3),
}


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """sensor_msgs/Image from an (H, W) or (H, W, C) array laid out as ``encoding`` says
    (little-endian, rows packed)."""
    if encoding not in _ENCODINGS:
        raise ValueError(f"cannot write encoding {encoding!r}; supported: {', '.join(sorted(_ENCODINGS))}")
    dtype, channels = _ENCODINGS[encoding]
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != channels:
        raise ValueError(f"{encoding} needs {channels} channel(s), got an array of shape {np.shape(array)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError("cannot write an empty image")
    arr = np.ascontiguousarray(arr.astype(np.dtype(dtype).newbyteorder("<"), copy=False))
    h, w = arr.shape[:2]
    Image = typestore().types[IMAGE]
    return Image(header=header(stamp_ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
                 step=w * channels * arr.dtype.itemsize, data=np.frombuffer(arr.tobytes(), dtype=np.uint8))


def image_to_array(msg: Any) -> np.ndarray:
    """Decode the single-channel images this module writes and ground truth uses (32FC1, 16UC1,
    mono16, mono8, 8UC1) into an (H, W) array. Colour camera images are decoded by the pipeline."""
    enc = msg.encoding
    if enc not in ("32FC1", "16UC1", "mono16", "mono8", "8UC1"):
        raise ValueError(f"ground truth must be a single-channel 32FC1/16UC1/mono8 image, got {enc!r}")
    dtype = np.dtype(_ENCODINGS[enc][0]).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if step < w * dtype.itemsize or data.size < step * h:
        raise ValueError(f"{enc} image {w}x{h}: step {step} and {data.size} bytes do not hold the rows")
    rows = data[: step * h].reshape(h, step)[:, : w * dtype.itemsize]
    return np.ascontiguousarray(rows).view(dtype).reshape(h, w).astype(dtype.newbyteorder("="))


def camera_info_msg(cam: CameraInfoData, stamp_ns: int, frame_id: str):
    ts = typestore()
    CameraInfo = ts.types[CAMERA_INFO]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    return CameraInfo(header=header(stamp_ns, frame_id), height=int(cam.height), width=int(cam.width),
                      distortion_model=cam.distortion_model, d=np.asarray(cam.d, dtype=np.float64).reshape(-1),
                      k=np.asarray(cam.k, dtype=np.float64).reshape(9), r=np.asarray(cam.r, dtype=np.float64).reshape(9),
                      p=np.asarray(cam.p, dtype=np.float64).reshape(12), binning_x=0, binning_y=0,
                      roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def camera_info_from_msg(msg: Any) -> CameraInfoData:
    return CameraInfoData(int(msg.width), int(msg.height), np.asarray(msg.k, dtype=np.float64).reshape(3, 3),
                             np.asarray(msg.d, dtype=np.float64).reshape(-1),
                             np.asarray(msg.r, dtype=np.float64).reshape(3, 3),
                             np.asarray(msg.p, dtype=np.float64).reshape(3, 4), msg.distortion_model)


def disparity_msg(disparity: np.ndarray, stamp_ns: int, frame_id: str, focal_px: float, baseline_m: float,
                  min_disparity: Optional[float] = None, max_disparity: Optional[float] = None,
                  delta_d: float = 0.0, valid_window: Optional[Tuple[int, int, int, int]] = None,
                  fill_invalid: bool = False):
    """stereo_msgs/DisparityImage (32FC1). The range defaults to that of the valid values, the valid
    window (x, y, width, height) to the whole image. Invalid pixels stay NaN, or with
    ``fill_invalid`` become ``min_disparity - 1`` as stereo_image_proc (and the node) publish them."""
    d = np.array(disparity, dtype=np.float32)
    valid = np.isfinite(d)
    lo = float(min_disparity) if min_disparity is not None else (float(d[valid].min()) if valid.any() else 0.0)
    hi = float(max_disparity) if max_disparity is not None else (float(d[valid].max()) if valid.any() else 0.0)
    if fill_invalid:
        d[~valid] = np.float32(lo - 1.0)
    x, y, w, h = valid_window if valid_window is not None else (0, 0, d.shape[1], d.shape[0])
    ts = typestore()
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    return ts.types[DISPARITY](
        header=header(stamp_ns, frame_id), image=image_msg(d, "32FC1", stamp_ns, frame_id), f=float(focal_px),
        t=float(baseline_m), valid_window=Roi(x_offset=int(x), y_offset=int(y), height=int(h), width=int(w),
                                              do_rectify=False),
        min_disparity=lo, max_disparity=hi, delta_d=float(delta_d))


def pointcloud2_msg(points: np.ndarray, rgb: Optional[np.ndarray], stamp_ns: int, frame_id: str,
                    organized: bool = True):
    """sensor_msgs/PointCloud2 with x y z float32 and packed rgb (float32 bits, as RViz expects).
    ``points`` is (H, W, 3) with NaN for invalid pixels; a dense cloud drops them. ``rgb`` is
    (H, W, 3) uint8 or (H, W) packed uint32."""
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 3 or pts.shape[2] != 3:
        raise ValueError(f"points must be (H, W, 3), got {pts.shape}")
    h, w = pts.shape[:2]
    cloud = np.zeros((h, w), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    cloud["x"], cloud["y"], cloud["z"] = pts[..., 0], pts[..., 1], pts[..., 2]
    if rgb is not None:
        c = np.asarray(rgb)
        if c.ndim == 2:  # already packed 0x00RRGGBB (the pipeline's ``colors``)
            cloud["rgb"] = c.astype(np.uint32)
        else:
            c = c.astype(np.uint32)
            cloud["rgb"] = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    if organized:
        height, width, data = h, w, cloud.reshape(-1)
    else:
        data = cloud.reshape(-1)[np.isfinite(pts.reshape(-1, 3)).all(axis=1)]
        height, width = 1, data.size
    ts = typestore()
    PointField = ts.types["sensor_msgs/msg/PointField"]
    fields_ = [PointField(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate(("x", "y", "z", "rgb"))]
    return ts.types[POINTCLOUD2](
        header=header(stamp_ns, frame_id), height=height, width=width, fields=fields_, is_bigendian=False,
        point_step=16, row_step=16 * width, data=np.frombuffer(data.tobytes(), dtype=np.uint8),
        is_dense=not organized)


# ---------------------------------------------------------------------------------------------
# writing

class StereoBagWriter:
    """Write messages to a new rosbag2 folder. ``storage`` is ``sqlite3`` or ``mcap``; ``version``
    8 is read by rosbag2 from Humble on, 9 needs Jazzy or newer."""

    def __init__(self, path: PathLike, storage: str = "sqlite3", version: int = 8):
        from rosbags.rosbag2 import StoragePlugin, Writer

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

@dataclass
class BagRecord:
    """One message of the bag, deserialised."""

    topic: str
    log_time_ns: int
    msg: Any
    raw: bytes = field(repr=False, default=b"")
    msgtype: str = ""


@dataclass
class StereoRecord:
    """A synchronised pair with its CameraInfo, ground truth and the bag times of its messages."""

    index: int
    stamp_ns: int
    left: Any
    right: Any
    left_info: Any
    right_info: Any
    gt_disparity: Optional[np.ndarray] = None
    gt_depth: Optional[np.ndarray] = None
    log_time_ns: int = 0  # when the last of the four messages was recorded


class _Queued:
    """A bag record as the synchroniser sees it (it reads ``header.stamp``)."""

    __slots__ = ("header", "record")

    def __init__(self, record: BagRecord):
        self.header = record.msg.header
        self.record = record


class StereoPairer:
    """Pairs left/right images and both CameraInfos in bag order with the node's own synchroniser
    (:class:`foundation_stereo_ros.ros.sync.TimeSynchronizer`, plain Python), the node's sync
    parameters and the node's handling of stamps that jump back (:class:`TimeJumpGuard`), so that a
    bag is paired offline exactly as the live node pairs it (test_eval_live_replay checks this for a
    looped bag). Feed records with :meth:`add`; it returns the :class:`StereoRecord` a record
    completes, if any."""

    def __init__(self, topics: StereoTopics, approximate: bool = False, tolerance_s: float = 0.005,
                 queue_size: int = 5):
        from foundation_stereo_ros.ros.sync import TimeJumpGuard, TimeSynchronizer

        # The node's input order: left image, left info, right image, right info.
        self._index = {topics.left_image: 0, topics.left_info: 1, topics.right_image: 2, topics.right_info: 3}
        self._done: List[StereoRecord] = []
        self._sync = TimeSynchronizer(4, self._emit, queue_size=queue_size, approximate=approximate,
                                      tolerance_s=tolerance_s)
        self._time_jumps = TimeJumpGuard(approximate, tolerance_s)
        self._count = 0
        self._fed = [0, 0, 0, 0]

    def _emit(self, left: _Queued, left_info: _Queued, right: _Queued, right_info: _Queued) -> None:
        stamp = stamp_to_ns(left.header.stamp)
        if not self._time_jumps.accept_pair(stamp):
            return  # the node discards the pair at a backward time jump
        recs = (left.record, left_info.record, right.record, right_info.record)
        self._done.append(StereoRecord(self._count, stamp, left.record.msg, right.record.msg, left_info.record.msg,
                                       right_info.record.msg, log_time_ns=max(r.log_time_ns for r in recs)))
        self._count += 1

    def add(self, rec: BagRecord) -> Optional[StereoRecord]:
        index = self._index.get(rec.topic)
        if index is None:
            return None
        t = stamp_to_ns(rec.msg.header.stamp)
        if self._time_jumps.observe(t) is not None:
            # Queued newer messages would block the pairing of the new ones (as in the node).
            self._sync.discard_newer_than(t)
        self._fed[index] += 1
        self._sync.add(index, _Queued(rec))
        return self._done.pop() if self._done else None

    @property
    def time_jumps(self) -> int:
        """Backward time jumps seen so far."""
        return self._time_jumps.jumps

    def unpaired(self) -> Dict[str, int]:
        """Messages of each input that are in no pair: discarded by the synchroniser, dropped at a
        time jump, or still waiting."""
        names = ("left", "left_info", "right", "right_info")
        return {n: fed - self._count for n, fed in zip(names, self._fed) if fed > self._count}


def pair_stereo_records(records: Iterable[BagRecord], topics: StereoTopics,
                        **sync: Any) -> Tuple[List[StereoRecord], Dict[str, int]]:
    """All pairs of ``records`` (see :class:`StereoPairer`, ``sync``: its keyword arguments) and the
    unpaired message counts per input."""
    pairer = StereoPairer(topics, **sync)
    out = [p for p in (pairer.add(r) for r in records) if p is not None]
    return out, pairer.unpaired()


def _pick(candidates: Sequence[str], prefer: Sequence[str]) -> Optional[str]:
    for p in prefer:
        hits = [c for c in candidates if c.rsplit("/", 1)[-1] == p]
        if len(hits) == 1:
            return hits[0]
    return candidates[0] if len(candidates) == 1 else None


def detect_topics(types: Dict[str, str]) -> StereoTopics:
    """Guess the stereo topics from a bag's topic -> type table: an Image topic under a ``left`` (or
    ``infra1``) and a ``right`` (or ``infra2``) namespace, CameraInfo next to each, ground truth under
    a ``gt``/``ground_truth`` namespace. Raises ValueError listing the topics when unsure."""
    images = [t for t, ty in types.items() if ty == IMAGE]
    gt_words = ("gt", "ground_truth", "groundtruth")

    def parts(t: str) -> List[str]:
        return [p for p in t.split("/") if p]

    def side(word_set: Tuple[str, ...]) -> List[str]:
        return [t for t in images if any(w in parts(t) for w in word_set)
                and not any(g in parts(t) for g in gt_words) and "depth" not in parts(t)]

    prefer = ("image_rect", "image_rect_color", "image_rect_raw", "image_raw", "image_color", "image")
    left = _pick(side(("left", "infra1")), prefer)
    right = _pick(side(("right", "infra2")), prefer)
    listing = "\n  ".join(f"{t} [{ty}]" for t, ty in sorted(types.items()))
    if left is None or right is None:
        raise ValueError("cannot tell the left and right image topics apart; pass --left-topic and --right-topic "
                         f"(and --left-info/--right-info). Topics in the bag:\n  {listing}")
    infos = {}
    for name, img in (("left", left), ("right", right)):
        info = img.rsplit("/", 1)[0] + "/camera_info"
        if types.get(info) != CAMERA_INFO:
            raise ValueError(f"no CameraInfo next to {img} (looked for {info}); pass --{name}-info. "
                             f"Topics in the bag:\n  {listing}")
        infos[name] = info
    gt_disp = gt_depth = None
    for t, ty in sorted(types.items()):
        if not any(g in parts(t) for g in gt_words):
            continue
        if ty == DISPARITY or (ty == IMAGE and "disparity" in t):
            gt_disp = gt_disp or t
        elif ty == IMAGE and "depth" in t:
            gt_depth = gt_depth or t
    return StereoTopics(left, infos["left"], right, infos["right"], gt_disp, gt_depth)


def disparity_array(msg: Any) -> np.ndarray:
    """Disparity (px, 0 where invalid or unknown) from a DisparityImage or a 32FC1 Image: ground truth,
    or what the node published (values below min_disparity mark invalid pixels there)."""
    img = msg.image if hasattr(msg, "image") else msg
    if img.encoding != "32FC1":
        raise ValueError(f"ground-truth disparity must be 32FC1, got {img.encoding!r}")
    d = image_to_array(img).astype(np.float32)
    bad = ~np.isfinite(d) | (d <= 0)
    if hasattr(msg, "min_disparity") and msg.max_disparity > msg.min_disparity:
        # stereo_image_proc marks holes with values below min_disparity
        bad |= d < msg.min_disparity
    d[bad] = 0.0
    return d


def gt_depth_array(msg: Any) -> np.ndarray:
    """Ground-truth depth in metres (NaN where unknown) from 32FC1 metres or 16UC1 millimetres (REP 118)."""
    z = image_to_array(msg)
    if msg.encoding in ("16UC1", "mono16"):
        z = z.astype(np.float32) / 1000.0
    elif msg.encoding != "32FC1":
        raise ValueError(f"ground-truth depth must be 32FC1 (m) or 16UC1 (mm), got {msg.encoding!r}")
    z = z.astype(np.float32)
    z[~np.isfinite(z) | (z <= 0)] = np.nan
    return z


class StereoBagReader:
    """Read a rosbag2 folder (or a single .mcap/.db3 file's folder) and yield synchronised pairs."""

    def __init__(self, path: PathLike, topics: Optional[StereoTopics] = None, sync: Optional[Dict[str, Any]] = None,
                 **overrides: Optional[str]):
        """``topics``: all names (default: detected); ``overrides``: single names (``left_image=...``);
        ``sync``: the node's ``approximate_sync``, ``sync_tolerance_s``, ``queue_size`` (default: its
        defaults, exact pairing)."""
        from rosbags.highlevel import AnyReader

        sync = dict(sync or {})
        self.sync = {"approximate": bool(sync.pop("approximate_sync", False)),
                     "tolerance_s": float(sync.pop("sync_tolerance_s", 0.005)),
                     "queue_size": int(sync.pop("queue_size", 5))}
        if sync:
            raise ValueError(f"unknown sync settings {sorted(sync)}; expected approximate_sync, sync_tolerance_s, "
                             f"queue_size")

        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"{self.path}: no such bag")
        if self.path.is_file():  # rosbag2 bags are folders; accept the storage file inside too
            self.path = self.path.parent
        if not (self.path / "metadata.yaml").is_file():
            raise ValueError(f"{self.path}: not a rosbag2 folder (no metadata.yaml)")
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
