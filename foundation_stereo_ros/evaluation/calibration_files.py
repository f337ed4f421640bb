"""Stereo calibration files -> the CameraInfo pair a stereo camera driver would publish.

Three formats are read (``load_stereo_calibration`` picks by content):

1. **OpenCV FileStorage** (YAML ``%YAML:1.0`` or XML), as written by OpenCV's ``stereo_calib``
   sample and by ``cv2.FileStorage``: ``M1 D1 M2 D2`` (or ``K1 K2``) plus either the rectification
   ``R1 R2 P1 P2`` or the extrinsics ``R T`` (then ``cv2.stereoRectify`` computes the former).
   Several files are merged, e.g. ``intrinsics.yml`` + ``extrinsics.yml``. ``T`` is in the unit of
   the calibration target's square size; pass ``translation_unit`` when that is not metres.
2. **K.txt** of the FoundationStereo reference: line 1 the 3x3 K row-major, line 2 the baseline in
   metres. The images are already rectified.
3. **The simple YAML of this package**, either the rectified short form::

       fx: 3740.0          # px
       fy: 3740.0          # optional, defaults to fx
       cx: 641.0
       cy: 555.0
       cx_right: 641.0     # optional, defaults to cx
       baseline: 0.160     # m, right camera to the right of the left one
       width: 1282         # optional when the images are given
       height: 1110

   or the per-camera long form, where ``left`` and ``right`` are each a CameraInfo (``k`` 9,
   ``d``, ``r`` 9, ``p`` 12, ``distortion_model``, ``width``, ``height``; keys in either case), a
   ROS ``camera_calibration`` YAML (``camera_matrix: {data: ...}`` ...), or the path of such a
   file relative to the YAML.

Everything is returned as the pipeline's validated
:class:`~foundation_stereo_ros.pipeline.calibration.StereoCalibration` (ROS CameraInfo
conventions: right ``P[0, 3] = -fx * baseline``), so a file is refused for the same reasons as
the CameraInfo the node receives (a :class:`~foundation_stereo_ros.pipeline.errors.CalibrationError`,
a ``ValueError``, with its problem key).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import yaml

from foundation_stereo_ros.fileio import read_intrinsics
from foundation_stereo_ros.pipeline.calibration import CameraModel, StereoCalibration, rectified_pair

PathLike = Union[str, os.PathLike]

_UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}


def _trim_distortion(d: np.ndarray) -> np.ndarray:
    """OpenCV may return 8, 12 or 14 coefficients with the extra ones zero; ROS names only the
    5-coefficient (plumb_bob) and 8-coefficient (rational_polynomial) models, so drop zero tails."""
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    for keep in (5, 8):
        if d.size > keep and not np.any(d[keep:]):
            return d[:keep]
    return d


def _distortion_model(d: np.ndarray, given: Optional[str] = None) -> str:
    if given:
        return str(given)
    return "rational_polynomial" if d.size >= 8 else "plumb_bob"


def _matrix(value: Any, shape: Tuple[int, int], what: str) -> np.ndarray:
    if isinstance(value, Mapping) and "data" in value:
        value = value["data"]
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != shape[0] * shape[1]:
        raise ValueError(f"{what}: expected {shape[0] * shape[1]} numbers, got {arr.size}")
    return arr.reshape(shape)


def _vector(value: Any) -> np.ndarray:
    if isinstance(value, Mapping) and "data" in value:
        value = value["data"]
    return np.asarray(value if value is not None else [], dtype=np.float64).reshape(-1)


def _get(d: Mapping[str, Any], *names: str) -> Any:
    for n in names:
        if n in d:
            return d[n]
    return None


def _camera_from_mapping(m: Mapping[str, Any], what: str, base: Path, size: Optional[Tuple[int, int]],
                         name: str) -> CameraModel:
    if isinstance(m, (str, os.PathLike)):
        path = Path(m)
        path = path if path.is_absolute() else base / path
        return _camera_from_mapping(_read_yaml(path), str(path), path.parent, size, name)
    if not isinstance(m, Mapping):
        raise ValueError(f"{what}: expected a mapping of CameraInfo fields or a file path")
    k = _get(m, "k", "K", "camera_matrix")
    if k is None:
        raise ValueError(f"{what}: no 'k' (or 'camera_matrix') entry")
    k = _matrix(k, (3, 3), f"{what} K")
    d = _vector(_get(m, "d", "D", "distortion_coefficients"))
    r = _get(m, "r", "R", "rectification_matrix")
    r = np.eye(3) if r is None else _matrix(r, (3, 3), f"{what} R")
    p = _get(m, "p", "P", "projection_matrix")
    p = np.hstack([k, np.zeros((3, 1))]) if p is None else _matrix(p, (3, 4), f"{what} P")
    w = _get(m, "width", "image_width")
    h = _get(m, "height", "image_height")
    if (w is None or h is None) and size is not None:
        w, h = size
    if w is None or h is None:
        raise ValueError(f"{what}: no image size (width/height); give it in the file or pass the images")
    return CameraModel(int(w), int(h), k, d, r, p, _distortion_model(d, _get(m, "distortion_model")), name)


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    return data


def _from_simple_yaml(path: Path, size: Optional[Tuple[int, int]]) -> StereoCalibration:
    data = _read_yaml(path)
    if "left" in data or "right" in data:
        if not ("left" in data and "right" in data):
            raise ValueError(f"{path}: the per-camera form needs both 'left' and 'right'")
        return StereoCalibration(_camera_from_mapping(data["left"], f"{path} left", path.parent, size, "left"),
                                 _camera_from_mapping(data["right"], f"{path} right", path.parent, size, "right"))
    missing = [k for k in ("fx", "cx", "cy", "baseline") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}; the short form needs fx, cx, cy and "
                         f"baseline (metres), the long form 'left' and 'right' CameraInfo entries")
    w = data.get("width", size[0] if size else None)
    h = data.get("height", size[1] if size else None)
    if w is None or h is None:
        raise ValueError(f"{path}: no width/height and no images to take them from")
    try:
        return rectified_pair(float(data["fx"]), float(data["cx"]), float(data["cy"]), float(data["baseline"]),
                              int(w), int(h), fy=None if data.get("fy") is None else float(data["fy"]),
                              cx_right=None if data.get("cx_right") is None else float(data["cx_right"]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def _read_opencv_storage(paths: Sequence[Path]) -> Dict[str, Any]:
    merged: Dict[str, Any] = {}
    for path in paths:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
        if not fs.isOpened():
            raise ValueError(f"{path}: OpenCV cannot read it as FileStorage YAML/XML")
        try:
            root = fs.root()
            for key in root.keys():
                node = root.getNode(key)
                if node.isInt() or node.isReal():
                    merged[key] = node.real()
                elif node.isMap():  # !!opencv-matrix entries are maps
                    mat = node.mat()
                    if mat is not None:
                        merged[key] = mat
        finally:
            fs.release()
    return merged


def _from_opencv(paths: Sequence[Path], size: Optional[Tuple[int, int]], translation_unit: str) -> StereoCalibration:
    data = _read_opencv_storage(paths)
    names = ", ".join(str(p) for p in paths)

    def need(*keys: str) -> np.ndarray:
        v = _get(data, *keys)
        if v is None:
            raise ValueError(f"{names}: no {' or '.join(keys)} matrix (found: {', '.join(sorted(data)) or 'nothing'})")
        return np.asarray(v, dtype=np.float64)

    k1, k2 = need("M1", "K1").reshape(3, 3), need("M2", "K2").reshape(3, 3)
    d1, d2 = need("D1").reshape(-1), need("D2").reshape(-1)
    w = _get(data, "image_width", "width")
    h = _get(data, "image_height", "height")
    if w is None or h is None:
        if size is None:
            raise ValueError(f"{names}: no image_width/image_height; pass the images or the size")
        w, h = size
    w, h = int(w), int(h)
    unit = _UNITS.get(translation_unit)
    if unit is None:
        raise ValueError(f"translation unit must be one of {sorted(_UNITS)}, got {translation_unit!r}")
    if all(k in data for k in ("R1", "R2", "P1", "P2")):
        r1, r2 = need("R1").reshape(3, 3), need("R2").reshape(3, 3)
        p1, p2 = need("P1").reshape(3, 4).copy(), need("P2").reshape(3, 4).copy()
    elif "R" in data and "T" in data:
        r = need("R").reshape(3, 3)
        t = need("T").reshape(3, 1)
        r1, r2, p1, p2, *_ = cv2.stereoRectify(k1, d1, k2, d2, (w, h), r, t,
                                               flags=cv2.CALIB_ZERO_DISPARITY, alpha=0)
        p1, p2 = p1.copy(), p2.copy()
    else:
        raise ValueError(f"{names}: need the rectification (R1 R2 P1 P2) or the extrinsics (R T) besides "
                         f"the intrinsics; OpenCV's stereo_calib writes them to extrinsics.yml")
    p1[:, 3] *= unit
    p2[:, 3] *= unit
    d1, d2 = _trim_distortion(d1), _trim_distortion(d2)
    return StereoCalibration(CameraModel(w, h, k1, d1, r1, p1, _distortion_model(d1), "left"),
                             CameraModel(w, h, k2, d2, r2, p2, _distortion_model(d2), "right"))


def _from_k_txt(path: Path, size: Optional[Tuple[int, int]]) -> StereoCalibration:
    k, baseline = read_intrinsics(path)
    if size is None:
        raise ValueError(f"{path}: K.txt carries no image size; pass the images or the size")
    return rectified_pair(k[0, 0], k[0, 2], k[1, 2], baseline, size[0], size[1], fy=k[1, 1])


def _looks_like_opencv(path: Path) -> bool:
    head = path.read_bytes()[:256].lstrip()
    return head.startswith(b"%YAML:1.") or head.startswith(b"<?xml") or b"!!opencv-matrix" in path.read_bytes()


def load_stereo_calibration(paths: Union[PathLike, Iterable[PathLike]],
                            size: Optional[Tuple[int, int]] = None,
                            translation_unit: str = "m") -> StereoCalibration:
    """Read one calibration (several OpenCV files are merged). ``size`` is (width, height) of the
    images, used when the file does not carry it; a file that carries a different size is
    rejected so that a calibration never silently describes other images."""
    plist = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not plist:
        raise ValueError("no calibration file given")
    for p in plist:
        if not p.is_file():
            raise ValueError(f"{p}: calibration file not found")
    if all(_looks_like_opencv(p) for p in plist):
        calib = _from_opencv(plist, size, translation_unit)
    elif len(plist) > 1:
        raise ValueError("only OpenCV FileStorage calibrations can be split over several files")
    elif plist[0].suffix.lower() == ".txt":
        calib = _from_k_txt(plist[0], size)
    else:
        calib = _from_simple_yaml(plist[0], size)
    if size is not None and (calib.left.width, calib.left.height) != tuple(size):
        raise ValueError(f"calibration is for {calib.left.width}x{calib.left.height} images, the images are "
                         f"{size[0]}x{size[1]}; calibrate at the image resolution or resize the images")
    return calib
