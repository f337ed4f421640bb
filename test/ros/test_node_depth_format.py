"""``depth_format``: 32FC1 metres (NaN invalid, the default) or 16UC1 millimetres (0 where invalid or
beyond 65.535 m, REP 118), changeable at run time."""
from __future__ import annotations

import time

import numpy as np
import pytest

from foundation_stereo_ros.ros.conversions import depth_image_msg, image_to_array
from foundation_stereo_ros.ros.messages import depth_to_millimetres

from _ros_helpers import NodeHarness, rectified_infos, set_params, textured_scene


def test_millimetres_rounded_with_zero_where_invalid_or_too_far():
    metres = np.array([[np.nan, 0.0004, 0.0006, 1.2344, 1.2346], [65.535, 65.5354, 65.5356, 70.0, np.inf]],
                      np.float32)
    np.testing.assert_array_equal(depth_to_millimetres(metres),
                                  [[0, 0, 1, 1234, 1235], [65535, 65535, 0, 0, 0]])
    assert depth_to_millimetres(metres).dtype == np.uint16


def test_depth_image_message_in_each_format():
    depth = np.array([[0.5, np.nan], [2.0, 100.0]], np.float32)
    mm = depth_image_msg(depth, None, "16UC1")
    assert (mm.encoding, mm.step, mm.is_bigendian) == ("16UC1", 4, 0)
    np.testing.assert_array_equal(image_to_array(mm), [[500, 0], [2000, 0]])
    m = depth_image_msg(depth, None)
    assert m.encoding == "32FC1"
    np.testing.assert_array_equal(image_to_array(m), depth)
    with pytest.raises(ValueError, match="depth_format"):
        depth_image_msg(depth, None, "16UC2")


def test_node_publishes_millimetres_after_a_runtime_change():
    h = NodeHarness(dict(backend="sgbm", sgbm_num_disparities=32), namespace="/depth_format", subscribe=("depth",))
    try:
        height, width = 48, 160
        left, right, _ = textured_scene(height, width, seed=5)
        # f * B = 1200: the background (12 px) lies at 100 m, beyond 16UC1; the rectangle (24 px) at 50 m.
        infos = rectified_infos(width, height, 100.0, 12.0, width / 2, width / 2, height / 2)

        def depth_of_next_frame():
            stamp = time.time_ns()
            h.publish_arrays(left, right, "rgb8", infos, stamp)
            return h.wait_outputs(stamp, ["depth"])["depth"]

        metres_msg = depth_of_next_frame()
        assert metres_msg.encoding == "32FC1"
        assert all(r.successful for r in set_params(h, depth_format="16UC1"))
        mm_msg = depth_of_next_frame()
        assert (mm_msg.encoding, mm_msg.step) == ("16UC1", 2 * width)
        metres, mm = image_to_array(metres_msg), image_to_array(mm_msg)
        fits = np.isfinite(metres) & (np.rint(metres * 1000) <= 65535)
        np.testing.assert_array_equal(mm[fits], np.rint(metres[fits] * 1000).astype(np.uint16))
        assert (mm[~fits] == 0).all()
        assert fits.sum() > 1000 and (np.isfinite(metres) & ~fits).sum() > 1000 and np.isnan(metres).any()
        rejected = set_params(h, depth_format="16UC2")[0]
        assert not rejected.successful and "depth_format" in rejected.reason
        assert all(r.successful for r in set_params(h, depth_format="32FC1"))
        assert depth_of_next_frame().encoding == "32FC1"
    finally:
        h.close()
