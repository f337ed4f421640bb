"""The node's own work per camera pair, timed through its real code with the network replaced.

:func:`stored_disparity_processor` is the node's StereoProcessor (every pair rectified) whose
network returns a stored disparity; :func:`time_node_stages` times each of its stages and the
building of the published messages (CUDA-synchronised per stage on a GPU).
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch

from ...model.config import FoundationStereoConfig
from ...pipeline import ALL_OUTPUTS, FoundationStereoBackend, ProcessorConfig, StereoProcessor
from ...pipeline.calibration import make_camera_model
from .stats import summarize

NODE_STAGES = ("image_conversion", "rectification", "upload_download", "depth", "points", "message_building")
# Node stage <- the pipeline's timing key for it.
_PIPELINE_TIMINGS = (("image_conversion", "decode"), ("rectification", "rectify"), ("depth", "depth"),
                     ("points", "points"))


def _synthetic_calibration(height: int, width: int):
    """Left and right CameraModel of a plausible rig (fx ~ 0.9 w, 12 cm baseline, mild
    distortion, small rotation): every frame is rectified, as with a raw camera driver."""
    f = 0.9 * width
    k = np.array([[f, 0, width / 2 - 3.5], [0, f, height / 2 + 2.0], [0, 0, 1]], np.float64)
    dist = np.array([-0.08, 0.02, 0.001, -0.0005, 0.0])
    rot = cv2.Rodrigues(np.array([0.004, -0.006, 0.002]))[0]
    rect_l, rect_r, p_l, p_r, _q, _, _ = cv2.stereoRectify(k, dist, k, dist, (width, height), rot,
                                                          np.array([[-0.12], [0.0], [0.0]]), alpha=0)
    return tuple(make_camera_model(width, height, k.reshape(-1), dist, r.reshape(-1), p.reshape(-1), name=name)
                 for r, p, name in ((rect_l, p_l, "left"), (rect_r, p_r, "right")))


class _FixedDisparityNetwork:
    """Stands in for the network so that only the node's own work is timed: ``infer`` returns a
    disparity on the device, of the input's size, one per pair of the batch, at once or after
    ``delay_s`` of waiting with the GIL released (a GPU network's time, during which the host is
    free). Each call returns new memory, as a network does: the pipeline writes into its result
    (the principal-point shift, invalid pixels), which must not change the stored disparity.

    On the CPU that copy is numpy's, on one thread: a PyTorch copy of that size runs on PyTorch's
    OpenMP threads, which then spin for a while and took a core from OpenCV's threads in the
    stages after it (the two remaps of a 480x640 pair: 1.2-1.5 ms instead of 0.7-0.8 ms on the
    2-core VM). A network on a GPU wakes no host threads: its output comes back by a device copy."""

    def __init__(self, height: int, width: int, device, delay_s: float = 0.0) -> None:
        self.cfg = FoundationStereoConfig(vit_size="vits")
        gen = torch.Generator().manual_seed(0)
        self._disparity = (torch.rand(1, 1, height, width, generator=gen) * 40 + 1).to(device)
        self.delay_s = delay_s
        self.last_s = 0.0

    def infer(self, left, right, **_options):
        t = time.perf_counter()
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        stored = self._disparity.expand(left.shape[0], -1, -1, -1)  # (B, 1, H, W)
        out = torch.from_numpy(stored.numpy().copy()) if stored.device.type == "cpu" else stored.clone()
        self.last_s = time.perf_counter() - t  # the stand-in's own time: the network's, not the node's
        return out


def stored_disparity_processor(height: int, width: int, device, geometry: str = "host", delay_s: float = 0.0):
    """The node's StereoProcessor (every pair rectified) with the network replaced by
    :class:`_FixedDisparityNetwork`: the node's own work, timed without the network's."""
    config = ProcessorConfig(backend="foundation_stereo", checkpoint="(stored disparity)", device=str(device),
                             iters=1, rectify="always", geometry_device=geometry)
    network = _FixedDisparityNetwork(height, width, device, delay_s=delay_s)
    return StereoProcessor(config, backend=FoundationStereoBackend(config, model=network))


def _ros_conversions() -> Tuple[Optional[SimpleNamespace], Optional[str]]:
    """(the node's message conversions, None), or (None, the missing module) on a machine without
    the ROS 2 message packages: a GPU machine without ROS still times everything else."""
    try:
        from ...ros.conversions import camera_info_msg, disparity_image_msg, numpy_to_image, pointcloud2_msg
    except ImportError as e:
        return None, e.name or str(e)
    return SimpleNamespace(camera_info_msg=camera_info_msg, disparity_image_msg=disparity_image_msg,
                           numpy_to_image=numpy_to_image, pointcloud2_msg=pointcloud2_msg), None


def _camera_messages(height: int, width: int, ros: Optional[SimpleNamespace]) -> Tuple[List[Any], List[Any]]:
    """([left, right] Image, [left, right] CameraInfo) of random pixels and the synthetic rig; plain
    objects with the message fields the pipeline reads when the ROS messages are missing."""
    left_cam, right_cam = _synthetic_calibration(height, width)
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    if ros is not None:
        return ([ros.numpy_to_image(p, "bgr8") for p in pixels],
                [ros.camera_info_msg(left_cam), ros.camera_info_msg(right_cam)])
    images = [SimpleNamespace(encoding="bgr8", height=height, width=width, step=width * 3, is_bigendian=0,
                              data=p.tobytes(), header=SimpleNamespace(frame_id="")) for p in pixels]
    infos = [SimpleNamespace(width=c.width, height=c.height, k=c.K.reshape(-1), d=c.D, r=c.R.reshape(-1),
                             p=c.P.reshape(-1), distortion_model=c.distortion_model or "plumb_bob",
                             header=SimpleNamespace(frame_id="")) for c in (left_cam, right_cam)]
    return images, infos


def _message_building_ms(ros: SimpleNamespace, result, header) -> float:
    """Time to build every message the node publishes for ``result``."""
    t = time.perf_counter()
    ros.disparity_image_msg(result, header)
    ros.numpy_to_image(result.depth, "32FC1", header)
    ros.pointcloud2_msg(result.points, result.colors, header, True, cloud=result.cloud)
    ros.numpy_to_image(result.left_rect, "rgb8", header)
    return (time.perf_counter() - t) * 1e3


def time_node_stages(height: int, width: int, device, repeats: int, geometry: str = "host") -> Dict[str, Any]:
    """Median ms of each stage of the node's own per-frame work for one camera pair of this size:
    its real code (the pipeline's StereoProcessor and the node's message conversions) with the
    network replaced by a stored disparity. ``geometry``: the ``geometry_device`` parameter."""
    ros, missing = _ros_conversions()
    processor = stored_disparity_processor(height, width, device, geometry)
    processor.sync_stages = True  # per-stage device times on a GPU
    images, infos = _camera_messages(height, width, ros)
    network = processor.backend.model
    times: Dict[str, List[float]] = {k: [] for k in NODE_STAGES + ("stand_in",)}
    for rep in range(repeats + 1):  # the first pass builds the remap tables and is dropped
        result = processor.process_messages(images[0], images[1], infos[0], infos[1], ALL_OUTPUTS)
        messages_ms = _message_building_ms(ros, result, images[0].header) if ros is not None else None
        if rep == 0:
            continue
        if messages_ms is not None:
            times["message_building"].append(messages_ms)
        tm = result.timings
        for name, key in _PIPELINE_TIMINGS:
            times[name].append(tm.get(key, 0.0) * 1e3)
        # The network is a stored disparity: 'match' less the stand-in's own time (making the
        # network's new output memory, as a network does) is the upload's share, 'download'
        # (device path) the copies back.
        times["upload_download"].append((tm.get("match", 0.0) - network.last_s + tm.get("download", 0.0)) * 1e3)
        times["stand_in"].append(network.last_s * 1e3)
    stand_in = times.pop("stand_in")
    stages = {k: (summarize(v)["median"] if v else None) for k, v in times.items()}
    total = sum(v for v in stages.values() if v is not None)
    out = dict(stages_ms=stages, total_ms=total, stand_in_ms=summarize(stand_in)["median"] if stand_in else None,
               worker_ms=total - (stages.get("message_building") or 0.0),
               geometry_device=geometry,
               on_device=processor.geometry_on_device,
               sources=dict(functions="foundation_stereo_ros.pipeline.StereoProcessor",
                            messages="foundation_stereo_ros.ros.conversions"))
    if missing is not None:
        out["not_measured"] = {"message_building": f"needs the ROS 2 message packages ({missing} is not installed)"}
    return out
