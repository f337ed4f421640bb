"""CompressedImage decoding (pipeline/compressed.py): the format strings compressed_image_transport
writes, lossless PNG (8 and 16 bit), JPEG, and a problem key for every damaged message - above all a
truncated JPEG, which some OpenCV builds decode into a grey-filled picture instead of failing."""
from __future__ import annotations

import array
import types

import cv2
import numpy as np
import pytest

from foundation_stereo_ros.pipeline import (CompressedImageError, DecodedPair, ImageDecodeError, Outputs,
                                            PairMismatchError, ProcessorConfig, StereoProcessor, decode_compressed,
                                            decode_image_msg, decode_stereo_pair, is_compressed, message_pixels)
from foundation_stereo_ros.pipeline.calibration import camera_info_values, rectified_pair
from foundation_stereo_ros.pipeline.compressed import parse_format

RNG = np.random.default_rng(3)
H, W = 40, 56
RGB = cv2.GaussianBlur(RNG.integers(0, 256, (H, W, 3), dtype=np.uint8), (3, 3), 0)


def encode(ext: str, pixels: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, pixels, list(params))
    assert ok
    return buf.tobytes()


def cmsg(fmt: str, data, frame_id: str = "") -> types.SimpleNamespace:
    """A CompressedImage-like object (header, format, data), as rosbags and rclpy messages are."""
    return types.SimpleNamespace(header=types.SimpleNamespace(frame_id=frame_id), format=fmt, data=data)


def raw_msg(rgb: np.ndarray) -> types.SimpleNamespace:
    return types.SimpleNamespace(header=types.SimpleNamespace(frame_id=""), encoding="rgb8", height=rgb.shape[0],
                                 width=rgb.shape[1], step=rgb.shape[1] * 3, is_bigendian=0, data=rgb.tobytes())


def problem_of(fmt: str, data, expected_size=None) -> str:
    with pytest.raises(CompressedImageError) as e:
        decode_compressed(fmt, data, expected_size)
    assert isinstance(e.value, ImageDecodeError) and isinstance(e.value, ValueError)
    return e.value.problem


JPEG = encode(".jpg", RGB[..., ::-1], cv2.IMWRITE_JPEG_QUALITY, 95)
PNG = encode(".png", RGB[..., ::-1])


# ------------------------------------------------------------------------------ format strings
@pytest.mark.parametrize("fmt,codec,source", [
    # compressed_image_transport's publisher (image_transport_plugins 7404d772, rolling / Jazzy):
    ("rgb8; jpeg compressed bgr8", "jpeg", "rgb8"),
    ("mono16; jpeg compressed mono8", "jpeg", "mono16"),
    ("bgr8; png compressed bgr8", "png", "bgr8"),
    ("rgb16; png compressed bgr16", "png", "rgb16"),
    ("mono16; png compressed ", "png", "mono16"),  # grey: no target format, trailing space
    ("16UC1; png compressed", "png", "16UC1"),
    # older publishers and other tools: a bare codec name
    ("jpeg", "jpeg", ""), ("png", "png", ""), ("JPEG", "jpeg", ""), ("jpg", "jpeg", ""),
])
def test_format_strings_of_compressed_image_transport_and_bare_names(fmt, codec, source):
    parsed = parse_format(fmt)
    assert (parsed.codec, parsed.source_encoding) == (codec, source)


@pytest.mark.parametrize("fmt", ["", "tiff", "rgb8; tiff compressed ", "h264", "rgb8",
                                 "16UC1; compressedDepth png", "32FC1; compressedDepth rvl", "compressedDepth"])
def test_unknown_formats_and_compressed_depth_are_refused(fmt):
    assert problem_of(fmt, JPEG) == "compressed_format"


def test_compressed_depth_is_named_in_the_reason():
    with pytest.raises(CompressedImageError, match="compressedDepth"):
        decode_compressed("16UC1; compressedDepth png", PNG)


# ------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize("data_type", ["bytes", "array", "numpy", "list"])
def test_png_is_lossless_whatever_holds_the_data(data_type):
    data = {"bytes": PNG, "array": array.array("B", PNG), "numpy": np.frombuffer(PNG, np.uint8),
            "list": list(PNG)}[data_type]
    pixels, encoding = message_pixels(cmsg("rgb8; png compressed bgr8", data))
    assert encoding == "bgr8"
    np.testing.assert_array_equal(pixels, RGB[..., ::-1])
    np.testing.assert_array_equal(decode_image_msg(cmsg("rgb8; png compressed bgr8", data)), RGB)


def test_16bit_png_keeps_its_values_and_its_encoding():
    ir = RNG.integers(0, 4096, (H, W), dtype=np.uint16)
    pixels, encoding = decode_compressed("16UC1; png compressed ", encode(".png", ir))
    assert encoding == "16UC1" and pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, ir)
    colour16 = RNG.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    pixels, encoding = decode_compressed("rgb16; png compressed bgr16", encode(".png", colour16))
    assert encoding == "bgr16"
    np.testing.assert_array_equal(pixels, colour16)


def test_png_keeps_a_bayer_mosaic_and_jpeg_gives_grey():
    mosaic = RGB[..., 1].copy()
    assert decode_compressed("bayer_rggb8; png compressed ", encode(".png", mosaic))[1] == "bayer_rggb8"
    assert decode_compressed("mono8; jpeg compressed mono8", encode(".jpg", mosaic))[1] == "mono8"
    assert decode_compressed("png", encode(".png", mosaic))[1] == "mono8"


def test_jpeg_decodes_close_to_the_original():
    smooth = cv2.GaussianBlur(RGB, (0, 0), 2.0)  # JPEG halves the colour resolution: no colour noise
    pixels, encoding = decode_compressed("rgb8; jpeg compressed bgr8", encode(".jpg", smooth[..., ::-1]))
    assert encoding == "bgr8" and pixels.shape == (H, W, 3)
    assert np.abs(pixels.astype(int) - smooth[..., ::-1]).mean() < 3


@pytest.mark.parametrize("params", [(), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), (cv2.IMWRITE_JPEG_RST_INTERVAL, 2)])
def test_progressive_and_restart_marker_jpegs_pass_the_structure_check(params):
    data = encode(".jpg", RGB, *params)
    assert decode_compressed("jpeg", data)[0].shape == (H, W, 3)
    assert decode_compressed("jpeg", data + b"\x00\x00")[0].shape == (H, W, 3)  # padding after EOI is harmless


def test_is_compressed_tells_the_two_message_kinds_apart():
    assert is_compressed(cmsg("jpeg", JPEG)) and not is_compressed(raw_msg(RGB))


# ------------------------------------------------------------------------------ damaged data
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -2, -1])
def test_truncated_jpeg_is_truncated_never_a_grey_picture(keep):
    cut = int(len(JPEG) * keep) if keep > 0 else len(JPEG) + keep
    assert problem_of("rgb8; jpeg compressed bgr8", JPEG[:cut]) == "compressed_truncated"


@pytest.mark.parametrize("cut", [20, 100, len(PNG) // 2, len(PNG) - 12, len(PNG) - 1])
def test_truncated_png(cut):
    assert problem_of("png", PNG[:cut]) == "compressed_truncated"


def test_no_data_is_truncated():
    assert problem_of("jpeg", b"") == "compressed_truncated"


def test_corrupt_data():
    broken_header = bytearray(JPEG)
    broken_header[2:40] = bytes(38)  # the segments after SOI are gone
    assert problem_of("jpeg", bytes(broken_header)) == "compressed_corrupt"
    bad_marker = bytearray(JPEG)
    bad_marker[len(JPEG) - 2: len(JPEG) - 2] = b"\xff\x05"  # a reserved marker where EOI should follow the scan
    assert problem_of("jpeg", bytes(bad_marker)) == "compressed_corrupt"
    bad_crc = bytearray(PNG)
    bad_crc[len(PNG) // 2] ^= 0xFF  # inside IDAT: its CRC no longer matches
    assert problem_of("png", bytes(bad_crc)) == "compressed_corrupt"
    assert problem_of("jpeg", PNG) == "compressed_corrupt"  # the format says jpeg, the data is a PNG
    assert problem_of("png", JPEG) == "compressed_corrupt"
    assert problem_of("jpeg", RNG.integers(0, 256, 500, dtype=np.uint8).tobytes()) == "compressed_corrupt"


def test_size_other_than_the_camera_info_is_refused_before_decoding(monkeypatch):
    assert problem_of("jpeg", JPEG, (W * 2, H)) == "compressed_size"
    assert problem_of("png", PNG, (W, H + 1)) == "compressed_size"
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded although the header size is wrong"))
    assert problem_of("png", PNG, (W, H + 1)) == "compressed_size"


# ------------------------------------------------------------------------------ pairs and the processor
def test_stereo_pair_of_compressed_and_raw_images():
    pair = decode_stereo_pair(cmsg("rgb8; png compressed bgr8", PNG), raw_msg(RGB), expected_size=(W, H))
    np.testing.assert_array_equal(pair.left, RGB)
    np.testing.assert_array_equal(pair.right, RGB)
    with pytest.raises(PairMismatchError) as e:
        decode_stereo_pair(cmsg("png", PNG), cmsg("mono8; png compressed ", encode(".png", RGB[..., 0])))
    assert e.value.problem == "encoding_mismatch"
    with pytest.raises(CompressedImageError) as e:
        decode_stereo_pair(cmsg("png", PNG), cmsg("png", PNG[:-12]))
    assert e.value.problem == "compressed_truncated"


def infos(width: int, height: int):
    calib = rectified_pair(80.0, width / 2, height / 2, 0.1, width, height)
    return tuple(types.SimpleNamespace(header=types.SimpleNamespace(frame_id=""), binning_x=0, binning_y=0, roi=None,
                                       **camera_info_values(cam)) for cam in (calib.left, calib.right))


def test_processor_gives_the_same_disparity_from_png_as_from_raw_images(opencv_data):
    left = cv2.resize(cv2.imread(str(opencv_data / "aloeL.jpg")), None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    right = cv2.resize(cv2.imread(str(opencv_data / "aloeR.jpg")), None, fx=0.25, fy=0.25,
                       interpolation=cv2.INTER_AREA)
    h, w = left.shape[:2]
    proc = StereoProcessor(ProcessorConfig(backend="sgbm", sgbm_num_disparities=64))
    raw = proc.process_messages(raw_msg(left[..., ::-1].copy()), raw_msg(right[..., ::-1].copy()), *infos(w, h))
    png = proc.process_messages(cmsg("rgb8; png compressed bgr8", encode(".png", left)),
                                cmsg("rgb8; png compressed bgr8", encode(".png", right)), *infos(w, h))
    assert np.isfinite(raw.disparity).mean() > 0.5
    np.testing.assert_array_equal(png.disparity, raw.disparity)
    np.testing.assert_array_equal(png.depth, raw.depth)
    with pytest.raises(CompressedImageError) as e:
        proc.process_messages(cmsg("png", encode(".png", left[:-2])), cmsg("png", encode(".png", right[:-2])),
                              *infos(w, h))
    assert e.value.problem == "compressed_size"


def test_decoded_pair_type_is_unchanged():
    pair = decode_stereo_pair(cmsg("png", PNG), cmsg("png", PNG))
    assert isinstance(pair, DecodedPair) and not pair.grey
    grey = encode(".png", RGB[..., 0])
    assert decode_stereo_pair(cmsg("png", grey), cmsg("png", grey)).grey


def test_outputs_default_keeps_refusing_a_zero_baseline():
    assert Outputs().disparity_without_baseline is False


def test_random_damage_is_a_compressed_problem_or_a_picture_never_a_crash():
    rng = np.random.default_rng(11)
    problems = set()
    for codec, data in (("jpeg", JPEG), ("png", PNG)) * 150:
        b = bytearray(data)
        kind = rng.integers(3)
        if kind == 0:
            b = b[: rng.integers(1, len(b))]
        elif kind == 1:
            pos = rng.integers(0, len(b))
            b[pos: pos + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        else:
            pos = rng.integers(0, len(b))
            b[pos:pos] = rng.integers(0, 256, rng.integers(1, 16), dtype=np.uint8).tobytes()
        try:
            pixels, _ = decode_compressed(codec, bytes(b), (W, H))
            assert pixels.shape[:2] == (H, W)
        except CompressedImageError as e:
            problems.add(e.problem)
    assert {"compressed_truncated", "compressed_corrupt"} <= problems <= {"compressed_truncated", "compressed_corrupt",
                                                                          "compressed_size"}


def test_an_absurd_header_size_is_refused_without_allocating_it():
    huge = bytearray(PNG)
    huge[16:24] = (200000).to_bytes(4, "big") * 2  # 200000 x 200000 pixels, CRC now wrong too
    assert problem_of("png", bytes(huge), (W, H)) == "compressed_size"
    assert problem_of("png", bytes(huge)) == "compressed_corrupt"
