"""ROS-free processing of one stereo pair: decode -> rectify -> match -> depth / points / colour.

The live node (``foundation_stereo_ros.ros.stereo_depth_node``) and the offline tools (bag
evaluation, benchmarks) both go through :class:`StereoProcessor`, so a recording evaluated offline
is processed exactly as the node would process it live. Nothing here imports rclpy.

API
---
::

    from foundation_stereo_ros.pipeline import ProcessorConfig, StereoProcessor, Outputs, FrameError

    config = ProcessorConfig(backend="sgbm", rectify="auto", max_depth=20.0)   # ValueError if invalid
    # or ProcessorConfig.from_mapping(yaml_dict["stereo_depth_node"]["ros__parameters"], ignore_unknown=True)
    proc = StereoProcessor(config)            # loads the network / builds the matcher; raises
                                              # CheckpointError / BackendError (ValueErrors)

    # From messages (rclpy or rosbags objects with the sensor_msgs field names; the images may be
    # Image or CompressedImage (JPEG, PNG), decoded here, in the caller's thread):
    try:
        result = proc.process_messages(left_img, right_img, left_info, right_info,
                                       outputs=Outputs(depth=True, points=True, disparity_color=False))
    except FrameError as e:                  # skipped frame: e.problem is a stable key, str(e) the reason
        ...                                  # (StereoInputError: bad input; InferenceMemoryError: out of memory)
    # Or step by step:
    pair = decode_stereo_pair(left_img, right_img)                     # DecodedPair(left, right, grey)
    calib = StereoCalibration.from_camera_info(left_info, right_info)   # validated
    result = proc.process(pair, calib)

    proc2 = proc.reconfigured(config.replace(iters=16))   # shares the loaded network and maps

    # In three steps, each of which may run in its own thread (as the node's stager, worker and
    # publisher do): host work before the network, the match, the host work after it.
    staged = proc.stage_messages_batch([MessageFrame(left_img, right_img, left_info, right_info)])
    pending = proc.match_staged(staged)[0]                # PendingResult, or the frame's FrameError
    result = pending.finish()

``StereoResult`` fields (all arrays (H, W[, C]) at the camera resolution):

* ``disparity`` float32 px, NaN invalid, *pre-adjusted* as stereo_msgs/DisparityImage requires:
  ``disparity = x_left - x_right - delta_cx`` with ``delta_cx = cx_left - cx_right`` of the two
  rectified P matrices, so that ``depth = f * t / disparity`` (stereo_image_proc's convention).
* ``f`` (right P fx, px), ``t`` (baseline = -P_right[0,3] / P_right[0,0]), ``delta_cx``,
  ``min_disparity`` / ``max_disparity`` (the backend's search range, in the same adjusted
  convention as ``disparity``), ``delta_d`` (1/16 for SGBM, 0 for the continuous network output),
  ``valid_window`` (x, y, width, height).
* ``depth`` float32 metres, NaN where the disparity is invalid or <= 0 or the depth is outside
  ``[min_depth, max_depth]`` (REP 118); ``points`` float32 (H, W, 3) x y z in the left rectified
  optical frame (x right, y down, z forward), NaN where depth is NaN; ``colors`` uint32
  ``0x00RRGGBB`` from ``left_rect``; ``disparity_color`` uint8 RGB colour map (if asked).
* ``left_rect`` / ``right_rect`` uint8 RGB: the images that were matched (rectified if
  ``rectified``); ``camera``: the :class:`CameraModel` of the rectified left image (K = P[:3,:3],
  D = 0, R = I) - the CameraInfo of depth, disparity and left_rect; ``right_camera`` likewise for
  ``right_rect`` (its P keeps ``-fx * baseline``); ``grey``: input was grey. With the geometry on
  the network's device, ``Outputs(rectified_images=False)`` leaves both images ``None`` and saves
  copying the rectified pair back from the GPU.
* ``timings``: seconds per stage ('decode', 'rectify', 'match', 'depth', 'points', 'colorize',
  'total'; with the geometry on the network's device also 'download', the one transfer back, which
  on a GPU includes waiting for the device).

Rectification (``rectify``): 'auto' remaps both images when either CameraInfo has non-zero
distortion or a non-identity R, 'always' remaps, 'never' passes images through (they must
already be rectified; P is used for geometry). Maps are computed once per calibration and cached.

Errors: every per-frame fault raises a :class:`FrameError` whose ``problem`` attribute is a
stable key (listed in :mod:`.errors`) for counting and reporting: bad input a
:class:`StereoInputError` (a ValueError) subclass - :class:`ImageDecodeError`,
:class:`CalibrationError`, :class:`PairMismatchError` -, and a network that runs out of memory
even at the smallest allowed resolution an :class:`InferenceMemoryError` (a RuntimeError).
``process_messages`` also checks that each image and its own CameraInfo name the same frame
(``check_frame_ids``), and that a compressed image decodes to its CameraInfo's size
(``compressed_size``). With ``Outputs(disparity_without_baseline=True)`` a calibration whose right
P[0,3] is 0 gives the disparity (``t`` 0) and no depth or points, ``result.depth_problem`` holding
the ``zero_baseline`` error; otherwise such a frame raises it.

Out of memory: the FoundationStereo backend retries a frame at half the resolution (down to
``oom_min_scale_factor * scale``) and returns to the configured scale when memory allows; the
result's ``network_scale`` and ``oom_retries`` say what happened (see :mod:`.backends`).
"""
from .backends import (BackendError, DisparityBackend, ExecutionModeError, FoundationStereoBackend, OnnxBackend,
                       SGBMBackend, is_out_of_memory, make_backend)
from .calibration import RECTIFY_MODES, CameraModel, StereoCalibration, camera_info_values, make_camera_model
from .config import PROCESSOR_PARAMETERS, SPECS, ParamSpec, ProcessorConfig, config_problems
from .compressed import decode_compressed, decode_compressed_msg, is_compressed
from .errors import (CalibrationError, CompressedImageError, FrameError, ImageDecodeError, InferenceMemoryError,
                     PairMismatchError, StereoInputError)
from .geometry import (PointProjector, colorize_disparity, depth_to_points, disparity_to_depth, pack_rgb,
                       project_points, unpack_rgb)
from .image import (ENCODINGS, DecodedPair, auto_max16, decode_image, decode_image_msg, decode_stereo_pair,
                    encoding_info, image_to_numpy, message_pixels, to_rgb8)
from .rectification import RectificationMaps, Rectifier, rectification_maps
from .processor import (ALL_OUTPUTS, BatchItem, MessageFrame, Outputs, PendingResult, StereoProcessor, StereoResult,
                        check_frame_ids)

__all__ = [
    "ALL_OUTPUTS", "BackendError", "BatchItem", "CalibrationError", "CameraModel", "CompressedImageError", "DecodedPair", "DisparityBackend", "ENCODINGS", "ExecutionModeError",
    "FoundationStereoBackend", "FrameError", "ImageDecodeError", "InferenceMemoryError", "MessageFrame", "OnnxBackend", "Outputs", "PROCESSOR_PARAMETERS", "PairMismatchError", "PendingResult",
    "ParamSpec", "PointProjector", "ProcessorConfig", "RECTIFY_MODES", "RectificationMaps", "Rectifier",
    "SGBMBackend", "SPECS", "StereoCalibration", "StereoInputError", "StereoProcessor", "StereoResult",
    "auto_max16", "camera_info_values", "check_frame_ids", "is_out_of_memory", "colorize_disparity", "config_problems", "decode_image",
    "decode_compressed", "decode_compressed_msg", "decode_image_msg", "decode_stereo_pair", "is_compressed",
    "message_pixels", "depth_to_points", "disparity_to_depth", "encoding_info",
    "image_to_numpy", "make_backend", "make_camera_model", "pack_rgb", "project_points", "rectification_maps",
    "to_rgb8", "unpack_rgb",
]
