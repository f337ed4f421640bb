"""Each bad input: the node logs it (throttled, with its problem key), counts it in /diagnostics,
publishes nothing for that frame, and goes on publishing the good frames that follow.

Also the inputs that look odd but are fine and must give the right depth: big-endian 16-bit data
(decoded, byte-swapped) and left/right images with different frame ids (two cameras). A zero
baseline is not here: its disparity is published (test_node_without_baseline.py)."""
from __future__ import annotations

import array
import time

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo

from foundation_stereo_ros.ros.conversions import image_to_array, numpy_to_image

from _ros_helpers import NodeHarness, rectified_infos, textured_scene, wait_for

H, W, F, B = 48, 160, 100.0, 0.1
LEFT, RIGHT, TRUTH = textured_scene(H, W, seed=2)
PRODUCTS = ("disparity", "depth", "points2")


@pytest.fixture(scope="module")
def node():
    h = NodeHarness(dict(backend="sgbm", sgbm_num_disparities=32, queue_size=3, log_throttle_s=60.0,
                         diagnostics_period_s=0.3), namespace="/bad_input", subscribe=PRODUCTS)
    yield h
    h.close()


def good():
    l_info, r_info = rectified_infos(W, H, F, B, W / 2, W / 2, H / 2)
    return numpy_to_image(LEFT, "rgb8"), numpy_to_image(RIGHT, "rgb8"), l_info, r_info


def send_good(node, stamp=None):
    stamp = stamp or time.time_ns()
    node.publish(*good(), stamp)
    node.wait_outputs(stamp, PRODUCTS)
    return stamp


def zero_size(m):
    m.height = m.width = m.step = 0
    m.data = b""


def short_data(m):
    m.data = bytes(m.data)[: len(m.data) // 2]


def short_step(m):
    m.step = m.width  # an rgb8 row needs 3 * width bytes


def unknown_encoding(m):
    m.encoding = "h264"


def lying_encoding(m):
    m.encoding = "rgba8"  # rgb8 bytes announced as 4 channels: the step no longer fits


def rgb_as_mono8(m):
    m.encoding = "mono8"  # rgb8 bytes announced as grey: each row would read as a third of itself


def rgb_as_mono16(m):
    m.encoding = "mono16"  # rgb8 bytes announced as 16-bit grey


def grey_bytes(m):
    grey = numpy_to_image(np.ascontiguousarray(LEFT[..., 0]), "mono8")
    m.data = grey.data  # mono8 bytes, the message still says rgb8


def mono_as_rgb8_dense_step(m):
    grey_bytes(m)  # step stays 3 * width: the data is a third of step * height


def mono_as_rgb8_true_step(m):
    grey_bytes(m)
    m.step = W  # the step of the real (mono8) rows: shorter than an rgb8 row


def scale_fx(info, value):
    k = np.asarray(info.k).copy()
    p = np.asarray(info.p).copy()
    k[0] = p[0] = value
    info.k, info.p = k, p


def zero_fx(l_img, r_img, l_info, r_info):
    scale_fx(l_info, 0.0)
    scale_fx(r_info, 0.0)


def negative_baseline(l_img, r_img, l_info, r_info):
    p = np.asarray(r_info.p).copy()
    p[3] = -p[3]  # left and right swapped: the disparity itself would be wrong
    r_info.p = p


def nan_calibration(l_img, r_img, l_info, r_info):
    p = np.asarray(l_info.p).copy()
    p[2] = np.nan
    l_info.p = p


def inf_calibration(l_img, r_img, l_info, r_info):
    l_info.d = array.array("d", [np.inf, 0, 0, 0, 0])


def uncalibrated(l_img, r_img, l_info, r_info):
    for info in (l_info, r_info):
        blank = CameraInfo()
        blank.width, blank.height = info.width, info.height
        info.k, info.p, info.r, info.d = blank.k, blank.p, blank.r, blank.d


def info_size_mismatch(l_img, r_img, l_info, r_info):
    for info in (l_info, r_info):
        info.width, info.height = 2 * W, 2 * H


def sizes_differ(l_img, r_img, l_info, r_info):
    small = numpy_to_image(np.ascontiguousarray(RIGHT[:, : W - 8]), "rgb8")
    r_img.width, r_img.step, r_img.data = small.width, small.step, small.data


def grey_with_colour(l_img, r_img, l_info, r_info):
    grey = numpy_to_image(np.ascontiguousarray(RIGHT[..., 0]), "mono8")
    r_img.encoding, r_img.step, r_img.data = grey.encoding, grey.step, grey.data


def on_left(fn):
    return lambda l_img, r_img, l_info, r_info: fn(l_img)


def info_from_other_camera(l_img, r_img, l_info, r_info):
    # Calibration of another camera on the right camera_info topic (a wrong remap).
    return dict(right_info_frame="other_camera_optical")


CASES = [
    ("zero-size image", on_left(zero_size), "empty_image"),
    ("data shorter than step * height", on_left(short_data), "data_size"),
    ("step smaller than a row", on_left(short_step), "bad_step"),
    ("unknown encoding", on_left(unknown_encoding), "unknown_encoding"),
    ("lying encoding", on_left(lying_encoding), "bad_step"),
    ("lying encoding: rgb8 bytes announced as mono8", on_left(rgb_as_mono8), "wrong_encoding"),
    ("lying encoding: rgb8 bytes announced as mono16", on_left(rgb_as_mono16), "wrong_encoding"),
    ("lying encoding: mono8 bytes announced as rgb8", on_left(mono_as_rgb8_dense_step), "data_size"),
    ("lying encoding: mono8 bytes and step announced as rgb8", on_left(mono_as_rgb8_true_step), "bad_step"),
    ("left and right of different sizes", sizes_differ, "size_mismatch"),
    ("grey left, colour right", grey_with_colour, "encoding_mismatch"),
    ("fx = 0", zero_fx, "calibration_zero_focal"),
    ("uncalibrated CameraInfo (all zeros)", uncalibrated, "calibration_zero_focal"),
    ("baseline < 0 (left and right swapped)", negative_baseline, "negative_baseline"),
    ("NaN in P", nan_calibration, "calibration_nonfinite"),
    ("infinite distortion", inf_calibration, "calibration_nonfinite"),
    ("CameraInfo size differs from the image", info_size_mismatch, "calibration_mismatch"),
    ("CameraInfo frame differs from its image's", info_from_other_camera, "frame_id_mismatch"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,spoil,problem", CASES, ids=[c[0] for c in CASES])
def test_bad_frame_is_logged_counted_skipped_and_good_frames_follow(node, name, spoil, problem):
    send_good(node)  # the node works before
    before = node.problem_count(problem)
    msgs = list(good())
    publish_options = spoil(*msgs) or {}
    bad_stamp = time.time_ns()
    node.publish(*msgs, bad_stamp, **publish_options)
    assert wait_for(lambda: node.problem_count(problem) > before, 10.0), \
        f"{name}: no '{problem}' counted (counters: {node.node._stats.problems})"
    good_stamp = send_good(node)  # ... and after
    for topic in PRODUCTS:
        assert node.received.by_stamp(topic, bad_stamp) is None, f"{name}: published {topic} for a bad frame"
    assert good_stamp > bad_stamp
    assert_logged_and_reported(node, problem, before, name)


def assert_logged_and_reported(node, problem, before, name=""):
    """A '[problem] ...' log line on /rosout and the counter in /diagnostics above ``before``."""
    assert wait_for(lambda: any(f"[{problem}]" in line for line in node.rosout_lines()), 5.0), \
        f"{name}: no log line for {problem}"
    assert wait_for(lambda: node.diagnostic_count(f"problem.{problem}") > before, 5.0), \
        f"{name}: problem.{problem} not in /diagnostics"


@pytest.mark.slow
def test_log_lines_are_throttled_per_problem(node):
    lines = lambda: [x for x in node.rosout_lines() if "[unknown_encoding]" in x]  # noqa: E731
    send_good(node)
    for _ in range(4):
        msgs = list(good())
        on_left(unknown_encoding)(*msgs)
        node.publish(*msgs, time.time_ns())
        time.sleep(0.05)
    send_good(node)
    assert wait_for(lambda: node.node._stats.problems.get("unknown_encoding", 0) >= 4, 5.0)
    # Throttle period is 60 s: at most the one line of the earlier test plus one here.
    assert 1 <= len(lines()) <= 2


def test_images_that_never_find_partners_are_reported(node):
    before = node.problem_count("unpaired")
    l_img, r_img, l_info, r_info = good()
    t0 = time.time_ns()
    for i in range(5):  # left and right images whose stamps never agree, and no CameraInfo
        node.publish(l_img, r_img, None, None, t0 + i)
        node.pubs["right/image_rect"].publish(r_img)
        r_img.header.stamp.nanosec = (r_img.header.stamp.nanosec + 1000) % 1_000_000_000
        time.sleep(0.01)
    assert wait_for(lambda: node.problem_count("unpaired") > before, 10.0)
    send_good(node)
    for i in range(5):
        assert node.received.by_stamp("disparity", t0 + i) is None
    assert_logged_and_reported(node, "unpaired", before)


@pytest.fixture(scope="module")
def approximate_node():
    h = NodeHarness(dict(backend="sgbm", sgbm_num_disparities=32, approximate_sync=True, sync_tolerance_s=0.005,
                         log_throttle_s=60.0, diagnostics_period_s=0.3), namespace="/bad_input_approx",
                    subscribe=PRODUCTS)
    yield h
    h.close()


@pytest.mark.slow
def test_images_outside_the_sync_tolerance_are_reported(approximate_node):
    node = approximate_node
    send_good(node)
    before = node.problem_count("unpaired")
    l_img, r_img, l_info, r_info = good()
    t = time.time_ns()
    # Left and right 20 ms apart with a 5 ms tolerance: never a pair.
    node.publish(l_img, numpy_to_image(RIGHT, "rgb8"), l_info, None, t)
    stamp_right = t + 20_000_000
    node.publish(numpy_to_image(LEFT, "rgb8"), r_img, None, r_info, stamp_right)
    send_good(node, t + 10 ** 9)  # a newer set forms: the lonely messages are discarded
    assert wait_for(lambda: node.problem_count("unpaired") >= before + 2, 10.0), node.node._stats.problems
    for topic in PRODUCTS:
        assert node.received.by_stamp(topic, t) is None and node.received.by_stamp(topic, stamp_right) is None
    assert_logged_and_reported(node, "unpaired", before)
    send_good(node, t + 2 * 10 ** 9)


def test_timestamps_jumping_back_skip_the_jump_and_frames_continue(node):
    before = node.problem_count("time_jump_back")
    send_good(node)
    earlier = time.time_ns() - 30 * 10 ** 9  # a bag loop: back 30 s
    node.publish(*good(), earlier)
    assert wait_for(lambda: node.problem_count("time_jump_back") == before + 1, 10.0)
    after = send_good(node, earlier + 10 ** 8)  # the next frame of the new timeline comes out
    after2 = send_good(node, earlier + 2 * 10 ** 8)
    assert after2 > after
    for topic in PRODUCTS:  # the pair at the jump itself is discarded: a clean break
        assert node.received.by_stamp(topic, earlier) is None, topic
    assert node.problem_count("time_jump_back") == before + 1  # one jump, counted once
    assert_logged_and_reported(node, "time_jump_back", before)


def test_left_and_right_frame_ids_may_differ(node):
    # Two cameras, two optical frames: processed, outputs framed and stamped like the left image.
    stamp = time.time_ns()
    node.publish(*good(), stamp, left_frame="zed_left_camera_optical_frame",
                 right_frame="zed_right_camera_optical_frame")
    out = node.wait_outputs(stamp, PRODUCTS)
    assert {m.header.frame_id for m in out.values()} == {"zed_left_camera_optical_frame"}
    depth = image_to_array(out["depth"])
    assert np.isfinite(depth).mean() > 0.3


def test_big_endian_16bit_images_give_the_right_depth(node):
    # Decoded (byte-swapped) rather than rejected: never wrong depth, and cameras that send it work.
    ir_left = (LEFT.mean(axis=2) * 50).astype(np.uint16)  # 16-bit grey, ~14 bits used
    ir_right = (RIGHT.mean(axis=2) * 50).astype(np.uint16)
    infos = rectified_infos(W, H, F, B, W / 2, W / 2, H / 2)
    depths = {}
    for big in (False, True):
        msgs = [numpy_to_image(a, "mono16") for a in (ir_left, ir_right)]
        if big:
            for m in msgs:
                m.data = image_to_array(m).astype(">u2").tobytes()
                m.is_bigendian = 1
            assert msgs[0].data != numpy_to_image(ir_left, "mono16").data  # really other bytes on the wire
        stamp = time.time_ns()
        node.publish(msgs[0], msgs[1], *infos, stamp)
        depths[big] = image_to_array(node.wait_outputs(stamp, PRODUCTS)["depth"])
    np.testing.assert_array_equal(depths[True], depths[False])
    # The depth of the scene by construction: background plane at 12 px, raised box at 24 px.
    for d_px in (12, 24):
        region = np.isfinite(depths[True]) & (TRUTH == d_px)
        assert region.mean() > 0.1 * (TRUTH == d_px).mean()
        assert np.median(depths[True][region]) == pytest.approx(F * B / d_px, rel=0.03)
    send_good(node)  # and the node goes on with 8-bit colour
