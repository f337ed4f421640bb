"""Runtime parameter changes (`ros2 param set`) while frames flow: each frame is processed and
published entirely with the old settings or entirely with the new ones, never half of each."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from foundation_stereo_ros.pipeline import StereoProcessor, config_problems

from _ros_helpers import NodeHarness, rectified_infos, set_params, stamp_of, textured_scene, wait_for

H, W, F, B = 48, 160, 100.0, 0.1
# Two settings that both show in every output pair: the SGBM search range sets the published
# max_disparity, points_organized the shape of points2.
SETTING_A = dict(sgbm_num_disparities=32, points_organized=True)
SETTING_B = dict(sgbm_num_disparities=48, points_organized=False)


def setting_of(disparity_msg, cloud_msg):
    """Which setting each output of one frame was produced with ('A', 'B' or '?')."""
    from_disparity = {31.0: "A", 47.0: "B"}.get(round(disparity_msg.max_disparity, 3), "?")
    from_cloud = "A" if cloud_msg.height == H else "B"
    return from_disparity, from_cloud


@pytest.mark.slow
def test_parameter_changes_apply_between_frames_never_half_way(monkeypatch):
    original = StereoProcessor.process

    def slow_process(self, *args, **kwargs):
        # A slow network: parameter changes land while a frame is between matching and publishing.
        result = original(self, *args, **kwargs)
        time.sleep(0.03)
        return result

    monkeypatch.setattr(StereoProcessor, "process", slow_process)
    h = NodeHarness(dict(backend="sgbm", **SETTING_A), namespace="/atomic_params", subscribe=("disparity", "points2"))
    try:
        left, right, _ = textured_scene(H, W, seed=4)
        infos = rectified_infos(W, H, F, B, W / 2, W / 2, H / 2)
        stamps = []
        stop = threading.Event()

        def feed():
            while not stop.is_set():
                stamps.append(time.time_ns())
                h.publish_arrays(left, right, "rgb8", infos, stamps[-1])
                time.sleep(0.02)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            assert wait_for(lambda: len(h.received.get("points2")) >= 2, 20.0)
            rng = np.random.default_rng(0)
            for i in range(14):
                results = set_params(h, **(SETTING_B if i % 2 == 0 else SETTING_A))
                assert all(r.successful for r in results), results
                time.sleep(float(rng.uniform(0.02, 0.12)))
        finally:
            stop.set()
            feeder.join(5.0)
        last = stamps[-1]
        assert wait_for(lambda: h.received.by_stamp("points2", last) is not None
                        or h.node._stats.dropped + h.node._stats.frames_published >= len(stamps), 20.0)
        time.sleep(0.5)

        clouds = {stamp_of(m): m for m in h.received.get("points2")}
        seen = {"A": 0, "B": 0}
        for d in h.received.get("disparity"):
            cloud = clouds.get(stamp_of(d))
            if cloud is None:
                continue
            from_disparity, from_cloud = setting_of(d, cloud)
            assert from_disparity == from_cloud, (
                f"frame {stamp_of(d)}: disparity made with setting {from_disparity}, points2 published with "
                f"setting {from_cloud}: a half-applied parameter change")
            seen[from_cloud] += 1
        # The changes really happened while frames flowed.
        assert seen["A"] >= 3 and seen["B"] >= 3, seen
        assert h.node.get_parameter("points_organized").value is True  # 14 toggles: back to A
    finally:
        h.close()


def test_rejected_change_leaves_frames_untouched():
    h = NodeHarness(dict(backend="sgbm", sgbm_num_disparities=32), namespace="/atomic_reject",
                    subscribe=("disparity", "points2"))
    try:
        # One bad value in an atomic set rejects all of it, with the reason.
        results = set_params(h, sgbm_num_disparities=48, points_organized=False, sgbm_block_size=4)
        assert not any(r.successful for r in results)
        assert "sgbm_block_size" in results[0].reason
        left, right, _ = textured_scene(H, W)
        stamp = time.time_ns()
        h.publish_arrays(left, right, "rgb8", rectified_infos(W, H, F, B, W / 2, W / 2, H / 2), stamp)
        out = h.wait_outputs(stamp, ["disparity", "points2"])
        assert setting_of(out["disparity"], out["points2"]) == ("A", "A")
        assert h.node.get_parameter("sgbm_num_disparities").value == 32
        assert h.node.get_parameter("points_organized").value is True
    finally:
        h.close()


@pytest.mark.parametrize("change,fragment", [
    (dict(oom_min_scale_factor=0.0), "oom_min_scale_factor"),
    (dict(oom_probe_period_s=-1.0), "oom_probe_period_s"),
    (dict(check_frame_ids="yes"), "check_frame_ids"),
])
def test_new_reliability_parameters_are_validated(change, fragment):
    problems = config_problems(change)
    assert problems and fragment in problems[0]
