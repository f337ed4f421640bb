"""Camera models and stereo calibration from CameraInfo values, and cached rectification.

Conventions are those of ROS (sensor_msgs/CameraInfo, image_geometry):

* ``K``, ``D``, ``R`` describe the raw (distorted) camera; ``P`` (3x4) projects into the
  rectified image. For the right camera ``P[0, 3] = -fx * baseline``, so
  ``baseline = -P_right[0, 3] / P_right[0, 0]`` and the focal length is ``P_right[0, 0]``
  (stereo_image_proc reads both from the right camera).
* The principal points of the two rectified images may differ in x (verged cameras, or a
  rectification that keeps the whole image): ``delta_cx = cx_left - cx_right``. A point at depth
  ``Z`` then has raw disparity ``d = x_left - x_right = f * B / Z + delta_cx``; the disparity
  that DisparityImage carries is pre-adjusted, ``d' = d - delta_cx``, so that ``Z = f * B / d'``.

A :class:`StereoCalibration` is the package's one stereo camera model: the node builds it from
CameraInfo messages, the offline tools from bags and calibration files
(:mod:`foundation_stereo_ros.evaluation.calibration_files`), :func:`rectified_pair` from a few
numbers. It is validated when built (every problem raises :class:`~.errors.CalibrationError`
with a ``problem`` key), and :meth:`~StereoCalibration.scaled` / :meth:`~StereoCalibration.cropped`
give the calibration of resized or cropped images. The rectification itself is
:mod:`.rectification`'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from .errors import CalibrationError

RECTIFY_MODES = ("auto", "always", "never")

#: Distortion models that OpenCV can undistort. An unknown model is accepted only with all-zero D.
PINHOLE_MODELS = ("plumb_bob", "rational_polynomial", "")
FISHEYE_MODELS = ("equidistant", "fisheye")
_OPENCV_D_LENGTHS = (4, 5, 8, 12, 14)


def _matrix(values: Any, shape: Tuple[int, int], name: str, which: str) -> np.ndarray:
    a = np.asarray(values if values is not None else (), dtype=np.float64).reshape(-1)
    if a.size != shape[0] * shape[1]:
        raise CalibrationError("calibration_shape", f"{which} camera_info {name} has {a.size} values, expected "
                                                    f"{shape[0] * shape[1]}")
    return a.reshape(shape)


@dataclass(frozen=True, eq=False)
class CameraModel:
    """One camera of a stereo pair, as CameraInfo describes it (float64 arrays, ROS conventions)."""

    width: int
    height: int
    K: np.ndarray  # (3, 3) raw intrinsics
    D: np.ndarray  # (n,) distortion coefficients
    R: np.ndarray  # (3, 3) rectification rotation
    P: np.ndarray  # (3, 4) rectified projection
    distortion_model: str = "plumb_bob"
    name: str = "camera"  # 'left' or 'right', for messages
    key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        w, h = int(self.width), int(self.height)
        object.__setattr__(self, "width", w)
        object.__setattr__(self, "height", h)
        for attr, shape in (("K", (3, 3)), ("R", (3, 3)), ("P", (3, 4))):
            object.__setattr__(self, attr, _matrix(getattr(self, attr), shape, attr, self.name))
        object.__setattr__(self, "D", np.asarray(self.D if self.D is not None else (), np.float64).reshape(-1))
        # An all-zero R is what a driver leaves in an unfilled CameraInfo: no rotation.
        if not self.R.any():
            object.__setattr__(self, "R", np.eye(3))
        for a in (self.K, self.D, self.R, self.P):
            a.setflags(write=False)
        key = b"".join(a.tobytes() for a in (self.K, self.D, self.R, self.P))
        object.__setattr__(self, "key", key + f"|{w}x{h}|{self.distortion_model}".encode())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_camera_info(cls, info: Any, name: str = "camera") -> "CameraModel":
        """From any CameraInfo-like object: ROS 2 field names (k, d, r, p) or ROS 1 (K, D, R, P).

        Binning and ROI are not supported (raises ``calibration_binning``) unless they describe
        the full image.
        """
        if info is None:
            raise CalibrationError("calibration_missing", f"no camera_info received for the {name} camera")

        def get(lower: str) -> Any:
            return getattr(info, lower, None) if hasattr(info, lower) else getattr(info, lower.upper(), None)

        bx, by = int(getattr(info, "binning_x", 0) or 0), int(getattr(info, "binning_y", 0) or 0)
        roi = getattr(info, "roi", None)
        if bx > 1 or by > 1:
            raise CalibrationError("calibration_binning", f"{name} camera_info has binning {bx}x{by}; binning is "
                                                          f"not supported, publish full-resolution calibration")
        if roi is not None and (roi.x_offset or roi.y_offset) and roi.width and roi.height:
            raise CalibrationError("calibration_binning", f"{name} camera_info has a region of interest "
                                                          f"({roi.width}x{roi.height}+{roi.x_offset}+{roi.y_offset}); "
                                                          f"ROI is not supported")
        return cls(width=int(info.width), height=int(info.height), K=get("k"), D=get("d"), R=get("r"), P=get("p"),
                   distortion_model=str(getattr(info, "distortion_model", "") or ""), name=name)

    # ------------------------------------------------------------------ properties
    @property
    def fx(self) -> float:
        return float(self.P[0, 0])

    @property
    def fy(self) -> float:
        return float(self.P[1, 1])

    @property
    def cx(self) -> float:
        return float(self.P[0, 2])

    @property
    def cy(self) -> float:
        return float(self.P[1, 2])

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) as OpenCV wants it."""
        return self.width, self.height

    def is_fisheye(self) -> bool:
        return self.distortion_model in FISHEYE_MODELS

    def has_distortion(self) -> bool:
        return bool(np.any(self.D != 0.0))

    def has_rotation(self, tol: float = 1e-9) -> bool:
        return bool(np.abs(self.R - np.eye(3)).max() > tol)

    def needs_rectification(self) -> bool:
        """What ``rectify: auto`` looks at: distortion or rotation present."""
        return self._distorted_or_rotated

    @cached_property
    def _distorted_or_rotated(self) -> bool:  # asked with every frame: computed once (the model is frozen)
        return self.has_distortion() or self.has_rotation()

    def rectified(self) -> "CameraModel":
        """The model of this camera's rectified image: K from P, no distortion, no rotation."""
        return CameraModel(self.width, self.height, self.P[:, :3].copy(), np.zeros(5), np.eye(3), self.P.copy(),
                           "plumb_bob", self.name)

    # ------------------------------------------------------------------ resized and cropped images
    def scaled(self, factor: float) -> "CameraModel":
        """The model of the image resized by ``factor`` (OpenCV's pixel-centre convention:
        x' = (x + 0.5) * factor - 0.5)."""
        if not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        s = np.diag([factor, factor, 1.0])
        shift = np.array([[1.0, 0.0, 0.5 * factor - 0.5], [0.0, 1.0, 0.5 * factor - 0.5], [0.0, 0.0, 1.0]])
        a = shift @ s
        return replace(self, width=int(round(self.width * factor)), height=int(round(self.height * factor)),
                       K=a @ self.K, P=a @ self.P)

    def cropped(self, x0: int, y0: int, width: int, height: int) -> "CameraModel":
        """The model of the window [x0, x0 + width) x [y0, y0 + height) of the image."""
        t = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
        return replace(self, width=int(width), height=int(height), K=t @ self.K, P=t @ self.P)

    def with_size(self, width: int, height: int) -> "CameraModel":
        """The same matrices for images of another size."""
        return replace(self, width=int(width), height=int(height))

    # ------------------------------------------------------------------ validation
    # A principal point this many image sizes outside the image is no calibration: real ones lie
    # in or near the image, and absurd ones overflow the float32 point cloud.
    PRINCIPAL_POINT_MARGIN = 10

    def _check_principal_point(self, matrix: str, cx: float, cy: float) -> None:
        m = self.PRINCIPAL_POINT_MARGIN
        if not (-m * self.width <= cx <= (m + 1) * self.width and -m * self.height <= cy <= (m + 1) * self.height):
            raise CalibrationError("calibration_principal_point",
                                   f"{self.name} camera_info {matrix} has its principal point at ({cx:g}, {cy:g}), "
                                   f"far outside the {self.width}x{self.height} image")

    def validate(self, for_rectification: bool) -> None:
        """Raise :class:`CalibrationError` if the model cannot be used (K/D/R too when rectifying)."""
        n = self.name
        if self.width <= 0 or self.height <= 0:
            raise CalibrationError("calibration_size", f"{n} camera_info has size {self.width}x{self.height}")
        for attr in ("K", "D", "R", "P"):
            if not np.all(np.isfinite(getattr(self, attr))):
                raise CalibrationError("calibration_nonfinite", f"{n} camera_info {attr} has NaN or infinite values")
        if self.P[0, 0] <= 0 or self.P[1, 1] <= 0 or self.P[2, 2] != 1.0:
            raise CalibrationError("calibration_zero_focal",
                                   f"{n} camera_info P has fx={self.P[0, 0]:g}, fy={self.P[1, 1]:g}, "
                                   f"P[2,2]={self.P[2, 2]:g}: the camera is not calibrated")
        self._check_principal_point("P", self.P[0, 2], self.P[1, 2])
        if not for_rectification:
            return
        if self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise CalibrationError("calibration_zero_focal", f"{n} camera_info K has fx={self.K[0, 0]:g}, "
                                                             f"fy={self.K[1, 1]:g}: the camera is not calibrated")
        self._check_principal_point("K", self.K[0, 2], self.K[1, 2])
        if np.abs(self.R @ self.R.T - np.eye(3)).max() > 1e-3 or abs(np.linalg.det(self.R) - 1.0) > 1e-3:
            raise CalibrationError("calibration_rotation", f"{n} camera_info R is not a rotation matrix")
        if self.has_distortion():
            if self.is_fisheye():
                if self.D.size < 4:
                    raise CalibrationError("distortion_model", f"{n} camera_info: equidistant model needs 4 "
                                                               f"coefficients, got {self.D.size}")
            elif self.distortion_model not in PINHOLE_MODELS:
                raise CalibrationError("distortion_model", f"{n} camera_info distortion model "
                                                           f"{self.distortion_model!r} is not supported (use "
                                                           f"plumb_bob, rational_polynomial or equidistant)")
            elif self.D.size not in _OPENCV_D_LENGTHS:
                raise CalibrationError("distortion_model", f"{n} camera_info D has {self.D.size} coefficients; "
                                                           f"OpenCV takes 4, 5, 8, 12 or 14")


@dataclass(frozen=True, eq=False)
class StereoCalibration:
    """A validated left/right pair. Build with :meth:`from_camera_info` or directly from models.

    ``require_baseline=False`` accepts a zero baseline (right P[0,3] = 0, as calibrations that only
    rectify publish): such a calibration gives a disparity but no depth, and :attr:`depth_problem`
    says why. Everything else is validated the same way.
    """

    left: CameraModel
    right: CameraModel
    key: bytes = field(init=False, repr=False)
    require_baseline: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.left.key + b"||" + self.right.key)
        self.left.validate(for_rectification=False)
        self.right.validate(for_rectification=False)
        l, r = self.left, self.right
        if l.size != r.size:
            raise CalibrationError("calibration_size", f"left camera_info is {l.width}x{l.height}, right is "
                                                       f"{r.width}x{r.height}")
        if self.require_baseline and self.depth_problem is not None:
            raise self.depth_problem
        if abs(r.P[1, 3]) > 1e-3 * abs(r.P[0, 3]):
            raise CalibrationError("vertical_stereo", "right camera_info P has a vertical translation "
                                                      f"(P[1,3]={r.P[1, 3]:g}); only horizontal stereo is supported")
        if self.baseline < 0:
            raise CalibrationError("negative_baseline",
                                   f"baseline from the right P is {self.baseline:g} (P[0,3] > 0): left and right "
                                   f"seem swapped")
        if (abs(l.fx - r.fx) > 1e-3 * r.fx or abs(l.fy - r.fy) > 1e-3 * r.fy or abs(l.cy - r.cy) > 0.5):
            raise CalibrationError("not_rectified",
                                   f"left and right P disagree (fx {l.fx:g}/{r.fx:g}, fy {l.fy:g}/{r.fy:g}, "
                                   f"cy {l.cy:g}/{r.cy:g}); rectified cameras share focal length and row centre")

    @classmethod
    def from_camera_info(cls, left_info: Any, right_info: Any) -> "StereoCalibration":
        """From two CameraInfo-like objects (rclpy or rosbags messages, ROS 1 or 2 field names)."""
        return cls(CameraModel.from_camera_info(left_info, "left"), CameraModel.from_camera_info(right_info, "right"))

    @property
    def f(self) -> float:
        """Focal length of the rectified images in px (from the right P, as stereo_image_proc)."""
        return self.right.fx

    @property
    def baseline(self) -> float:
        """Distance between the optical centres, in the units of P[0,3] (metres by ROS convention)."""
        return -float(self.right.P[0, 3]) / float(self.right.P[0, 0])

    @property
    def depth_problem(self) -> Optional[CalibrationError]:
        """Why this calibration gives no depth (``zero_baseline``), or None."""
        if abs(self.baseline) < 1e-9:
            return CalibrationError("zero_baseline", "right camera_info P[0,3] (-fx * baseline) is 0: the baseline "
                                                     "is unknown; is this the right camera's CameraInfo?")
        return None

    @property
    def delta_cx(self) -> float:
        """cx_left - cx_right of the rectified images: raw disparity minus published disparity."""
        return self.left.cx - self.right.cx

    @cached_property
    def rectified_left(self) -> CameraModel:
        """Model of the rectified left image (computed once per calibration)."""
        return self.left.rectified()

    @cached_property
    def rectified_right(self) -> CameraModel:
        """Model of the rectified right image (computed once per calibration)."""
        return self.right.rectified()

    def needs_rectification(self, mode: str) -> bool:
        """Whether ``mode`` ('auto' | 'always' | 'never') remaps the images of this calibration."""
        if mode not in RECTIFY_MODES:
            raise ValueError(f"rectify must be one of {RECTIFY_MODES}, got {mode!r}")
        if mode == "auto":
            return self.left.needs_rectification() or self.right.needs_rectification()
        return mode == "always"

    def scaled(self, factor: float) -> "StereoCalibration":
        """The calibration of both images resized by ``factor`` (see :meth:`CameraModel.scaled`)."""
        return StereoCalibration(self.left.scaled(factor), self.right.scaled(factor),
                                 require_baseline=self.require_baseline)

    def cropped(self, x0: int, y0: int, width: int, height: int) -> "StereoCalibration":
        """The calibration of the same window of both images."""
        return StereoCalibration(self.left.cropped(x0, y0, width, height), self.right.cropped(x0, y0, width, height),
                                 require_baseline=self.require_baseline)

    def with_size(self, width: int, height: int) -> "StereoCalibration":
        return StereoCalibration(self.left.with_size(width, height), self.right.with_size(width, height),
                                 require_baseline=self.require_baseline)

    def check_image_size(self, width: int, height: int) -> None:
        """Raise ``calibration_mismatch`` if the images are not the size the calibration is for."""
        if (width, height) != self.left.size:
            raise CalibrationError("calibration_mismatch",
                                   f"images are {width}x{height} but camera_info is for "
                                   f"{self.left.width}x{self.left.height}")


def camera_info_key(info: Any) -> Optional[Tuple]:
    """The fields of a ROS 2 CameraInfo-like object (rclpy or rosbags) that
    :meth:`CameraModel.from_camera_info` reads, as bytes and numbers: equal keys give equal models
    (or the same error). None for objects without those fields (e.g. ROS 1 names)."""
    try:
        roi = info.roi
        return (int(info.width), int(info.height), str(info.distortion_model), int(info.binning_x or 0),
                int(info.binning_y or 0), int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height),
                *(np.asarray(getattr(info, name), dtype=np.float64).tobytes() for name in ("k", "d", "r", "p")))
    except (AttributeError, TypeError, ValueError):
        return None


def make_camera_model(width: int, height: int, K: Sequence[float], D: Sequence[float], R: Sequence[float],
                      P: Sequence[float], distortion_model: str = "plumb_bob", name: str = "camera") -> CameraModel:
    """Convenience constructor from flat row-major sequences (as in CameraInfo)."""
    return CameraModel(width, height, np.asarray(K, float), np.asarray(D, float), np.asarray(R, float),
                       np.asarray(P, float), distortion_model, name)


def rectified_pair(fx: float, cx: float, cy: float, baseline: float, width: int, height: int,
                   fy: Optional[float] = None, cx_right: Optional[float] = None) -> StereoCalibration:
    """The calibration of an already rectified rig (no distortion, identity R); ``baseline`` in
    metres, the right camera to the right of the left one."""
    fy = fx if fy is None else fy
    cx_right = cx if cx_right is None else cx_right

    def cam(cx_: float, tx: float, name: str) -> CameraModel:
        k = np.array([[fx, 0.0, cx_], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        p = np.hstack([k, np.array([[tx], [0.0], [0.0]])])
        return CameraModel(int(width), int(height), k, np.zeros(5), np.eye(3), p, "plumb_bob", name)

    return StereoCalibration(cam(cx, 0.0, "left"), cam(cx_right, -fx * baseline, "right"))


def camera_info_values(model: CameraModel) -> dict:
    """Flat CameraInfo values of a model: width, height, distortion_model, d, k, r, p (lists of float)."""
    return dict(width=model.width, height=model.height, distortion_model=model.distortion_model or "plumb_bob",
                d=[float(v) for v in model.D], k=[float(v) for v in model.K.reshape(-1)],
                r=[float(v) for v in model.R.reshape(-1)], p=[float(v) for v in model.P.reshape(-1)])


__all__ = ["CameraModel", "StereoCalibration", "camera_info_key", "make_camera_model", "camera_info_values",
           "rectified_pair", "RECTIFY_MODES"]
