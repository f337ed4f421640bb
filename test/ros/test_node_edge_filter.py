"""``edge_filter`` in the node: flying pixels at a depth step become invalid in disparity (its
``min_disparity - 1``), depth and points2 after a runtime ``ros2 param set``, and valid again
after setting it back to 0."""
from __future__ import annotations

import time

import numpy as np

from foundation_stereo_ros.pipeline.backends import SGBMBackend
from foundation_stereo_ros.ros.conversions import image_to_array, pointcloud2_to_array

from _edge_scene import step_scene
from _ros_helpers import NodeHarness, rectified_infos, set_params, textured_scene

H, W, F, B, DELTA_CX = 40, 96, 100.0, 0.1, 2.0  # f * B = 10: the scene's planes at 1 m and 5 m


def test_runtime_change_invalidates_flying_pixels_in_every_output(monkeypatch):
    scene, flying, interior = step_scene(H, W)
    # The matcher answers with the step scene (raw disparity = published + delta_cx).
    monkeypatch.setattr(SGBMBackend, "compute", lambda self, left, right, grey=False: scene + np.float32(DELTA_CX))
    h = NodeHarness(dict(backend="sgbm", sgbm_num_disparities=16), namespace="/edge_filter",
                    subscribe=("disparity", "depth", "points2"))
    try:
        left, right, _ = textured_scene(H, W, seed=2)
        infos = rectified_infos(W, H, F, B, W / 2, W / 2 - DELTA_CX, H / 2)

        def next_frame():
            stamp = time.time_ns()
            h.publish_arrays(left, right, "rgb8", infos, stamp)
            out = h.wait_outputs(stamp, ["disparity", "depth", "points2"])
            cloud = pointcloud2_to_array(out["points2"])
            invalid_disparity = image_to_array(out["disparity"].image) == np.float32(out["disparity"].min_disparity - 1)
            return invalid_disparity, np.isnan(image_to_array(out["depth"])), np.isnan(cloud["z"])

        for invalid in next_frame():  # off by default: every pixel of the scene published
            assert invalid.sum() == 2  # the scene's two holes
        assert all(r.successful for r in set_params(h, edge_filter=0.05))
        assert h.node.get_parameter("edge_filter").value == 0.05
        for invalid in next_frame():
            assert invalid[flying].all() and not invalid[interior].any()
        disparity, depth, points = next_frame()
        assert np.array_equal(disparity, depth) and np.array_equal(depth, points)
        rejected = set_params(h, edge_filter=-1.0)[0]
        assert not rejected.successful and "edge_filter" in rejected.reason
        assert all(r.successful for r in set_params(h, edge_filter=0.0))
        for invalid in next_frame():
            assert invalid.sum() == 2
    finally:
        h.close()
