"""The one set of message builders and readers: Image, CompressedImage, CameraInfo, DisparityImage,
PointCloud2.

The builders take a :class:`MessageClasses`, which says where the message classes come from:
rclpy's generated classes for the live node (:mod:`.conversions`), or a `rosbags` typestore for
bags written without a ROS install (:mod:`foundation_stereo_ros.evaluation.bag_io`). Both
fill the same fields with the same values, so a bag written offline holds field for field what
the node publishes. Nothing here imports rclpy; the readers work on any message with the
sensor_msgs field names (rclpy or rosbags).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import cv2
import numpy as np

from ..pipeline.calibration import CameraModel
from ..pipeline.compressed import compress_image
from ..pipeline.geometry import message_buffer
from ..pipeline.image import ENCODINGS, image_fields, image_to_numpy

NS_PER_S = 1_000_000_000

# numpy dtype and channel count of the encodings this package publishes besides ENCODINGS.
_EXTRA_ENCODINGS = {"32FC1": (np.dtype(np.float32), 1), "64FC1": (np.dtype(np.float64), 1),
                    "16SC1": (np.dtype(np.int16), 1), "32SC1": (np.dtype(np.int32), 1)}

POINT_FIELDS = (("x", 0), ("y", 4), ("z", 8), ("rgb", 12))
_POINT_STEP = 16
# sensor_msgs/PointField datatype constants -> numpy type codes.
_FIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


def construct_with_data(cls: Any, data: Any, fields: Dict[str, Any]) -> Any:
    """A message of class ``cls`` from its ``data`` field's value and its other fields: the
    constructor (the default of :attr:`MessageClasses.with_data`)."""
    return cls(data=data, **fields)


@dataclass(frozen=True)
class MessageClasses:
    """Where the message classes come from, and how their array fields are filled.

    ``bytes_field`` turns a C-ordered array into the value of a ``uint8[]`` field (``data``);
    ``float64_field`` a float64 array into the value of a ``float64[]`` sequence (``CameraInfo.d``).
    Fixed-size arrays (``k``, ``r``, ``p``) take float64 numpy arrays in both worlds.
    ``with_data(cls, data, fields)`` builds a message with a ``data`` field from that value and the
    other fields, in as few copies of ``data`` as the classes allow (rclpy's constructor copies it
    twice; :mod:`.conversions` sets it afterwards instead).
    """

    Time: Any
    Header: Any
    Image: Any
    CompressedImage: Any
    CameraInfo: Any
    RegionOfInterest: Any
    DisparityImage: Any
    PointCloud2: Any
    PointField: Any
    bytes_field: Callable[[np.ndarray], Any]
    float64_field: Callable[[np.ndarray], Any]
    with_data: Callable[[Any, Any, Dict[str, Any]], Any] = construct_with_data

    @classmethod
    def from_typestore(cls, typestore: Any) -> "MessageClasses":
        """The classes of a `rosbags` typestore (their arrays are numpy arrays)."""
        t = typestore.types
        return cls(Time=t["builtin_interfaces/msg/Time"], Header=t["std_msgs/msg/Header"],
                   Image=t["sensor_msgs/msg/Image"], CompressedImage=t["sensor_msgs/msg/CompressedImage"],
                   CameraInfo=t["sensor_msgs/msg/CameraInfo"],
                   RegionOfInterest=t["sensor_msgs/msg/RegionOfInterest"],
                   DisparityImage=t["stereo_msgs/msg/DisparityImage"], PointCloud2=t["sensor_msgs/msg/PointCloud2"],
                   PointField=t["sensor_msgs/msg/PointField"],
                   bytes_field=lambda a: np.frombuffer(np.ascontiguousarray(a).tobytes(), dtype=np.uint8),
                   float64_field=lambda v: np.asarray(v, dtype=np.float64).reshape(-1))


# --------------------------------------------------------------------------------------- stamps

def stamp_to_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time (``sec``, ``nanosec``) in integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def header_msg(classes: MessageClasses, stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header stamped ``stamp_ns`` nanoseconds."""
    stamp = classes.Time(sec=int(stamp_ns // NS_PER_S), nanosec=int(stamp_ns % NS_PER_S))
    return classes.Header(stamp=stamp, frame_id=frame_id)


def _roi(classes: MessageClasses, x: int = 0, y: int = 0, width: int = 0, height: int = 0) -> Any:
    return classes.RegionOfInterest(x_offset=int(x), y_offset=int(y), height=int(height), width=int(width),
                                    do_rectify=False)


# --------------------------------------------------------------------------------------- images

def image_layout(encoding: str) -> Tuple[np.dtype, int]:
    """(numpy dtype, channels) of the pixels of ``encoding`` (ValueError if numpy cannot hold it)."""
    if encoding in _EXTRA_ENCODINGS:
        return _EXTRA_ENCODINGS[encoding]
    info = ENCODINGS.get(encoding)
    if info is None or info.kind in ("yuv",):
        raise ValueError(f"cannot encode numpy arrays as {encoding!r}")
    return info.dtype, info.channels


def image_msg(classes: MessageClasses, array_: np.ndarray, encoding: str, header: Any) -> Any:
    """sensor_msgs/Image holding ``array_`` ((H, W) or (H, W, C), dtype matching ``encoding``),
    little-endian, dense rows."""
    dtype, channels = image_layout(encoding)
    a = np.asarray(array_)
    if a.dtype != dtype:
        raise ValueError(f"{encoding} needs dtype {dtype}, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] != channels:
        raise ValueError(f"{encoding} needs {channels} channel(s), got an array of shape {np.shape(array_)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError("cannot write an empty image")
    a = np.ascontiguousarray(a.astype(dtype.newbyteorder("<"), copy=False))
    return classes.with_data(classes.Image, classes.bytes_field(a), dict(
        header=header, height=int(a.shape[0]), width=int(a.shape[1]), encoding=encoding, is_bigendian=0,
        step=int(a.shape[1] * channels * dtype.itemsize)))


def compressed_image_msg(classes: MessageClasses, array_: np.ndarray, encoding: str, header: Any,
                         codec: str = "jpeg", jpeg_quality: int = 95, png_level: int = 3) -> Any:
    """sensor_msgs/CompressedImage of an rgb8, bgr8 or mono8 image, with the format string and
    data compressed_image_transport's publisher writes (see
    :func:`foundation_stereo_ros.pipeline.compressed.compress_image`)."""
    fmt, data = compress_image(array_, encoding, codec, jpeg_quality, png_level)
    return classes.with_data(classes.CompressedImage, classes.bytes_field(np.frombuffer(data, dtype=np.uint8)),
                             dict(header=header, format=fmt))


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


# --------------------------------------------------------------------------------------- depth

#: Depth image encodings: 32FC1 metres with NaN invalid, or 16UC1 millimetres with 0 invalid
#: (REP 118; what RealSense-style consumers and recorders take).
DEPTH_FORMATS = ("32FC1", "16UC1")
_MAX_MILLIMETRES = np.iinfo(np.uint16).max  # 65.535 m


def depth_to_millimetres(depth: np.ndarray) -> np.ndarray:
    """uint16 millimetres (rounded) of a depth in metres; 0 where the depth is NaN (invalid) or does
    not fit (over 65.535 m), as REP 118 wants for 16UC1 depth."""
    mm = np.asarray(depth, dtype=np.float32) * np.float32(1000.0)
    out = np.zeros(mm.shape, np.uint16)
    with np.errstate(invalid="ignore"):
        fits = mm < _MAX_MILLIMETRES + 0.5  # NaN compares false; rounds to at most 65535
        fits &= mm >= 0.0
    out[fits] = np.rint(mm[fits])
    return out


def depth_image_msg(classes: MessageClasses, depth: np.ndarray, header: Any, depth_format: str = "32FC1") -> Any:
    """sensor_msgs/Image of a depth in metres (NaN invalid) in ``depth_format`` (:data:`DEPTH_FORMATS`)."""
    if depth_format == "32FC1":
        return image_msg(classes, np.asarray(depth, dtype=np.float32), "32FC1", header)
    if depth_format == "16UC1":
        return image_msg(classes, depth_to_millimetres(depth), "16UC1", header)
    raise ValueError(f"depth_format must be one of {', '.join(DEPTH_FORMATS)}, got {depth_format!r}")


# --------------------------------------------------------------------------------------- CameraInfo

def camera_info_msg(classes: MessageClasses, model: CameraModel, header: Any) -> Any:
    """sensor_msgs/CameraInfo of a camera model (no binning, no ROI)."""
    return classes.CameraInfo(header=header, height=int(model.height), width=int(model.width),
                              distortion_model=model.distortion_model or "plumb_bob",
                              d=classes.float64_field(model.D), k=model.K.reshape(-1).copy(),
                              r=model.R.reshape(-1).copy(), p=model.P.reshape(-1).copy(), binning_x=0, binning_y=0,
                              roi=_roi(classes))


# --------------------------------------------------------------------------------------- disparity

def disparity_image_msg(classes: MessageClasses, disparity: np.ndarray, header: Any, f: float, t: float,
                        min_disparity: float, max_disparity: float, delta_d: float = 0.0,
                        valid_window: Optional[Tuple[int, int, int, int]] = None, fill_invalid: bool = True) -> Any:
    """stereo_msgs/DisparityImage (32FC1) of a pre-adjusted disparity, NaN where invalid.

    As stereo_image_proc, invalid pixels hold ``min_disparity - 1`` (below the valid range, which
    DisparityImage users test for); ``fill_invalid=False`` leaves them NaN. ``valid_window``
    (x, y, width, height) defaults to the whole image.
    """
    d = np.asarray(disparity, dtype=np.float32)
    if fill_invalid:  # one copy, straight into memory the message takes over
        filled = message_buffer(d.shape, np.float32)
        np.copyto(filled, d)
        d = cv2.patchNaNs(filled, float(np.float32(min_disparity - 1.0)))
    x, y, w, h = valid_window if valid_window is not None else (0, 0, d.shape[1], d.shape[0])
    return classes.DisparityImage(header=header, image=image_msg(classes, d, "32FC1", header), f=float(f),
                                  t=float(t), valid_window=_roi(classes, x, y, w, h),
                                  min_disparity=float(min_disparity), max_disparity=float(max_disparity),
                                  delta_d=float(delta_d))


def disparity_from_msg(msg: Any) -> np.ndarray:
    """(H, W) float32 disparity of a DisparityImage with NaN where it is below min_disparity."""
    d = image_to_array(msg.image).astype(np.float32)
    d[~(d >= msg.min_disparity)] = np.nan
    return d


# --------------------------------------------------------------------------------------- PointCloud2

def pointcloud2_msg(classes: MessageClasses, points: np.ndarray, colors: Optional[np.ndarray], header: Any,
                    organized: bool = True, cloud: Optional[np.ndarray] = None) -> Any:
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
    pf = classes.PointField
    fields = [pf(name=n, offset=o, datatype=pf.FLOAT32, count=1) for n, o in POINT_FIELDS]
    return classes.with_data(classes.PointCloud2, classes.bytes_field(buf), dict(
        header=header, height=int(h), width=int(w), fields=fields, is_bigendian=False, point_step=_POINT_STEP,
        row_step=_POINT_STEP * int(w), is_dense=not organized))


def pointcloud2_to_array(msg: Any) -> np.ndarray:
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
