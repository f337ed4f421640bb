"""The processor's geometry on the network's device (``geometry_device: network``): upload the raw
pair once, rectify it there, and bring each output back in one copy.

PyTorch only: :class:`~.processor.StereoProcessor` imports this module when a frame takes the
device path (an SGBM or host-geometry pipeline never loads torch). The kernels are
:mod:`.device_geometry`'s; this is the per-frame sequence and the cache of remaps per calibration.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Tuple

import torch

from .calibration import StereoCalibration
from .config import ProcessorConfig
from .device_geometry import DeviceRemap, disparity_to_depth as depth_on_device, point_cloud, remove_depth_edges, to_host
from .rectification import Rectifier
from .results import StagedFrame, lap


class DevicePath:
    """Rectification, edge filter, depth and points of staged frames on the network's device."""

    def __init__(self, rectifier: Rectifier) -> None:
        self.rectifier = rectifier  # its (host) tables are the device remaps' source
        self._remaps: "OrderedDict[Tuple, Tuple[Any, Any]]" = OrderedDict()  # per calibration and device

    def remaps(self, calibration: StereoCalibration, device: Any) -> Tuple[Any, Any]:
        """Left and right :class:`~foundation_stereo_ros.pipeline.device_geometry.DeviceRemap` of a
        calibration: the host's tables as float (the same source positions), cached per calibration."""
        key = (calibration.key, str(device))
        remaps = self._remaps.get(key)
        if remaps is None:
            tables = self.rectifier.maps(calibration).as_float()
            remaps = tuple(DeviceRemap(m[0], m[1], source_size=cam.size[::-1], device=device)
                           for m, cam in zip(tables, (calibration.left, calibration.right)))
            self._remaps[key] = remaps
            while len(self._remaps) > 4:
                self._remaps.popitem(last=False)
        else:
            self._remaps.move_to_end(key)
        return remaps

    def rectify(self, frame: StagedFrame, backend: Any, sync_stages: bool) -> Any:
        """Upload a frame's pair once and rectify it on the network's device: (2, 3, H, W) float
        0..255. The rectified pair's copy for the host is launched here when it is wanted."""
        with torch.no_grad():
            images = backend.upload(frame.pair.left, frame.pair.right).permute(0, 3, 1, 2).float()  # (2, 3, H, W)
            if frame.rectified:
                remap_left, remap_right = self.remaps(frame.calibration, images.device)
                # Rounded like the host's uint8 remap, so the network sees the same kind of picture.
                images = torch.cat([remap_left(images[:1]), remap_right(images[1:])]).round_().clamp_(0, 255)
                if frame.outputs.rectified_images:  # else nobody needs them on the host: no copy
                    frame.wanted["rect"] = images.to(torch.uint8).permute(0, 2, 3, 1)  # (2, H, W, 3)
            if sync_stages and backend.device.type == "cuda":
                torch.cuda.synchronize(backend.device)
        return images

    def finish(self, frame: StagedFrame, backend: Any, config: ProcessorConfig, sync_stages: bool, t: float):
        """Edge filter, depth and points on the network's device; one copy back per output, all in
        one transfer at the end. Returns (left_rect, right_rect, disparity, depth, cloud, time) on
        the host, the cloud (H, W, 4) in the PointCloud2 layout of :meth:`StereoResult.set_cloud`.
        On a GPU the stage times before ``download`` are mostly launch times; ``download`` waits for
        the device and holds the rest."""
        calibration, outputs, timings, wanted = frame.calibration, frame.outputs, frame.timings, frame.wanted
        sync = sync_stages and backend.device.type == "cuda"

        def synced_lap(stage: str, since: float) -> float:
            if sync:  # each stage's own device time (benchmarks); otherwise launches run ahead
                torch.cuda.synchronize(backend.device)
            return lap(timings, stage, since)

        with torch.no_grad():
            disparity = frame.disparity  # (H, W) raw, NaN invalid
            if calibration.delta_cx:
                disparity = disparity - calibration.delta_cx
            if config.edge_filter > 0:
                disparity = remove_depth_edges(disparity, config.edge_filter)
                t = synced_lap("edge_filter", t)
            wanted["disparity"] = disparity
            if outputs.depth or outputs.points:
                depth_t = depth_on_device(disparity, calibration.f, calibration.baseline, config.min_depth,
                                          config.max_depth)
                wanted["depth"] = depth_t
                t = synced_lap("depth", t)
                if outputs.points:
                    cam = calibration.rectified_left
                    # (H, W, 4): x, y, z and the colour of the matched left image, written once
                    wanted["points"] = point_cloud(depth_t, frame.images[0], cam.fx, cam.fy, cam.cx, cam.cy)
                    t = synced_lap("points", t)
            host = to_host(wanted)
            t = lap(timings, "download", t)
        if "rect" in host:
            left, right = host["rect"][0], host["rect"][1]
        elif not frame.rectified:
            left, right = frame.pair.left, frame.pair.right  # not rectified: the images as they came
        else:
            left = right = None
        return left, right, host["disparity"], host.get("depth"), host.get("points"), t
