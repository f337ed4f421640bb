"""One stereo camera inside ``stereo_depth_node``: its topics, synchroniser, counters and log.

A node serves one camera on its own relative topics (``left/image_rect`` ... ``points2``), or
several cameras, each under its namespace (parameter ``cameras``: ``front/left/image_rect`` ...
``front/points2``). Every camera has its own synchronisation, time-jump handling, problem
counters, throttled log and diagnostic status; the node's one processor matches them all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from stereo_msgs.msg import DisparityImage

from ..pipeline.geometry import message_buffer
from .conversions import camera_info_msg, depth_image_msg, disparity_image_msg, numpy_to_image, pointcloud2_msg
from .diagnostics import Stats, ThrottledLog, diagnose
from .sync import SyncOptions, TimeJumpGuard, stamp_ns, subscribe_synchronized

#: The inputs of a camera, relative to its namespace.
INPUTS = (("left/image_rect", Image), ("left/camera_info", CameraInfo),
          ("right/image_rect", Image), ("right/camera_info", CameraInfo))

#: The outputs of a camera, relative to its namespace, and their message types.
OUTPUTS: Dict[str, type] = {
    "disparity": DisparityImage, "depth": Image, "depth/camera_info": CameraInfo, "points2": PointCloud2,
    "left_rect/image": Image, "left_rect/camera_info": CameraInfo, "right_rect/image": Image,
    "right_rect/camera_info": CameraInfo, "disparity_color": Image,
}


def input_topics(node: Node, image_transport: str, namespace: str = "") -> Tuple[Tuple[str, type], ...]:
    """(topic, type) of a camera's four inputs under ``namespace`` (relative to the node's): the
    :data:`INPUTS`, or with ``compressed`` the images' CompressedImage topics,
    ``<resolved image topic>/compressed`` as image_transport names them."""
    prefix = f"{namespace}/" if namespace else ""
    inputs = tuple((prefix + name, t) for name, t in INPUTS)
    if image_transport == "raw":
        return inputs
    return tuple((f"{node.resolve_topic_name(name)}/compressed", CompressedImage) if t is Image else (name, t)
                 for name, t in inputs)


@dataclass(frozen=True)
class Wanted:
    """Which outputs of a camera have subscribers, decided when the worker takes its pair."""

    disparity: bool
    depth: bool
    points: bool
    left: bool
    right: bool
    color: bool

    @property
    def anything(self) -> bool:
        return self.disparity or self.depth or self.points or self.left or self.right or self.color


class _Prefixed:
    """A logger whose lines start with the camera's name."""

    def __init__(self, logger: Any, prefix: str) -> None:
        self._logger, self._prefix = logger, prefix

    def warning(self, text: str) -> None:
        self._logger.warning(self._prefix + text)

    def error(self, text: str) -> None:
        self._logger.error(self._prefix + text)


class Camera:
    """One camera's publishers, synchronised subscriptions, counters and log (see module doc).

    ``offer(camera, stamp, messages)`` receives each synchronised pair (left image, left info,
    right image, right info) that survived the time-jump check."""

    def __init__(self, node: Node, name: str, sync: SyncOptions, image_transport: str, qos_in: Any, qos_out: Any,
                 log_throttle_s: float, offer: Callable[["Camera", int, Tuple[Any, ...]], None]) -> None:
        self.name = name  # namespace relative to the node ("" for the node's own topics)
        self.node = node
        self.stats = Stats()
        logger = node.get_logger()
        self.log = ThrottledLog(_Prefixed(logger, f"camera {name}: ") if name else logger, log_throttle_s)
        prefix = f"{name}/" if name else ""
        self.publishers = {topic: node.create_publisher(t, prefix + topic, qos_out) for topic, t in OUTPUTS.items()}
        self._offer = offer
        self._time_jumps = TimeJumpGuard(sync.approximate, sync.tolerance_s)
        self.inputs = input_topics(node, image_transport, name)
        self.sync = subscribe_synchronized(node, [(t, topic) for topic, t in self.inputs], qos_in, self._on_pair, sync,
                                           on_message=self._on_message, on_unpaired=self._on_unpaired)
        self.diag_previous = self.stats.snapshot()

    @property
    def label(self) -> str:
        """How the camera is named in diagnostics and logs."""
        return self.name or "camera"

    # ------------------------------------------------------------------ input (executor thread)
    def _on_message(self, index: int, msg: Any) -> None:
        t = stamp_ns(msg)
        back_ns = self._time_jumps.observe(t)
        if back_ns is not None:
            # A bag loop or a restarted driver: queued messages from "the future" would block
            # pairing of the new ones until they age out. The pair at the jump is discarded too
            # (in _on_pair), so consumers see a clean break rather than a frame from before their reset.
            self.stats.problem("time_jump_back")
            self.log.warn("time_jump_back", f"{self.inputs[index][0]} stamp went back by {back_ns / 1e9:.3f} s "
                                            f"(bag loop? restarted driver?); discarding queued newer messages and "
                                            f"the pair stamped {t / 1e9:.6f}, resuming with the next pair")
            self.sync.discard_newer_than(t)

    def _on_unpaired(self, index: int, msg: Any) -> None:
        self.stats.problem("unpaired")
        self.log.warn("unpaired", f"{self.inputs[index][0]} stamped {stamp_ns(msg) / 1e9:.6f} found no partner on "
                                  f"the other inputs (exact sync needs equal stamps; set approximate_sync / "
                                  f"sync_tolerance_s for unsynchronised cameras)")

    def _on_pair(self, left_img: Any, left_info: CameraInfo, right_img: Any, right_info: CameraInfo) -> None:
        stamp = stamp_ns(left_img)
        if not self._time_jumps.accept_pair(stamp):
            return  # the pair at a backward time jump (counted and logged in _on_message)
        self._offer(self, stamp, (left_img, left_info, right_img, right_info))

    # ------------------------------------------------------------------ worker thread
    def diagnostic_status(self, node: Node, processor: Any, rss_mb: float) -> DiagnosticStatus:
        """This camera's /diagnostics status: the health of its counters since the last status."""
        snapshot = self.stats.snapshot()
        health = diagnose(snapshot, self.diag_previous, processor.config, getattr(processor.backend, "providers", ()),
                          rss_mb)
        self.diag_previous = snapshot
        name = f"{node.get_name()}: stereo depth" + (f" ({self.name})" if self.name else "")
        hardware_id = node.get_fully_qualified_name() + (f"/{self.name}" if self.name else "")
        return DiagnosticStatus(level=bytes([health.level]), name=name, message=health.message, hardware_id=hardware_id,
                                values=[KeyValue(key=k, value=v) for k, v in health.values])

    def wanted(self) -> Wanted:
        """Which outputs have subscribers now."""
        def any_subscriber(*topics: str) -> bool:
            return any(self.publishers[t].get_subscription_count() > 0 for t in topics)

        return Wanted(disparity=any_subscriber("disparity"), depth=any_subscriber("depth", "depth/camera_info"),
                      points=any_subscriber("points2"), left=any_subscriber("left_rect/image", "left_rect/camera_info"),
                      right=any_subscriber("right_rect/image", "right_rect/camera_info"),
                      color=any_subscriber("disparity_color"))

    # ------------------------------------------------------------------ publisher thread
    def publish(self, result: Any, want: Wanted, left_img: Any, right_img: Any, depth_format: str,
                points_organized: bool) -> None:
        """Publish a frame's outputs that are wanted (``result``: a StereoResult)."""
        header, pub = left_img.header, self.publishers
        if want.disparity:
            pub["disparity"].publish(disparity_image_msg(result, header))
        cam_info = camera_info_msg(result.camera, header) if (want.depth or want.left) else None
        if want.depth:
            pub["depth"].publish(depth_image_msg(result.depth, header, depth_format))
            pub["depth/camera_info"].publish(cam_info)
        if want.points:
            pub["points2"].publish(pointcloud2_msg(result.points, result.colors, header, points_organized,
                                                   cloud=result.cloud))
        if want.left:
            pub["left_rect/image"].publish(picture(result.left_rect, result.grey, header))
            pub["left_rect/camera_info"].publish(cam_info)
        if want.right:
            right_header = right_img.header
            pub["right_rect/image"].publish(picture(result.right_rect, result.grey, right_header))
            pub["right_rect/camera_info"].publish(camera_info_msg(result.right_camera, right_header))
        if want.color:
            pub["disparity_color"].publish(numpy_to_image(result.disparity_color, "rgb8", header))


def picture(rgb: np.ndarray, grey: bool, header: Any) -> Image:
    """An rgb8 image, or mono8 when the camera is grey (the three channels are equal: a third of the bytes)."""
    if grey:
        mono = message_buffer(rgb.shape[:2], np.uint8)  # one copy, into memory the message takes over
        np.copyto(mono, rgb[..., 0])
        return numpy_to_image(mono, "mono8", header)
    return numpy_to_image(rgb, "rgb8", header)
