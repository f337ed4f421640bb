"""What an offline evaluation writes beside its reports: a bag of the outputs, as the node would
publish them, and the choice of frames that get pictures."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, Optional

from . import bag_io as B
from .bag_io import StereoBagWriter
from .bag_pairing import StereoTopics, image_topic_of
from .runner import FrameEvaluation


def picture_frames(n_pairs: int, n_pictures: int) -> Callable[[int], bool]:
    """Frame indices that get pictures: ``n_pictures`` spread evenly over ``n_pairs``."""
    if n_pictures <= 0 or n_pairs <= 0:
        return lambda i: False
    if n_pictures == 1:
        chosen = {0}
    else:
        chosen = {round(k * (n_pairs - 1) / (n_pictures - 1)) for k in range(min(n_pictures, n_pairs))}
    return lambda i: i in chosen


class OutputBag:
    """Writes each frame's outputs like the node publishes them, one namespace per backend."""

    def __init__(self, path: Path, storage: str, namespaces: Dict[str, str]):
        self.path = path
        self.namespaces = namespaces
        self._writer = StereoBagWriter(path, storage=storage)
        self._writer.open()

    def add(self, frame: FrameEvaluation, namespaces: Optional[Dict[str, str]] = None) -> None:
        """Write a frame's outputs (``namespaces``: per backend, default: the bag's)."""
        rec = frame.record
        stamp = rec.stamp_ns
        frame_id = rec.left.header.frame_id
        for label, bf in frame.backends.items():
            r = bf.result
            if r is None:
                continue
            ns = (namespaces or self.namespaces)[label]
            cam = r.camera
            self._writer.write(f"{ns}/disparity", B.disparity_msg(
                r.disparity, stamp, frame_id, r.f, r.t, r.min_disparity, r.max_disparity, r.delta_d,
                valid_window=r.valid_window, fill_invalid=True), stamp)
            self._writer.write(f"{ns}/depth", B.image_msg(r.depth, "32FC1", stamp, frame_id), stamp)
            self._writer.write(f"{ns}/depth/camera_info", B.camera_info_msg(cam, stamp, frame_id), stamp)
            if r.points is not None:
                self._writer.write(f"{ns}/points2", B.pointcloud2_msg(r.points, r.colors, stamp, frame_id), stamp)
            self._writer.write(f"{ns}/left/image_rect", B.image_msg(r.left_rect, "rgb8", stamp, frame_id), stamp)
            self._writer.write(f"{ns}/left/camera_info", B.camera_info_msg(cam, stamp, frame_id), stamp)

    def close(self) -> None:
        self._writer.close()


def topic_token(label: str) -> str:
    """A backend label as a valid ROS name token (letters, digits, underscores; no leading digit)."""
    token = re.sub(r"[^A-Za-z0-9_]+", "_", label).strip("_") or "backend"
    return token if not token[0].isdigit() else f"b_{token}"


def output_namespace(topics: StereoTopics) -> str:
    """The camera namespace of the input (``/stereo`` for ``/stereo/left/image_rect`` and for
    ``/stereo/left/image_raw/compressed``)."""
    parts = image_topic_of(topics.left_image).split("/")
    return "/".join(parts[:-2]) if len(parts) > 2 else ""
