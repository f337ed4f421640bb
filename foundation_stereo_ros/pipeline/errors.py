"""The one exception family of the pipeline: bad input named by a short, stable problem key.

Every problem that a single frame can have (an image that cannot be decoded, a calibration that
cannot be used, a left/right pair that does not belong together) raises a subclass of
:class:`StereoInputError`. Its ``problem`` attribute is a short key (``"unknown_encoding"``,
``"zero_baseline"`` ...) that the node counts per kind in ``/diagnostics`` and that the offline
tools report, so it is part of the API and does not change between releases.
"""
from __future__ import annotations


class StereoInputError(ValueError):
    """A frame that cannot be processed; ``problem`` names the kind of fault (see module doc).

    Raised directly (not as a subclass) with ``image_too_small`` when the image is narrower than
    the SGBM search range.
    """

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem


class ImageDecodeError(StereoInputError):
    """A sensor_msgs/Image whose fields do not describe a decodable picture.

    Problems: ``empty_image`` (zero width or height), ``unknown_encoding``, ``bad_step`` (step
    shorter than one row of pixels), ``data_size`` (data shorter or longer than step * height),
    ``bad_width`` (odd width for a 4:2:2 YUV encoding).
    """


class CalibrationError(StereoInputError):
    """CameraInfo values that cannot describe a rectified stereo pair.

    Problems: ``calibration_missing``, ``calibration_nonfinite`` (NaN or infinite values),
    ``calibration_zero_focal`` (fx or fy of 0, as an uncalibrated camera publishes),
    ``calibration_size`` (zero width/height, or left and right CameraInfo of different sizes),
    ``calibration_shape`` (K/R/P with the wrong number of values), ``distortion_model``
    (a model OpenCV cannot undistort), ``calibration_binning`` (binning or ROI, not supported),
    ``zero_baseline``, ``negative_baseline`` (left and right swapped?), ``vertical_stereo``,
    ``not_rectified`` (left and right P disagree on focal length or principal row),
    ``calibration_mismatch`` (CameraInfo size differs from the image size).
    """


class PairMismatchError(StereoInputError):
    """Left and right images that cannot be matched with each other.

    Problems: ``size_mismatch`` (different width/height), ``encoding_mismatch`` (one grey, one
    colour, or 8-bit with 16-bit).
    """
