"""Message conversions for the live node: the builders of :mod:`.messages` with rclpy's classes.

Plays the part of cv_bridge and sensor_msgs_py.point_cloud2 (neither is on PyPI) for what this
package publishes and reads. Decoding of incoming images is the pipeline's
(:mod:`foundation_stereo_ros.pipeline.image`), so the node and the offline tools share it.

Performance note: a message's ``data`` field holds an ``array.array('B')``, which rclpy keeps as it
is when it is assigned after construction (the constructor would copy it twice; on Jazzy the
setter copies too unless the message checks its fields, so the message is built with
``check_fields=True``: a check of the array's type code, no pass over the bytes). An output the
pipeline wrote into a :func:`~foundation_stereo_ros.pipeline.geometry.message_buffer` (the point
cloud, the filled disparity) is that array already, and reaches the message without any copy; any
other array costs one memcpy. ``bytes`` would cost a second copy, and with
``ROS_PYTHON_CHECK_FIELDS=1`` in the constructor rclpy would test every byte in Python - about 0.7 s
for a 640x480 point cloud. A numpy array is converted element by element.
"""
from __future__ import annotations

import array
from typing import Any, Dict, Optional

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from ..pipeline.calibration import CameraModel
from ..pipeline.geometry import message_buffer_owner
from . import messages
from .messages import DEPTH_FORMATS, POINT_FIELDS, disparity_from_msg, image_to_array, pointcloud2_to_array

__all__ = ["DEPTH_FORMATS", "POINT_FIELDS", "RCLPY_CLASSES", "camera_info_msg", "camera_model", "depth_image_msg",
           "disparity_from_msg", "disparity_image_msg", "image_to_array", "numpy_to_image", "payload",
           "pointcloud2_msg", "pointcloud2_to_array"]


def payload(a: np.ndarray) -> "array.array[int]":
    """The bytes of ``a`` (C order) as the ``array.array('B')`` a message's uint8[] field stores: the
    array that holds them when ``a`` is a whole :func:`~foundation_stereo_ros.pipeline.geometry.message_buffer`
    (no copy: the message then shares ``a``'s memory), else a copy."""
    owner = message_buffer_owner(a)
    if owner is not None:
        return owner
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return data


def _with_data(cls: Any, data: "array.array[int]", fields: Dict[str, Any]) -> Any:
    """A message whose ``data`` is ``data`` itself (see the module's performance note)."""
    msg = cls(check_fields=True, **fields) if "_check_fields" in cls.__slots__ else cls(**fields)
    msg.data = data  # an array.array('B') is kept as it is (checked: type code only)
    return msg


#: rclpy's message classes, for the builders of :mod:`.messages`.
RCLPY_CLASSES = messages.MessageClasses(
    Time=Time, Header=Header, Image=Image, CompressedImage=CompressedImage, CameraInfo=CameraInfo,
    RegionOfInterest=RegionOfInterest,
    DisparityImage=DisparityImage, PointCloud2=PointCloud2, PointField=PointField, bytes_field=payload,
    float64_field=lambda v: array.array("d", np.asarray(v, dtype=np.float64).reshape(-1).tolist()),
    with_data=_with_data)


def numpy_to_image(array_: np.ndarray, encoding: str, header: Optional[Header] = None) -> Image:
    """An Image holding ``array_`` ((H, W) or (H, W, C), dtype matching ``encoding``), dense rows."""
    return messages.image_msg(RCLPY_CLASSES, array_, encoding, header if header is not None else Header())


def depth_image_msg(depth: np.ndarray, header: Optional[Header], depth_format: str = "32FC1") -> Image:
    """The depth image of a result (metres, NaN invalid) as 32FC1 metres or 16UC1 millimetres
    (0 invalid or beyond 65.535 m); see :func:`.messages.depth_image_msg`."""
    return messages.depth_image_msg(RCLPY_CLASSES, depth, header if header is not None else Header(), depth_format)


def camera_info_msg(model: CameraModel, header: Optional[Header] = None) -> CameraInfo:
    """CameraInfo of a camera model (e.g. the rectified left camera of a result)."""
    return messages.camera_info_msg(RCLPY_CLASSES, model, header if header is not None else Header())


def camera_model(msg: Any, name: str = "camera") -> CameraModel:
    """Camera model of a CameraInfo (raises the pipeline's CalibrationError for unusable fields)."""
    return CameraModel.from_camera_info(msg, name)


def disparity_image_msg(result: Any, header: Optional[Header]) -> DisparityImage:
    """stereo_msgs/DisparityImage of a :class:`~foundation_stereo_ros.pipeline.StereoResult`.

    As stereo_image_proc: 32FC1 image, pre-adjusted disparities, invalid pixels hold
    ``min_disparity - 1`` (below the valid range, which DisparityImage users test for).
    """
    header = header if header is not None else Header()
    return messages.disparity_image_msg(RCLPY_CLASSES, result.disparity, header, result.f, result.t,
                                        result.min_disparity, result.max_disparity, result.delta_d,
                                        result.valid_window)


def pointcloud2_msg(points: np.ndarray, colors: Optional[np.ndarray], header: Optional[Header],
                    organized: bool = True, cloud: Optional[np.ndarray] = None) -> PointCloud2:
    """PointCloud2 of a result's points (see :func:`.messages.pointcloud2_msg`)."""
    return messages.pointcloud2_msg(RCLPY_CLASSES, points, colors, header if header is not None else Header(),
                                    organized, cloud)
