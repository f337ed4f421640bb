"""Message conversions: Image <-> numpy, CameraInfo <-> camera model, DisparityImage, PointCloud2.

Plays the part of cv_bridge and sensor_msgs_py.point_cloud2 (neither is on PyPI) for what this
package publishes and reads. Decoding of incoming images is the pipeline's
(:mod:`foundation_stereo_ros.pipeline.image`), so the node and the offline tools share it.

Performance note: message ``data`` fields are assigned an ``array.array('B')`` filled from the
numpy buffer: one memcpy, which rclpy keeps as it is. ``bytes`` would cost a second copy, and with
``ROS_PYTHON_CHECK_FIELDS=1`` (rclpy's field checks, a debugging aid) rclpy would test every byte
in Python - about 0.7 s for a 640x480 point cloud. A numpy array is converted element by element.
"""
from __future__ import annotations

import array
from typing import Any, Optional, Tuple

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from ..pipeline.calibration import CameraModel
from ..pipeline.image import ENCODINGS, image_fields, image_to_numpy

# numpy dtype and channel count of the encodings this package publishes besides ENCODINGS.
_EXTRA_ENCODINGS = {"32FC1": (np.dtype(np.float32), 1), "64FC1": (np.dtype(np.float64), 1),
                    "16SC1": (np.dtype(np.int16), 1), "32SC1": (np.dtype(np.int32), 1)}


def _layout(encoding: str) -> Tuple[np.dtype, int]:
    if encoding in _EXTRA_ENCODINGS:
        return _EXTRA_ENCODINGS[encoding]
    info = ENCODINGS.get(encoding)
    if info is None or info.kind in ("yuv",):
        raise ValueError(f"cannot encode numpy arrays as {encoding!r}")
    return info.dtype, info.channels


def numpy_to_image(array_: np.ndarray, encoding: str, header: Optional[Header] = None) -> Image:
    """An Image holding ``array_`` ((H, W) or (H, W, C), dtype matching ``encoding``), dense rows."""
    dtype, channels = _layout(encoding)
    a = np.asarray(array_)
    if a.dtype != dtype:
        raise ValueError(f"{encoding} needs dtype {dtype}, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] != channels:
        raise ValueError(f"{encoding} needs {channels} channel(s), got an array of shape {np.shape(array_)}")
    a = np.ascontiguousarray(a.astype(dtype.newbyteorder("<"), copy=False))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(a.shape[1] * channels * dtype.itemsize)
    msg.data = payload(a)
    return msg


def payload(a: np.ndarray) -> "array.array[int]":
    """The bytes of ``a`` (C order) as the ``array.array('B')`` a message's uint8[] field stores."""
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return data


def image_to_array(msg: Any) -> np.ndarray:
    """Pixels of an Image as numpy (any encoding of :data:`ENCODINGS` or 32FC1/64FC1/16SC1/32SC1)."""
    if msg.encoding in _EXTRA_ENCODINGS:
        dtype, _ = _EXTRA_ENCODINGS[msg.encoding]
        if msg.height <= 0 or msg.width <= 0:
            raise ValueError(f"image is {msg.width}x{msg.height}")
        raw = np.frombuffer(msg.data, np.uint8)
        row = msg.width * dtype.itemsize
        if msg.step < row or raw.size != msg.step * msg.height:
            raise ValueError(f"{msg.encoding} image {msg.width}x{msg.height}: step {msg.step} and "
                             f"{raw.size} data bytes do not fit")
        rows = np.ascontiguousarray(raw.reshape(msg.height, msg.step)[:, :row])
        return rows.view(dtype.newbyteorder(">" if msg.is_bigendian else "<")).astype(dtype)
    return image_to_numpy(*image_fields(msg))


def camera_info_msg(model: CameraModel, header: Optional[Header] = None) -> CameraInfo:
    """CameraInfo of a camera model (e.g. the rectified left camera of a result)."""
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = model.width, model.height
    msg.distortion_model = model.distortion_model or "plumb_bob"
    msg.d = array.array("d", model.D.tolist())
    msg.k = model.K.reshape(-1).copy()
    msg.r = model.R.reshape(-1).copy()
    msg.p = model.P.reshape(-1).copy()
    return msg


def camera_model(msg: Any, name: str = "camera") -> CameraModel:
    """Camera model of a CameraInfo (raises the pipeline's CalibrationError for unusable fields)."""
    return CameraModel.from_camera_info(msg, name)


def disparity_image_msg(result: Any, header: Header) -> DisparityImage:
    """stereo_msgs/DisparityImage of a :class:`~foundation_stereo_ros.pipeline.StereoResult`.

    As stereo_image_proc: 32FC1 image, pre-adjusted disparities, invalid pixels hold
    ``min_disparity - 1`` (below the valid range, which DisparityImage users test for).
    """
    d = result.disparity
    invalid_value = np.float32(result.min_disparity - 1.0)
    image = np.where(np.isnan(d), invalid_value, d).astype(np.float32, copy=False)
    msg = DisparityImage()
    msg.header = header
    msg.image = numpy_to_image(image, "32FC1", header)
    msg.f = float(result.f)
    msg.t = float(result.t)
    x, y, w, h = result.valid_window
    msg.valid_window.x_offset, msg.valid_window.y_offset = int(x), int(y)
    msg.valid_window.width, msg.valid_window.height = int(w), int(h)
    msg.min_disparity = float(result.min_disparity)
    msg.max_disparity = float(result.max_disparity)
    msg.delta_d = float(result.delta_d)
    return msg


def disparity_from_msg(msg: DisparityImage) -> np.ndarray:
    """(H, W) float32 disparity of a DisparityImage with NaN where it is below min_disparity."""
    d = image_to_array(msg.image).astype(np.float32)
    d[~(d >= msg.min_disparity)] = np.nan
    return d


POINT_FIELDS = (("x", 0), ("y", 4), ("z", 8), ("rgb", 12))
_POINT_STEP = 16


def pointcloud2_msg(points: np.ndarray, colors: Optional[np.ndarray], header: Header,
                    organized: bool = True, cloud: Optional[np.ndarray] = None) -> PointCloud2:
    """PointCloud2 with float32 x, y, z and packed rgb (a float32 field holding 0x00RRGGBB bits).

    ``points`` (H, W, 3) float32, NaN where invalid; ``colors`` (H, W) uint32 or None (rgb 0).
    ``organized``: an H x W cloud with NaN points (``is_dense`` False), else 1 x N of valid points.
    ``cloud``: the same data already interleaved as (H, W, 4) float32 (``StereoResult.cloud``),
    used as the payload directly (``points`` and ``colors`` are then ignored).
    """
    if cloud is not None:
        if cloud.ndim != 3 or cloud.shape[2] != 4 or cloud.dtype != np.float32:
            raise ValueError(f"cloud must be (H, W, 4) float32, got {cloud.shape} {cloud.dtype}")
        buf, points = cloud, cloud[..., :3]
        h, w = cloud.shape[:2]
    else:
        h, w = points.shape[:2]
        buf = np.empty((h, w, 4), np.float32)
        buf[..., :3] = points
        if colors is None:
            buf[..., 3] = 0.0
        else:
            buf[..., 3] = np.ascontiguousarray(colors, dtype=np.uint32).view(np.float32)
    if not organized:
        buf = buf[np.isfinite(points[..., 2])][None]  # (1, N, 4)
        h, w = buf.shape[:2]
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = int(h), int(w)
    msg.fields = [PointField(name=n, offset=o, datatype=PointField.FLOAT32, count=1) for n, o in POINT_FIELDS]
    msg.is_bigendian = False
    msg.point_step = _POINT_STEP
    msg.row_step = _POINT_STEP * int(w)
    msg.is_dense = not organized
    msg.data = payload(buf)
    return msg


_FIELD_DTYPES = {PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
                 PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8"}


def pointcloud2_to_array(msg: PointCloud2) -> np.ndarray:
    """(height, width) structured array of a PointCloud2 (one field per PointField, count 1)."""
    endian = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in _FIELD_DTYPES or f.count != 1:
            raise ValueError(f"field {f.name}: unsupported datatype {f.datatype} / count {f.count}")
        names.append(f.name)
        formats.append(endian + _FIELD_DTYPES[f.datatype])
        offsets.append(f.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    raw = np.frombuffer(msg.data, np.uint8)
    if raw.size != msg.row_step * msg.height or msg.row_step < msg.point_step * msg.width:
        raise ValueError(f"PointCloud2 {msg.width}x{msg.height}: {raw.size} bytes do not match row_step "
                         f"{msg.row_step}")
    rows = np.ascontiguousarray(raw.reshape(msg.height, msg.row_step)[:, :msg.point_step * msg.width])
    return rows.view(dtype).reshape(msg.height, msg.width)


def header_stamp_ns(header: Header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
