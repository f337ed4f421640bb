"""OpenCV semi-global block matching (Hirschmüller 2008) as a disparity backend."""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np

from ..config import ProcessorConfig
from ..errors import StereoInputError
from .base import DisparityBackend

_SGBM_MODES = {"sgbm": cv2.STEREO_SGBM_MODE_SGBM, "hh": cv2.STEREO_SGBM_MODE_HH,
               "sgbm_3way": cv2.STEREO_SGBM_MODE_SGBM_3WAY, "hh4": cv2.STEREO_SGBM_MODE_HH4}


class SGBMBackend(DisparityBackend):
    """OpenCV semi-global block matching on the grey images (CPU), 1/16 px steps.

    Invalid output (no unique match, failed left-right check, speckles, the left border where
    the search range leaves the right image) becomes NaN. Its left-right check is OpenCV's
    (``sgbm_disp12_max_diff``); the network's ``lr_check`` does not apply.
    """

    name = "sgbm"

    def __init__(self, config: ProcessorConfig) -> None:
        bs = config.sgbm_block_size
        # OpenCV's recommended smoothness penalties for one channel.
        p1 = config.sgbm_p1 or 8 * bs * bs
        p2 = config.sgbm_p2 or 32 * bs * bs
        self.min_disparity = config.sgbm_min_disparity
        self.num_disparities = config.sgbm_num_disparities
        self.block_size = bs
        self._matcher = cv2.StereoSGBM_create(
            minDisparity=self.min_disparity, numDisparities=self.num_disparities, blockSize=bs, P1=p1, P2=p2,
            disp12MaxDiff=config.sgbm_disp12_max_diff, preFilterCap=config.sgbm_pre_filter_cap,
            uniquenessRatio=config.sgbm_uniqueness_ratio, speckleWindowSize=config.sgbm_speckle_window_size,
            speckleRange=config.sgbm_speckle_range, mode=_SGBM_MODES[config.sgbm_mode])
        if config.lr_check > 0:
            self.notes = (f"lr_check ({config.lr_check:g} px) applies to the network backends only; SGBM keeps its "
                          f"own left-right check, sgbm_disp12_max_diff ({config.sgbm_disp12_max_diff} px, -1: off)",)

    def compute(self, left: np.ndarray, right: np.ndarray, grey: bool = False) -> np.ndarray:
        if left.shape[1] <= self.num_disparities + self.block_size:
            raise StereoInputError("image_too_small", f"image width {left.shape[1]} must exceed "
                                                      f"sgbm_num_disparities + sgbm_block_size "
                                                      f"({self.num_disparities + self.block_size})")
        if grey:  # the three channels are equal: any one is the grey image
            gl, gr = np.ascontiguousarray(left[..., 0]), np.ascontiguousarray(right[..., 0])
        else:
            gl, gr = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY), cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)
        fixed = self._matcher.compute(gl, gr)  # (H, W) int16, 1/16 px, (min-1)*16 where invalid
        disparity = fixed.astype(np.float32)
        disparity *= np.float32(1.0 / 16.0)
        disparity[fixed < self.min_disparity * 16] = np.nan
        return disparity

    def search_range(self, width: int) -> Tuple[float, float]:
        return float(self.min_disparity), float(self.min_disparity + self.num_disparities - 1)

    @property
    def delta_d(self) -> float:
        return 1.0 / 16.0

    def valid_window(self, width: int, height: int) -> Tuple[int, int, int, int]:
        roi = (0, 0, width, height)
        x, y, w, h = cv2.getValidDisparityROI(roi, roi, self.min_disparity, self.num_disparities, self.block_size)
        return int(x), int(y), max(int(w), 0), max(int(h), 0)
