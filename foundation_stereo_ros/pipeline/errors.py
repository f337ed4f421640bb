"""The one exception family of the pipeline: a skipped frame named by a short, stable problem key.

Every problem that a single frame can have (an image that cannot be decoded, a calibration that
cannot be used, a left/right pair that does not belong together, a GPU that ran out of memory
even at the smallest allowed resolution) raises a subclass of :class:`FrameError`. Its
``problem`` attribute is a short key (``"unknown_encoding"``, ``"zero_baseline"`` ...) that the
node counts per kind in ``/diagnostics`` and that the offline tools report, so it is part of the
API and does not change between releases.

Bad *input* raises :class:`StereoInputError` (also a ``ValueError``); a resource fault raises
:class:`InferenceMemoryError` (also a ``RuntimeError``). Catch :class:`FrameError` for both.
"""
from __future__ import annotations


class FrameError(Exception):
    """A frame that cannot be processed; ``problem`` names the kind of fault (see module doc)."""

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem


class StereoInputError(FrameError, ValueError):
    """A frame whose messages cannot be processed; ``problem`` names the fault (see module doc).

    Raised directly (not as a subclass) with ``image_too_small`` when the image is narrower than
    the SGBM search range.
    """


class InferenceMemoryError(FrameError, RuntimeError):
    """The network ran out of (GPU) memory at every resolution down to ``oom_min_scale``.

    Problem: ``out_of_memory``. The frame is skipped; the next one is tried again.
    """


class ImageDecodeError(StereoInputError):
    """A sensor_msgs/Image whose fields do not describe a decodable picture.

    Problems: ``empty_image`` (zero width or height), ``unknown_encoding``, ``bad_step`` (step
    shorter than one row of pixels), ``data_size`` (data shorter or longer than step * height),
    ``bad_width`` (odd width for a 4:2:2 YUV encoding), ``wrong_encoding`` (rows padded to exactly
    the row length of an encoding with at least twice the bytes per pixel: the encoding names
    fewer bytes per pixel than the camera sent, e.g. rgb8 data announced as mono8).
    """


class CompressedImageError(ImageDecodeError):
    """A sensor_msgs/CompressedImage that does not decode into the picture it announces
    (:mod:`.compressed`).

    Problems: ``compressed_truncated`` (no data, or data that ends before the JPEG end-of-image
    marker or the PNG IEND chunk), ``compressed_corrupt`` (data that is not the codec the format
    names, a broken JPEG marker structure, data OpenCV cannot decode), ``compressed_format`` (a
    format that names neither jpeg nor png, or the compressedDepth transport), ``compressed_size``
    (the image is not the size its CameraInfo gives).
    """


class CalibrationError(StereoInputError):
    """CameraInfo values that cannot describe a rectified stereo pair.

    Problems: ``calibration_missing``, ``calibration_nonfinite`` (NaN or infinite values),
    ``calibration_zero_focal`` (fx or fy of 0, as an uncalibrated camera publishes),
    ``calibration_principal_point`` (cx or cy more than 10 image sizes outside the image),
    ``calibration_size`` (zero width/height, or left and right CameraInfo of different sizes),
    ``calibration_shape`` (K/R/P with the wrong number of values), ``distortion_model``
    (a model OpenCV cannot undistort), ``calibration_binning`` (binning or ROI, not supported),
    ``zero_baseline`` (right P[0,3] = 0: no baseline; the disparity needs none, so a processor asked
    for ``Outputs(disparity_without_baseline=True)`` returns it and names this problem in
    ``StereoResult.depth_problem`` instead of raising), ``negative_baseline`` (left and right
    swapped?), ``vertical_stereo``,
    ``not_rectified`` (left and right P disagree on focal length or principal row),
    ``calibration_mismatch`` (CameraInfo size differs from the image size),
    ``frame_id_mismatch`` (an image and its own CameraInfo carry different non-empty frame ids:
    the calibration belongs to another camera; left and right frame ids may differ).
    """


class PairMismatchError(StereoInputError):
    """Left and right images that cannot be matched with each other.

    Problems: ``size_mismatch`` (different width/height), ``encoding_mismatch`` (one grey, one
    colour, or 8-bit with 16-bit).
    """
