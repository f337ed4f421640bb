"""The real chessboard stereo pairs of Debian's opencv-doc (left01..14.jpg, right01..14.jpg; 13
pairs, 640x480 grey JPEGs, a 9x6 inner-corner board) and their calibration with OpenCV: shared by
the node's real-data test and the evaluation's own-recording test."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

PATTERN = (9, 6)  # inner corners per row and column
SQUARE_M = 0.025  # nominal: the files do not say; it only scales the baseline
CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-3)


def chessboard_pairs(opencv_data: Path) -> List[Tuple[Path, Path]]:
    """(left, right) JPEG paths of every pair whose two files exist, in name order."""
    pairs = [(p, p.with_name(p.name.replace("left", "right")))
             for p in sorted(opencv_data.glob("left[0-9][0-9].jpg"))]
    return [(l, r) for l, r in pairs if r.is_file()]


def read_grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(path)
    return image


def chessboard_corners(grey: np.ndarray) -> Optional[np.ndarray]:
    """(54, 2) sub-pixel corners in OpenCV's order, or None where the board is not found."""
    found, corners = cv2.findChessboardCorners(grey, PATTERN)
    if not found:
        return None
    return cv2.cornerSubPix(grey, corners, (11, 11), (-1, -1), CRITERIA).reshape(-1, 2)


@dataclass
class StereoRig:
    """cv2.stereoCalibrate and cv2.stereoRectify results: raw intrinsics K, plumb_bob D, the
    rectification rotations R1/R2 and rectified projections P1/P2 (T in metres)."""

    size: Tuple[int, int]  # (width, height)
    K1: np.ndarray
    D1: np.ndarray
    K2: np.ndarray
    D2: np.ndarray
    R: np.ndarray
    T: np.ndarray
    R1: np.ndarray
    R2: np.ndarray
    P1: np.ndarray
    P2: np.ndarray
    rms: float  # stereoCalibrate's reprojection error, px
    views: int  # pairs with the board found in both images


def calibrate_stereo(images: Sequence[Tuple[np.ndarray, np.ndarray]], rectify_flags: int = 0,
                     alpha: float = 0.0) -> StereoRig:
    """Each camera with cv2.calibrateCamera, then the pair with cv2.stereoCalibrate (intrinsics
    fixed) and cv2.stereoRectify. ``rectify_flags=0`` lets the rectified principal points differ
    (delta_cx != 0), as for a real verged rig."""
    size = images[0][0].shape[::-1]
    board = np.zeros((PATTERN[0] * PATTERN[1], 3), np.float32)
    board[:, :2] = np.mgrid[0:PATTERN[0], 0:PATTERN[1]].T.reshape(-1, 2) * SQUARE_M
    obj, img_l, img_r = [], [], []
    for left, right in images:
        cl, cr = chessboard_corners(left), chessboard_corners(right)
        if cl is not None and cr is not None:
            obj.append(board)
            img_l.append(cl.reshape(-1, 1, 2))
            img_r.append(cr.reshape(-1, 1, 2))
    if len(obj) < 3:
        raise ValueError(f"the board was found in both images of only {len(obj)} pairs")
    _, K1, D1, _, _ = cv2.calibrateCamera(obj, img_l, size, None, None)
    _, K2, D2, _, _ = cv2.calibrateCamera(obj, img_r, size, None, None)
    rms, K1, D1, K2, D2, R, T, _, _ = cv2.stereoCalibrate(obj, img_l, img_r, K1, D1, K2, D2, size,
                                                          flags=cv2.CALIB_FIX_INTRINSIC)
    R1, R2, P1, P2, _, _, _ = cv2.stereoRectify(K1, D1, K2, D2, size, R, T, flags=rectify_flags, alpha=alpha)
    return StereoRig(tuple(size), K1, D1.ravel(), K2, D2.ravel(), R, T.ravel(), R1, R2, P1, P2, float(rms), len(obj))
