"""Image decoding: every encoding to RGB uint8, and a documented error for every malformed message."""
from __future__ import annotations

import types

import cv2
import numpy as np
import pytest

from foundation_stereo_ros.pipeline import (ENCODINGS, ImageDecodeError, PairMismatchError, auto_max16,
                                            decode_image, decode_stereo_pair, image_to_numpy, to_rgb8)

RNG = np.random.default_rng(1)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)


def msg(encoding: str, array: np.ndarray, step: int = None, bigendian: bool = False, pad: int = 0):
    """An Image-like object whose data is ``array`` rows, optionally padded at the end of each row."""
    a = np.ascontiguousarray(array)
    if bigendian:
        a = a.astype(a.dtype.newbyteorder(">"))
    rows = a.reshape(a.shape[0], -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return types.SimpleNamespace(encoding=encoding, height=a.shape[0], width=a.shape[1],
                                 step=step if step is not None else rows.shape[1], is_bigendian=int(bigendian),
                                 data=rows.tobytes())


def decode(m, max16=None):
    return decode_image(m.encoding, m.height, m.width, m.step, m.is_bigendian, m.data, max16=max16)


@pytest.mark.parametrize("encoding,make", [
    ("rgb8", lambda c: c),
    ("bgr8", lambda c: c[..., ::-1]),
    ("8UC3", lambda c: c[..., ::-1]),
    ("rgba8", lambda c: np.dstack([c, np.full(c.shape[:2], 7, np.uint8)])),
    ("bgra8", lambda c: np.dstack([c[..., ::-1], np.full(c.shape[:2], 7, np.uint8)])),
])
@pytest.mark.parametrize("pad", [0, 5])
def test_colour_encodings_decode_to_rgb(encoding, make, pad):
    out = decode(msg(encoding, make(RGB), pad=pad))
    assert out.dtype == np.uint8 and out.shape == RGB.shape
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_grey_is_replicated_to_three_equal_channels(encoding):
    grey = RGB[..., 1]
    out = decode(msg(encoding, grey, pad=3))
    assert out.shape == grey.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_16bit_ir_scaled_to_8bit_grey(encoding, bigendian):
    ir = np.array([[0, 100, 200, 400], [800, 1000, 1023, 2000]], np.uint16)  # 10-bit data + a hot pixel
    out = decode(msg(encoding, ir, bigendian=bigendian), max16=1000.0)
    expected = np.clip(np.round(ir.astype(np.float64) * 255.0 / 1000.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_big_endian_16bit_reads_as_the_same_values():
    ir = RNG.integers(0, 65535, (5, 7), dtype=np.uint16)
    little = image_to_numpy(**vars_of(msg("mono16", ir)))
    big = image_to_numpy(**vars_of(msg("mono16", ir, bigendian=True)))
    np.testing.assert_array_equal(little, ir)
    np.testing.assert_array_equal(big, ir)


def vars_of(m):
    return dict(encoding=m.encoding, height=m.height, width=m.width, step=m.step, is_bigendian=m.is_bigendian,
                data=m.data)


def test_16bit_pair_shares_one_scale():
    left = np.full((16, 16), 1000, np.uint16)
    right = np.full((16, 16), 500, np.uint16)
    pair = decode_stereo_pair(msg("16UC1", left), msg("16UC1", right))
    assert pair.grey
    # One scale for both: the right image stays half as bright as the left (independent scales
    # would map both to 255).
    assert int(pair.left[0, 0, 0]) == 255
    assert abs(int(pair.right[0, 0, 0]) - 128) <= 1


def test_auto_max16_ignores_a_few_hot_pixels():
    ir = np.full((64, 64), 300, np.uint16)
    ir[0, 0] = 65535
    assert auto_max16(ir) == pytest.approx(300.0)


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """The raw sensor image of ``rgb`` behind a Bayer filter whose top-left 2x2 is ``pattern``."""
    idx = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for dy in range(2):
        for dx in range(2):
            c = idx[pattern[2 * dy + dx]]
            out[dy::2, dx::2] = rgb[dy::2, dx::2, c]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_demosaics_to_the_right_colours(pattern, bits):
    # A smooth colourful image: demosaicing must reproduce its colours away from the border.
    h, w = 32, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.dstack([40 + 4 * xx, 200 - 3 * yy, 90 + 2 * (xx + yy) % 60]).clip(0, 255).astype(np.uint8)
    raw = mosaic(rgb, pattern)
    if bits == 16:
        raw = raw.astype(np.uint16) * 256
    out = decode(msg(f"bayer_{pattern}{bits}", raw), max16=255.0 * 256 if bits == 16 else None)
    err = np.abs(out[4:-4, 4:-4].astype(int) - rgb[4:-4, 4:-4].astype(int))
    assert err.mean() < 3.0, f"bayer_{pattern}: mean colour error {err.mean():.1f}"


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2"])
def test_yuv422_byte_order(encoding):
    # Neutral grey: Y = level, U = V = 128. Reading the bytes in the wrong order would give
    # Y = 128 and a strong colour cast. OpenCV converts with BT.601 video range: 1.164 * (Y - 16).
    h, w, level = 4, 6, 150
    if encoding == "yuv422":
        packed = np.tile(np.array([128, level], np.uint8), (h, w, 1))  # U Y V Y ...
    else:
        packed = np.tile(np.array([level, 128], np.uint8), (h, w, 1))  # Y U Y V ...
    out = decode(msg(encoding, packed)).astype(int)
    assert np.abs(out - round(1.164 * (level - 16))).max() <= 2
    assert (out.max(axis=2) - out.min(axis=2)).max() <= 1


@pytest.mark.parametrize("case,problem", [
    (dict(height=0), "empty_image"),
    (dict(width=0), "empty_image"),
    (dict(encoding="jpeg"), "unknown_encoding"),
    (dict(encoding="32FC1"), "unknown_encoding"),
    (dict(step=3), "bad_step"),
    (dict(data=b"\x00" * 10), "data_size"),
    (dict(data=b"\x00" * 1000), "data_size"),
])
def test_malformed_images_raise_a_documented_error(case, problem):
    m = msg("rgb8", RGB)
    vars(m).update(case)
    with pytest.raises(ImageDecodeError) as e:
        decode(m)
    assert e.value.problem == problem
    assert isinstance(e.value, ValueError)


def test_odd_width_yuv_is_rejected():
    m = types.SimpleNamespace(encoding="yuv422", height=2, width=3, step=6, is_bigendian=0, data=bytes(12))
    with pytest.raises(ImageDecodeError) as e:
        decode(m)
    assert e.value.problem == "bad_width"


def test_lying_encoding_is_caught_by_the_size_checks():
    # A mono8 image announced as rgb8 with its true step: step is shorter than an rgb8 row.
    grey = RGB[..., 0]
    m = msg("mono8", grey)
    m.encoding = "rgb8"
    with pytest.raises(ImageDecodeError) as e:
        decode(m)
    assert e.value.problem == "bad_step"


def test_pair_of_different_sizes_or_kinds_is_rejected():
    with pytest.raises(PairMismatchError) as e:
        decode_stereo_pair(msg("rgb8", RGB), msg("rgb8", RGB[:, :6]))
    assert e.value.problem == "size_mismatch"
    with pytest.raises(PairMismatchError) as e:
        decode_stereo_pair(msg("rgb8", RGB), msg("mono8", RGB[..., 0]))
    assert e.value.problem == "encoding_mismatch"


def test_data_as_numpy_array_or_list_is_accepted():
    # rosbags hands data as a numpy uint8 array, hand-built rclpy messages may hold lists.
    m = msg("rgb8", RGB)
    as_array = decode_image(m.encoding, m.height, m.width, m.step, 0, np.frombuffer(m.data, np.uint8))
    as_list = decode_image(m.encoding, m.height, m.width, m.step, 0, list(m.data))
    np.testing.assert_array_equal(as_array, RGB)
    np.testing.assert_array_equal(as_list, RGB)


def test_decoded_image_is_owned_and_writable():
    m = msg("rgb8", RGB)
    out = decode(m)
    out[0, 0] = 0  # a read-only view of the message bytes would raise here
    assert out.flags.owndata or out.base is not None


def test_every_listed_encoding_decodes():
    for encoding, info in ENCODINGS.items():
        channels = info.channels
        a = RNG.integers(0, 255, (4, 6, channels) if channels > 1 else (4, 6)).astype(info.dtype)
        out = to_rgb8(image_to_numpy(**vars_of(msg(encoding, a))), encoding, max16=255.0)
        assert out.shape == (4, 6, 3) and out.dtype == np.uint8, encoding


@pytest.mark.parametrize("pad", [1, 2, 7])
def test_16bit_rows_with_padding_or_odd_steps(pad):
    ir = RNG.integers(0, 65535, (5, 7), dtype=np.uint16)
    for big in (False, True):
        got = image_to_numpy(**vars_of(msg("16UC1", ir, bigendian=big, pad=pad)))
        np.testing.assert_array_equal(got, ir)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_the_rgba_decode_is_the_rgb_decode_with_an_alpha_channel(encoding):
    """The host's rectifier takes RGBA pairs (decoded so in one pass): the same colour channels."""
    info = ENCODINGS[encoding]
    shape = (6, 8) if info.channels == 1 else (6, 8, info.channels)
    high = 4096 if info.dtype == np.uint16 else 256
    m = msg(encoding, RNG.integers(0, high, shape).astype(info.dtype))
    rgb, rgba = decode_stereo_pair(m, m), decode_stereo_pair(m, m, alpha=True)
    assert rgba.left.shape == (6, 8, 4) and rgba.left.dtype == np.uint8 and rgba.grey == rgb.grey
    np.testing.assert_array_equal(rgba.left[..., :3], rgb.left)
    np.testing.assert_array_equal(rgba.right[..., :3], rgb.right)
