"""Decoding sensor_msgs/Image fields into numpy, and into the RGB 8-bit form the matchers use.

Two steps, both pure functions of the message fields, so the node and the offline tools (which
read rosbags messages with the same field names) decode a frame identically:

* :func:`image_to_numpy` gives the pixels as they are: ``(H, W)`` or ``(H, W, C)`` of ``uint8``
  or ``uint16`` in the encoding's channel order, native byte order (big-endian 16-bit data is
  byte-swapped, as the message's ``is_bigendian`` says it should be read).
* :func:`to_rgb8` turns such an array into ``(H, W, 3)`` RGB ``uint8``: colour orders are
  swapped, alpha dropped, Bayer mosaics demosaiced with OpenCV, 4:2:2 YUV converted, grey
  replicated to three equal channels. 16-bit data (mono16, 16UC1 infrared, 16-bit Bayer/RGB) is
  scaled linearly so that ``max16`` maps to 255; :func:`decode_stereo_pair` picks one ``max16``
  for both images of a pair so that left and right keep the same brightness mapping.

:func:`message_pixels`, :func:`decode_image_msg` and :func:`decode_stereo_pair` also take
sensor_msgs/CompressedImage-like messages (JPEG, PNG), decoded by :mod:`.compressed`.

Every malformed message raises :class:`~.errors.ImageDecodeError` with a ``problem`` key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from .compressed import decode_compressed_msg, is_compressed
from .errors import ImageDecodeError, PairMismatchError


@dataclass(frozen=True)
class EncodingInfo:
    dtype: Any  # numpy dtype of one channel
    channels: int  # channels per pixel in the message layout (4:2:2 YUV counts 2 bytes as 2 channels)
    kind: str  # 'mono', 'rgb', 'bgr', 'rgba', 'bgra', 'bayer', 'yuv'
    cv_code: Optional[int] = None  # OpenCV conversion to RGB for Bayer and YUV

    @property
    def grey(self) -> bool:
        return self.kind == "mono"


def _bayer(pattern: str) -> int:
    # OpenCV names a Bayer pattern by the second row's 2nd and 3rd pixels, which is the ROS
    # pattern name read from the opposite corner: ROS 'rggb' (R at (0,0)) is OpenCV's 'BG'.
    opencv_name = {"rggb": "BG", "bggr": "RG", "gbrg": "GR", "grbg": "GB"}[pattern]
    return getattr(cv2, f"COLOR_Bayer{opencv_name}2RGB")


_U8, _U16 = np.dtype(np.uint8), np.dtype(np.uint16)

#: Encodings understood by the decoder (sensor_msgs/image_encodings names).
ENCODINGS: Dict[str, EncodingInfo] = {
    "mono8": EncodingInfo(_U8, 1, "mono"),
    "8UC1": EncodingInfo(_U8, 1, "mono"),
    "mono16": EncodingInfo(_U16, 1, "mono"),
    "16UC1": EncodingInfo(_U16, 1, "mono"),
    "rgb8": EncodingInfo(_U8, 3, "rgb"),
    "bgr8": EncodingInfo(_U8, 3, "bgr"),
    "8UC3": EncodingInfo(_U8, 3, "bgr"),  # cv_bridge's convention for untyped 3-channel data
    "rgba8": EncodingInfo(_U8, 4, "rgba"),
    "bgra8": EncodingInfo(_U8, 4, "bgra"),
    "8UC4": EncodingInfo(_U8, 4, "bgra"),
    "rgb16": EncodingInfo(_U16, 3, "rgb"),
    "bgr16": EncodingInfo(_U16, 3, "bgr"),
    "rgba16": EncodingInfo(_U16, 4, "rgba"),
    "bgra16": EncodingInfo(_U16, 4, "bgra"),
    # 4:2:2 YUV: 'yuv422' is UYVY in ROS, 'yuv422_yuy2' is YUYV.
    "yuv422": EncodingInfo(_U8, 2, "yuv", cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": EncodingInfo(_U8, 2, "yuv", cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": EncodingInfo(_U8, 2, "yuv", cv2.COLOR_YUV2RGB_YUYV),
    "yuyv": EncodingInfo(_U8, 2, "yuv", cv2.COLOR_YUV2RGB_YUYV),
}
for _p in ("rggb", "bggr", "gbrg", "grbg"):
    ENCODINGS[f"bayer_{_p}8"] = EncodingInfo(_U8, 1, "bayer", _bayer(_p))
    ENCODINGS[f"bayer_{_p}16"] = EncodingInfo(_U16, 1, "bayer", _bayer(_p))


#: Bytes per pixel of each supported encoding, and an example encoding of each size (for messages).
_BYTES_PER_PIXEL: Dict[int, str] = {}
for _name, _info in ENCODINGS.items():
    _BYTES_PER_PIXEL.setdefault(_info.channels * _info.dtype.itemsize, _name)

#: Row padding of at least this many bytes is not alignment padding (drivers align rows to at
#: most 64 bytes in practice), so together with a step that is exactly a dense row of a wider
#: encoding it reveals an encoding that names too few bytes per pixel.
WRONG_ENCODING_MIN_PADDING = 64


def encoding_info(encoding: str) -> EncodingInfo:
    """The layout of ``encoding``; :class:`ImageDecodeError` (``unknown_encoding``) if unsupported."""
    info = ENCODINGS.get(encoding)
    if info is None:
        raise ImageDecodeError("unknown_encoding",
                               f"unsupported image encoding {encoding!r}; supported: {', '.join(sorted(ENCODINGS))}")
    return info


def _as_bytes(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        # rclpy may hand back a list of ints when a message was built by hand.
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_numpy(encoding: str, height: int, width: int, step: int, is_bigendian: int, data: Any) -> np.ndarray:
    """The pixels of an Image message as ``(H, W)`` / ``(H, W, C)`` uint8 or uint16, native byte order.

    The result may share memory with ``data`` (a read-only view when ``data`` is ``bytes``);
    copy it before writing. Raises :class:`ImageDecodeError` for every malformed message.
    """
    height, width, step = int(height), int(width), int(step)
    info = encoding_info(encoding)
    if height <= 0 or width <= 0:
        raise ImageDecodeError("empty_image", f"image is {width}x{height} ({encoding}); nothing to decode")
    if info.kind == "yuv" and width % 2:
        raise ImageDecodeError("bad_width", f"{encoding} needs an even width, got {width}")
    item = info.dtype.itemsize
    row_bytes = width * info.channels * item
    if step < row_bytes:
        raise ImageDecodeError("bad_step", f"step {step} is shorter than one row of {width} {encoding} pixels "
                                           f"({row_bytes} bytes)")
    padding = step - row_bytes
    if padding >= WRONG_ENCODING_MIN_PADDING and step % width == 0:
        actual = step // width
        if actual in _BYTES_PER_PIXEL and actual > info.channels * item:
            raise ImageDecodeError(
                "wrong_encoding", f"step {step} is exactly a dense row of {width} pixels of {actual} bytes "
                                  f"(like {_BYTES_PER_PIXEL[actual]}), but {encoding} has {info.channels * item} "
                                  f"byte(s) per pixel and {padding} bytes of row padding are not alignment: "
                                  f"the encoding field is probably wrong")
    raw = _as_bytes(data)
    if raw.size != step * height:
        raise ImageDecodeError("data_size", f"data has {raw.size} bytes, expected step * height = "
                                            f"{step} * {height} = {step * height}")
    rows = raw.reshape(height, step)[:, :row_bytes]
    dtype = info.dtype.newbyteorder(">" if is_bigendian else "<") if item > 1 else info.dtype
    if item > 1:
        # Padded or odd-step rows cannot be viewed as 16-bit by every numpy version; IR images
        # are small, so one copy is cheap.
        rows = np.ascontiguousarray(rows)
    pixels = rows.view(dtype)  # (H, W*C)
    if item > 1 and not dtype.isnative:
        pixels = pixels.astype(dtype.newbyteorder("="))
    if info.channels == 1:
        return pixels.reshape(height, width)
    if info.kind == "yuv":
        return pixels.reshape(height, width, 2)
    return pixels.reshape(height, width, info.channels)


def auto_max16(*images: np.ndarray) -> float:
    """The 16-bit value mapped to 255: 99.9th percentile of the (subsampled) images, at least 1.

    A percentile rather than the maximum keeps a few saturated projector dots or hot pixels from
    darkening the whole infrared image.
    """
    samples = np.concatenate([im[::4, ::4].reshape(-1) for im in images])
    if not samples.size:
        return 1.0
    k = int(0.999 * (samples.size - 1))  # the sample at or below the percentile: no interpolation
    return float(max(np.partition(samples, k)[k], 1))


def to_rgb8(pixels: np.ndarray, encoding: str, max16: Optional[float] = None, alpha: bool = False) -> np.ndarray:
    """``(H, W, 3)`` RGB uint8 from :func:`image_to_numpy` output (a new, contiguous array);
    ``alpha``: ``(H, W, 4)`` RGBA instead (the input of the host's rectification, which remaps
    four-channel images fastest and drops the alpha channel again), written in the same single
    pass for 8-bit encodings.

    16-bit data is scaled by ``255 / max16`` and clipped; ``max16=None`` picks it from this
    image alone (:func:`auto_max16`); a stereo pair should share one value.
    """
    info = encoding_info(encoding)
    if info.dtype == _U16:
        if max16 is None:
            max16 = auto_max16(pixels)
        if not np.isfinite(max16) or max16 <= 0:
            raise ValueError(f"max16 must be a positive finite number, got {max16}")
        if info.kind == "bayer":
            # Demosaic at 16 bits (OpenCV supports it) before scaling so rounding does not
            # disturb the interpolation.
            pixels = cv2.cvtColor(np.ascontiguousarray(pixels), info.cv_code)
            info = ENCODINGS["rgb16"]
        pixels = cv2.convertScaleAbs(np.ascontiguousarray(pixels), alpha=255.0 / max16)
    pixels = np.ascontiguousarray(pixels)
    kind = info.kind
    if kind in ("bayer", "yuv"):
        rgb = cv2.cvtColor(pixels, info.cv_code)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA) if alpha else rgb
    if alpha:
        if kind == "rgba":
            return pixels.copy()  # the input may be a read-only view of the message buffer
        return cv2.cvtColor(pixels, _TO_RGBA[kind])
    if kind == "rgb":
        return pixels.copy()  # the input may be a read-only view of the message buffer
    return cv2.cvtColor(pixels, _TO_RGB[kind])


_TO_RGB = {"mono": cv2.COLOR_GRAY2RGB, "bgr": cv2.COLOR_BGR2RGB, "rgba": cv2.COLOR_RGBA2RGB, "bgra": cv2.COLOR_BGRA2RGB}
_TO_RGBA = {"mono": cv2.COLOR_GRAY2RGBA, "rgb": cv2.COLOR_RGB2RGBA, "bgr": cv2.COLOR_BGR2RGBA,
            "bgra": cv2.COLOR_BGRA2RGBA}


def decode_image(encoding: str, height: int, width: int, step: int, is_bigendian: int, data: Any,
                 max16: Optional[float] = None) -> np.ndarray:
    """Image message fields -> ``(H, W, 3)`` RGB uint8 (see :func:`to_rgb8` for 16-bit scaling)."""
    return to_rgb8(image_to_numpy(encoding, height, width, step, is_bigendian, data), encoding, max16)


def image_fields(msg: Any) -> Tuple[str, int, int, int, int, Any]:
    """(encoding, height, width, step, is_bigendian, data) of any Image-like object (rclpy, rosbags)."""
    return msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data


def message_pixels(msg: Any, expected_size: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, str]:
    """``(pixels, encoding)`` of an Image-like or CompressedImage-like object (rclpy, rosbags): the
    pixels as :func:`image_to_numpy` gives them and the encoding they are in.

    ``expected_size`` (width, height, from the CameraInfo) is checked for compressed images only
    (``compressed_size``), whose size is known only once decoded; a raw image's size is checked
    against its calibration by the processor (``calibration_mismatch``).
    """
    if is_compressed(msg):
        return decode_compressed_msg(msg, expected_size)
    return image_to_numpy(*image_fields(msg)), msg.encoding


def decode_image_msg(msg: Any, max16: Optional[float] = None) -> np.ndarray:
    """:func:`decode_image` on an Image-like or CompressedImage-like object."""
    pixels, encoding = message_pixels(msg)
    return to_rgb8(pixels, encoding, max16)


@dataclass(frozen=True)
class DecodedPair:
    """A stereo pair ready for matching: RGB uint8 images of equal size (RGBA when decoded for the
    host's rectification, ``decode_stereo_pair(..., alpha=True)``)."""

    left: np.ndarray  # (H, W, 3) uint8 RGB, or (H, W, 4) RGBA
    right: np.ndarray  # (H, W, 3) uint8 RGB, or (H, W, 4) RGBA
    grey: bool  # True when the camera gave grey (mono/IR) images: the three channels are equal


def decode_stereo_pair(left_msg: Any, right_msg: Any, expected_size: Optional[Tuple[int, int]] = None,
                       alpha: bool = False) -> DecodedPair:
    """Decode both images of a pair with one 16-bit scale; checks that they belong together.

    Each message may be an Image or a CompressedImage (see :func:`message_pixels`, also for
    ``expected_size``). ``alpha``: RGBA images (see :func:`to_rgb8`). Raises
    :class:`ImageDecodeError` for a malformed image and :class:`PairMismatchError` when the sizes
    differ or one image is grey and the other colour.
    """
    left, l_enc = message_pixels(left_msg, expected_size)
    right, r_enc = message_pixels(right_msg, expected_size)
    if left.shape[:2] != right.shape[:2]:
        raise PairMismatchError("size_mismatch", f"left image is {left.shape[1]}x{left.shape[0]}, right image is "
                                                 f"{right.shape[1]}x{right.shape[0]}; they must have the same size")
    l_info, r_info = ENCODINGS[l_enc], ENCODINGS[r_enc]
    if l_info.grey != r_info.grey or l_info.dtype != r_info.dtype:
        raise PairMismatchError("encoding_mismatch", f"left encoding {l_enc!r} and right encoding {r_enc!r} differ "
                                                     f"in kind (grey/colour or bit depth)")
    max16 = auto_max16(left, right) if l_info.dtype == _U16 else None
    return DecodedPair(to_rgb8(left, l_enc, max16, alpha), to_rgb8(right, r_enc, max16, alpha), l_info.grey)
