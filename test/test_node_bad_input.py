"""Each bad input: the node logs it (throttled, with its problem key), counts it in /diagnostics,
publishes nothing for that frame, and goes on publishing the good frames that follow."""
from __future__ import annotations

import array
import time

import numpy as np
import pytest

from foundation_stereo_ros.ros.conversions import numpy_to_image

from _ros_helpers import NodeHarness, rectified_infos, textured_scene, wait_for

H, W, F, B = 48, 160, 100.0, 0.1
LEFT, RIGHT, _ = textured_scene(H, W, seed=2)
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


def scale_fx(info, value):
    k = np.asarray(info.k).copy()
    p = np.asarray(info.p).copy()
    k[0] = p[0] = value
    info.k, info.p = k, p


def zero_fx(l_img, r_img, l_info, r_info):
    scale_fx(l_info, 0.0)
    scale_fx(r_info, 0.0)


def zero_baseline(l_img, r_img, l_info, r_info):
    p = np.asarray(r_info.p).copy()
    p[3] = 0.0
    r_info.p = p


def nan_calibration(l_img, r_img, l_info, r_info):
    p = np.asarray(l_info.p).copy()
    p[2] = np.nan
    l_info.p = p


def inf_calibration(l_img, r_img, l_info, r_info):
    l_info.d = array.array("d", [np.inf, 0, 0, 0, 0])


def uncalibrated(l_img, r_img, l_info, r_info):
    from sensor_msgs.msg import CameraInfo

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


CASES = [
    ("zero-size image", on_left(zero_size), "empty_image"),
    ("data shorter than step * height", on_left(short_data), "data_size"),
    ("step smaller than a row", on_left(short_step), "bad_step"),
    ("unknown encoding", on_left(unknown_encoding), "unknown_encoding"),
    ("lying encoding", on_left(lying_encoding), "bad_step"),
    ("left and right of different sizes", sizes_differ, "size_mismatch"),
    ("grey left, colour right", grey_with_colour, "encoding_mismatch"),
    ("fx = 0", zero_fx, "calibration_zero_focal"),
    ("uncalibrated CameraInfo (all zeros)", uncalibrated, "calibration_zero_focal"),
    ("baseline = 0", zero_baseline, "zero_baseline"),
    ("NaN in P", nan_calibration, "calibration_nonfinite"),
    ("infinite distortion", inf_calibration, "calibration_nonfinite"),
    ("CameraInfo size differs from the image", info_size_mismatch, "calibration_mismatch"),
]


@pytest.mark.parametrize("name,spoil,problem", CASES, ids=[c[0] for c in CASES])
def test_bad_frame_is_logged_counted_skipped_and_good_frames_follow(node, name, spoil, problem):
    send_good(node)  # the node works before
    before = node.node._stats.problems.get(problem, 0)
    msgs = list(good())
    spoil(*msgs)
    bad_stamp = time.time_ns()
    node.publish(*msgs, bad_stamp)
    assert wait_for(lambda: node.node._stats.problems.get(problem, 0) > before, 10.0), \
        f"{name}: no '{problem}' counted (counters: {node.node._stats.problems})"
    good_stamp = send_good(node)  # ... and after
    for topic in PRODUCTS:
        assert node.received.by_stamp(topic, bad_stamp) is None, f"{name}: published {topic} for a bad frame"
    assert good_stamp > bad_stamp
    assert wait_for(lambda: any(f"[{problem}]" in line for line in node.rosout_lines()), 5.0), \
        f"{name}: no log line for {problem}"
    assert wait_for(lambda: diagnostics_count(node, problem) > before, 5.0)


def diagnostics_count(node, problem):
    best = 0
    for arr in node.received.get("diagnostics"):
        for status in arr.status:
            if status.hardware_id == node.node.get_fully_qualified_name():
                for kv in status.values:
                    if kv.key == f"problem.{problem}":
                        best = max(best, int(kv.value))
    return best


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
    before = node.node._stats.problems.get("unpaired", 0)
    l_img, r_img, l_info, r_info = good()
    t0 = time.time_ns()
    for i in range(5):  # left and right images whose stamps never agree, and no CameraInfo
        node.publish(l_img, r_img, None, None, t0 + i)
        node.pubs["right/image_rect"].publish(r_img)
        r_img.header.stamp.nanosec = (r_img.header.stamp.nanosec + 1000) % 1_000_000_000
        time.sleep(0.01)
    assert wait_for(lambda: node.node._stats.problems.get("unpaired", 0) > before, 10.0)
    assert wait_for(lambda: any("[unpaired]" in line for line in node.rosout_lines()), 5.0)
    for i in range(5):
        assert node.received.by_stamp("disparity", t0 + i) is None
    send_good(node)


def test_timestamps_jumping_back_reset_pairing_and_frames_continue(node):
    before = node.node._stats.problems.get("time_jump_back", 0)
    send_good(node)
    earlier = time.time_ns() - 30 * 10 ** 9  # a bag loop: back 30 s
    node.publish(*good(), earlier)
    node.wait_outputs(earlier, PRODUCTS)  # a valid frame, even if older
    assert node.node._stats.problems.get("time_jump_back", 0) == before + 1
    send_good(node, earlier + 10 ** 8)
