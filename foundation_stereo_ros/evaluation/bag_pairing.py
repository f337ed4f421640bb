"""Stereo topics of a recording and the pairing of its messages as the node pairs them.

:class:`StereoPairer` feeds bag records to the node's own synchroniser
(:class:`foundation_stereo_ros.ros.sync.TimeSynchronizer`) with the node's sync parameters and
time-jump handling; :func:`detect_topics` guesses the stereo and ground-truth topics of a bag.
No rosbags and no rclpy here: records are any deserialised messages with a ``header``.

Images may be ``sensor_msgs/Image`` or, as robots usually record them, ``sensor_msgs/CompressedImage``
on image_transport's ``<image topic>/compressed``; the pipeline decodes both.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from foundation_stereo_ros.ros.messages import stamp_to_ns

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
#: The last name of image_transport's compressed transport topic: ``<image topic>/compressed``.
COMPRESSED_SUFFIX = "compressed"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
DISPARITY = "stereo_msgs/msg/DisparityImage"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"


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

    def compressed(self) -> "StereoTopics":
        """These topics with the images on image_transport's ``<image topic>/compressed``."""
        return replace(self, left_image=image_topic_of(self.left_image) + "/" + COMPRESSED_SUFFIX,
                       right_image=image_topic_of(self.right_image) + "/" + COMPRESSED_SUFFIX)


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
        # Not at the top: ros.sync imports message_filters (and so rclpy) where ROS is installed.
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


def image_topic_of(topic: str) -> str:
    """The image topic a transport topic belongs to: ``/cam/left/image_raw`` for
    ``/cam/left/image_raw/compressed``; any other topic is returned as it is."""
    head, _, last = topic.rpartition("/")
    return head if last == COMPRESSED_SUFFIX and head else topic


def camera_info_topic_of(image_topic: str) -> str:
    """Where a camera driver publishes the CameraInfo of ``image_topic`` (raw or compressed):
    ``camera_info`` beside the image topic."""
    return image_topic_of(image_topic).rsplit("/", 1)[0] + "/camera_info"


def _pick(candidates: Sequence[str], prefer: Sequence[str]) -> Optional[str]:
    for p in prefer:
        hits = [c for c in candidates if image_topic_of(c).rsplit("/", 1)[-1] == p]
        if len(hits) == 1:
            return hits[0]
    return candidates[0] if len(candidates) == 1 else None


def detect_topics(types: Dict[str, str]) -> StereoTopics:
    """Guess the stereo topics from a bag's topic -> type table: an image topic under a ``left`` (or
    ``infra1``) and a ``right`` (or ``infra2``) namespace, CameraInfo next to each, ground truth under
    a ``gt``/``ground_truth`` namespace. Per side a raw ``sensor_msgs/Image`` topic is taken when
    there is one, else a ``sensor_msgs/CompressedImage`` on ``<image topic>/compressed``
    (``compressedDepth`` and other transports are not stereo images). Raises ValueError listing the
    topics when unsure."""
    raw = [t for t, ty in types.items() if ty == IMAGE]
    compressed = [t for t, ty in types.items()
                  if ty == COMPRESSED_IMAGE and t.rsplit("/", 1)[-1] == COMPRESSED_SUFFIX]
    gt_words = ("gt", "ground_truth", "groundtruth")

    def parts(t: str) -> List[str]:
        return [p for p in t.split("/") if p]

    def side(images: List[str], word_set: Tuple[str, ...]) -> List[str]:
        return [t for t in images if any(w in parts(image_topic_of(t)) for w in word_set)
                and not any(g in parts(t) for g in gt_words) and "depth" not in parts(t)]

    prefer = ("image_rect", "image_rect_color", "image_rect_raw", "image_raw", "image_color", "image")

    def pick(word_set: Tuple[str, ...]) -> Optional[str]:
        # A raw topic beside its compressed twin is the same camera without the JPEG loss.
        candidates = side(raw, word_set) or side(compressed, word_set)
        return _pick(candidates, prefer) if candidates else None

    left, right = pick(("left", "infra1")), pick(("right", "infra2"))
    listing = "\n  ".join(f"{t} [{ty}]" for t, ty in sorted(types.items()))
    if left is None or right is None:
        raise ValueError("cannot tell the left and right image topics apart; pass --left-topic and --right-topic "
                         f"(and --left-info/--right-info). Topics in the bag:\n  {listing}")
    infos = {}
    for name, img in (("left", left), ("right", right)):
        info = camera_info_topic_of(img)
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


SIDE_WORDS = ("left", "infra1", "right", "infra2")  # the names that mark a camera's image topics


def camera_namespace(image_topic: str) -> Optional[str]:
    """The namespace of the stereo camera an image topic belongs to: ``/front`` for
    ``/front/left/image_rect`` (and ``.../compressed``), ``""`` for ``/left/image_rect``; None when
    no part of the topic names a side."""
    parts = [p for p in image_topic_of(image_topic).split("/") if p]
    for i, p in enumerate(parts[:-1]):
        if p in SIDE_WORDS:
            return "".join(f"/{q}" for q in parts[:i])
    return None


def detect_cameras(types: Dict[str, str], cameras: Optional[Sequence[str]] = None) -> Dict[str, StereoTopics]:
    """The stereo topics of each camera of a bag, by camera name (its namespace without the leading
    ``/``). ``cameras``: the namespaces to take (``front`` or ``/robot/front``), each of which must
    hold one stereo camera (:func:`detect_topics` under it, ground truth included); default: every
    namespace that holds one. Raises ValueError naming the camera and listing its topics when unsure."""
    if cameras is None:
        spaces = sorted({ns for t, ty in types.items() if ty in IMAGE_TYPES
                         for ns in [camera_namespace(t)] if ns is not None})
        found: Dict[str, StereoTopics] = {}
        for ns in spaces:
            try:
                found[ns.lstrip("/")] = detect_topics(_under(types, ns))
            except ValueError:
                continue  # not a stereo camera (a lone image topic, a depth camera ...)
        if not found:
            detect_topics(types)  # raises with the listing of the topics
        return found
    if not cameras:
        raise ValueError("no camera named")
    out = {}
    for name in cameras:
        ns = "/" + name.strip("/")
        key = ns.lstrip("/")
        if key in out:
            raise ValueError(f"camera {name!r} is named twice")
        inside = _under(types, ns)
        if not inside:
            raise ValueError(f"camera {name!r}: the bag has no topic under {ns}/; it has: "
                             f"{', '.join(sorted(types))}")
        try:
            out[key] = detect_topics(inside)
        except ValueError as exc:
            raise ValueError(f"camera {name!r} ({ns}/): {exc}") from None
    return out


def _under(types: Dict[str, str], namespace: str) -> Dict[str, str]:
    """The topics of ``types`` under ``namespace`` ('' for all)."""
    prefix = namespace.rstrip("/") + "/"
    return {t: ty for t, ty in types.items() if t.startswith(prefix)}
