"""Decoding sensor_msgs/CompressedImage (image_transport's ``compressed`` transport) into pixels.

A Python node cannot load image_transport plugins, so the pipeline decodes compressed images
itself, in the worker thread, for the node and the offline tools alike. Everything here is duck-typed
on the message's ``format`` and ``data`` fields, so rclpy and rosbags messages decode identically.

Format strings (what ``compressed_image_transport``'s publisher writes, checked in
ros-perception/image_transport_plugins ``compressed_image_transport/src/compressed_publisher.cpp``
at commit 7404d772b66f, branch rolling, 3.2.0+9, from which Jazzy's 4.0 branched):
``"<encoding>; jpeg compressed bgr8"`` (colour, any bit depth, converted to 8-bit BGR),
``"<encoding>; jpeg compressed mono8"`` (grey), ``"<encoding>; png compressed bgr8"`` /
``"...bgr16"`` (colour, bit depth kept) and ``"<encoding>; png compressed "`` (grey and Bayer: the
pixels as they were, 8 or 16 bit). Older publishers and other tools write a bare ``"jpeg"`` or
``"png"``; both are read. ``tiff`` and the ``compressedDepth`` transport (a depth-image codec with
a quantisation header) are refused with ``compressed_format``.

OpenCV decodes (``IMREAD_UNCHANGED``: no EXIF rotation, bit depth kept). Before that, the data
is checked, so that a damaged image is a skipped frame and never silently wrong depth:

* ``compressed_truncated``: no data, or the data ends before the JPEG end-of-image marker or the
  PNG ``IEND`` chunk (some OpenCV builds decode a truncated JPEG into a grey-filled picture);
* ``compressed_corrupt``: data that is not the codec the format names, a JPEG whose marker
  structure is broken, or data OpenCV cannot decode (PNG chunks carry CRCs, so damaged PNG data is
  caught here). JPEG has no checksum: bytes changed inside its entropy-coded data, with the marker
  structure intact, decode to a wrong picture that no decoder can detect;
* ``compressed_format``: a format string that names no supported codec;
* ``compressed_size``: the image header gives another size than the CameraInfo (checked before
  decoding, so an absurd header costs nothing).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import cv2
import numpy as np

from .errors import CompressedImageError

CODECS = ("jpeg", "png")
_CODEC_NAMES = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}

_JPEG_SOI = b"\xff\xd8"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk: length 0, type, CRC
# Start-of-frame markers (they carry the image size): C0-CF except DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Inside entropy-coded data 0xFF is followed by 0x00 (stuffing), a restart marker (D0-D7) or more
# 0xFF (fill); anything else is the marker that ends the scan.
_JPEG_SCAN_END = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
_GREY_BITS = {"mono8": 8, "8UC1": 8, "mono16": 16, "16UC1": 16}


@dataclass(frozen=True)
class CompressedFormat:
    """A parsed ``CompressedImage.format``."""

    codec: str  # 'jpeg' | 'png'
    source_encoding: str  # encoding of the image before compression; '' when the format does not say


def is_compressed(msg: Any) -> bool:
    """Whether ``msg`` looks like a sensor_msgs/CompressedImage (``format`` and ``data``, no ``encoding``)."""
    return hasattr(msg, "format") and hasattr(msg, "data") and not hasattr(msg, "encoding")


def parse_format(fmt: str) -> CompressedFormat:
    """The codec and source encoding of a format string; ``compressed_format`` when unsupported."""
    text = str(fmt or "").strip()
    if "compresseddepth" in text.lower():
        raise CompressedImageError(
            "compressed_format", f"format {text!r} is image_transport's compressedDepth transport (depth images "
                                 f"with a quantisation header), not a camera image: subscribe to the camera's "
                                 f"'compressed' topic, or to the raw images with image_transport 'raw'")
    source, sep, rest = text.partition(";")
    if not sep:  # older publishers: a bare codec name
        source, rest = "", text
    words = rest.split()
    codec = _CODEC_NAMES.get(words[0].lower()) if words else None
    if codec is None:
        raise CompressedImageError("compressed_format", f"compressed image format {text!r} names no supported codec "
                                                        f"(jpeg or png, e.g. 'rgb8; jpeg compressed bgr8')")
    return CompressedFormat(codec, source.strip())


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8).tobytes()
    return bytes(data)  # array.array('B') (rclpy), bytearray, memoryview, a list of ints


def _jpeg_truncated(n: int) -> CompressedImageError:
    return CompressedImageError("compressed_truncated", f"JPEG data ends after {n} bytes without its end-of-image "
                                                        f"marker: truncated")


def _jpeg_size(data: bytes) -> Tuple[int, int]:
    """(width, height) from the frame header, after walking the marker structure to the
    end-of-image marker; raises ``compressed_truncated`` / ``compressed_corrupt``."""
    n, pos = len(data), 2  # after SOI
    size: Optional[Tuple[int, int]] = None
    scanned = False
    while True:
        if pos >= n:
            raise _jpeg_truncated(n)
        if data[pos] != 0xFF:
            raise CompressedImageError("compressed_corrupt", f"JPEG data has no marker at byte {pos} "
                                                             f"(0x{data[pos]:02x}): corrupt")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise _jpeg_truncated(n)
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            if size is None or not scanned:
                raise CompressedImageError("compressed_corrupt", "JPEG end-of-image marker before any image data")
            return size
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no segment
            continue
        if marker < 0xC0 or marker == 0xD8:  # stuffing, reserved markers, a second start-of-image
            raise CompressedImageError("compressed_corrupt", f"JPEG data has an invalid marker 0xff{marker:02x} "
                                                             f"at byte {pos - 1}: corrupt")
        if pos + 2 > n:
            raise _jpeg_truncated(n)
        end = pos + ((data[pos] << 8) | data[pos + 1])
        if end < pos + 2:
            raise CompressedImageError("compressed_corrupt", f"JPEG segment 0xff{marker:02x} at byte {pos - 1} "
                                                             f"has an invalid length: corrupt")
        if end > n:
            raise CompressedImageError("compressed_truncated", f"JPEG data ends inside segment 0xff{marker:02x} "
                                                               f"({end - n} bytes missing): truncated")
        if marker in _JPEG_SOF:
            if end - pos < 7:
                raise CompressedImageError("compressed_corrupt", "JPEG frame header is too short: corrupt")
            height, width = struct.unpack(">HH", data[pos + 3: pos + 7])
            size = (width, height)
        pos = end
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            if size is None:
                raise CompressedImageError("compressed_corrupt", "JPEG scan before its frame header: corrupt")
            found = _JPEG_SCAN_END.search(data, pos)
            if found is None:
                raise _jpeg_truncated(n)
            pos = found.end() - 2  # the 0xFF before the marker
            scanned = True


def _png_size(data: bytes) -> Tuple[int, int]:
    """(width, height) from IHDR, after checking that the data reaches IEND."""
    if len(data) < 33:  # signature + IHDR chunk
        raise CompressedImageError("compressed_truncated", f"PNG data has only {len(data)} bytes: truncated")
    if data[12:16] != b"IHDR":
        raise CompressedImageError("compressed_corrupt", "PNG data does not start with its IHDR chunk: corrupt")
    if data.rfind(_PNG_IEND, 33) < 0:
        raise CompressedImageError("compressed_truncated", f"PNG data ends after {len(data)} bytes without its "
                                                           f"IEND chunk: truncated")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _decoded_encoding(pixels: np.ndarray, fmt: CompressedFormat) -> str:
    """The sensor_msgs encoding of what OpenCV decoded (grey, BGR or BGRA; 8 or 16 bit)."""
    bits = 16 if pixels.dtype == np.uint16 else 8
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels == 1:
        source = fmt.source_encoding
        # PNG keeps grey and Bayer images as they were (JPEG turns them into mono8).
        source_bits = (16 if source.endswith("16") else 8) if source.startswith("bayer_") else _GREY_BITS.get(source)
        if fmt.codec == "png" and source_bits == bits:
            return source
        return f"mono{bits}"
    if channels == 3:
        return f"bgr{bits}"
    if channels == 4:
        return f"bgra{bits}"
    raise CompressedImageError("compressed_corrupt", f"{fmt.codec} image decoded to {channels} channels")


def decode_compressed(fmt: str, data: Any, expected_size: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, str]:
    """``(pixels, encoding)`` of a compressed image: pixels ``(H, W)`` or ``(H, W, C)`` uint8 or
    uint16 and the sensor_msgs encoding they are in (``mono8``, ``bgr8``, ``mono16``, ``bgr16``, a
    Bayer encoding kept by PNG ...), ready for :func:`~.image.to_rgb8`.

    ``expected_size``: (width, height) the CameraInfo gives; another size in the image header raises
    ``compressed_size``. Raises :class:`CompressedImageError` for everything listed in the module doc.
    """
    parsed = parse_format(fmt)
    raw = _as_bytes(data)
    if not raw:
        raise CompressedImageError("compressed_truncated", f"{parsed.codec} image has no data")
    if parsed.codec == "jpeg":
        signature_ok = raw.startswith(_JPEG_SOI)
    else:
        signature_ok = raw.startswith(_PNG_SIGNATURE)
    if not signature_ok:
        looks = ("a PNG" if raw.startswith(_PNG_SIGNATURE) else "a JPEG" if raw.startswith(_JPEG_SOI)
                 else f"neither (first bytes {raw[:4].hex()})")
        raise CompressedImageError("compressed_corrupt", f"format {fmt!r} says {parsed.codec}, but the data is {looks}")
    width, height = _jpeg_size(raw) if parsed.codec == "jpeg" else _png_size(raw)
    if expected_size is not None and height and (width, height) != tuple(expected_size):
        raise CompressedImageError("compressed_size", f"{parsed.codec} image is {width}x{height} but its camera_info "
                                                      f"is for {expected_size[0]}x{expected_size[1]}")
    try:
        pixels = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise CompressedImageError("compressed_corrupt", f"{parsed.codec} data cannot be decoded: "
                                                         f"{str(e).strip().splitlines()[-1]}") from None
    if pixels is None or pixels.size == 0:
        raise CompressedImageError("compressed_corrupt", f"{parsed.codec} data cannot be decoded: corrupt")
    if pixels.shape[1] != width or (height and pixels.shape[0] != height):
        raise CompressedImageError("compressed_corrupt", f"{parsed.codec} image decoded to {pixels.shape[1]}x"
                                                         f"{pixels.shape[0]}, its header says {width}x{height}")
    if expected_size is not None and (pixels.shape[1], pixels.shape[0]) != tuple(expected_size):
        raise CompressedImageError("compressed_size", f"{parsed.codec} image is {pixels.shape[1]}x{pixels.shape[0]} "
                                                      f"but its camera_info is for {expected_size[0]}x"
                                                      f"{expected_size[1]}")
    return pixels, _decoded_encoding(pixels, parsed)


def decode_compressed_msg(msg: Any, expected_size: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, str]:
    """:func:`decode_compressed` of a CompressedImage-like object (rclpy or rosbags)."""
    return decode_compressed(msg.format, msg.data, expected_size)


__all__ = ["CODECS", "CompressedFormat", "decode_compressed", "decode_compressed_msg", "is_compressed",
           "parse_format"]


# ------------------------------------------------------------------------------------ encoding

_COMPRESSIBLE = {"rgb8": cv2.COLOR_RGB2BGR, "bgr8": None, "mono8": None}  # -> what cv2.imencode takes


def compress_image(array: np.ndarray, encoding: str, codec: str = "jpeg", jpeg_quality: int = 95,
                   png_level: int = 3) -> Tuple[str, bytes]:
    """(``format``, ``data``) of a sensor_msgs/CompressedImage of an rgb8, bgr8 or mono8 image,
    as compressed_image_transport's publisher writes them (defaults: its ``jpeg_quality`` 95 and
    ``png_level`` 3). Its format names the source encoding, the codec and what the codec holds:
    colour is compressed as BGR, "rgb8; jpeg compressed bgr8"; grey JPEG as "mono8; jpeg compressed
    mono8"; grey PNG keeps the source encoding and leaves the target empty, "mono8; png compressed "
    with its trailing space (compressed_publisher.cpp, github:ros-perception/image_transport_plugins
    rolling at commit 7404d772b66f586f5f56e568671ae20e8a64bc7e)."""
    if codec not in CODECS:
        raise ValueError(f"compression must be one of {CODECS}, got {codec!r}")
    if encoding not in _COMPRESSIBLE:
        raise ValueError(f"compressed images must be one of {sorted(_COMPRESSIBLE)}, got {encoding!r}")
    pixels = np.ascontiguousarray(np.asarray(array, dtype=np.uint8))
    grey = encoding == "mono8"
    if pixels.ndim != (2 if grey else 3) or (not grey and pixels.shape[2] != 3):
        raise ValueError(f"a {encoding} image must be {'(H, W)' if grey else '(H, W, 3)'}, got {pixels.shape}")
    if _COMPRESSIBLE[encoding] is not None:
        pixels = cv2.cvtColor(pixels, _COMPRESSIBLE[encoding])
    if codec == "jpeg":
        target, ext, params = ("mono8" if grey else "bgr8"), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    else:
        target, ext, params = ("" if grey else "bgr8"), ".png", [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)]
    ok, data = cv2.imencode(ext, pixels, params)
    if not ok:
        raise ValueError(f"OpenCV cannot encode this {encoding} image as {codec}")
    return f"{encoding}; {codec} compressed {target}", data.tobytes()
