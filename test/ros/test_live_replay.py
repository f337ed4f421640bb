"""Replaying a bag live through stereo_depth_node (its own process, real rclpy/DDS on localhost)
gives the same disparities and the same numbers as the offline evaluation of the same bag."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from foundation_stereo_ros.evaluation import metrics as M
from foundation_stereo_ros.evaluation.bag_io import StereoBagReader, StereoTopics
from foundation_stereo_ros.evaluation.replay import ReplayOptions, replay_live
from foundation_stereo_ros.evaluation.runner import BackendRun, Evaluator
from foundation_stereo_ros.pipeline import ProcessorConfig
from foundation_stereo_ros.tools.main_job import aloe_frames
from foundation_stereo_ros.tools.make_bag import BagOptions, write_stereo_bag

from _eval_helpers import T0, write_plan_bag


@pytest.fixture(autouse=True)
def ros_domain(monkeypatch):
    # A domain of our own: other test processes on this machine run ROS nodes at the same time.
    monkeypatch.setenv("ROS_DOMAIN_ID", str(1 + (os.getpid() * 7 + 37) % 100))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def offline(bag, params, sync=None):
    ev = Evaluator([BackendRun("x", ProcessorConfig.from_mapping(params))], warmup=0)
    with StereoBagReader(bag, sync=sync) as reader:
        return {fe.record.stamp_ns: fe.backends["x"] for fe in ev.run(reader.pairs())}


def assert_same(live, off):
    assert set(live.frames) <= set(off)
    for stamp, lf in live.frames.items():
        ob = off[stamp]
        d_off, d_live = ob.result.disparity, lf.disparity
        valid_off, valid_live = np.isfinite(d_off) & (d_off > 0), np.isfinite(d_live) & (d_live > 0)
        np.testing.assert_array_equal(valid_live, valid_off)
        np.testing.assert_array_equal(d_live[valid_live], d_off[valid_off])  # bit for bit
        assert lf.counts.summary() == ob.counts.summary()
    total_off = M.total(off[s].counts for s in live.frames).summary()
    assert live.totals.summary() == total_off


def test_live_replay_equals_offline_on_aloe_pan(tmp_path, opencv_data):
    """Four frames of a camera pan over the Aloe pair (each with its own CameraInfo), 5 Hz, exact sync."""
    frames, _ = aloe_frames(opencv_data, 0.125, 4)
    bag = tmp_path / "pan"
    write_stereo_bag(bag, frames, frames[0].calibration,
                     BagOptions(rate_hz=5.0, start_ns=T0, storage="mcap", topics=StereoTopics.under("/cam")))
    params = {"backend": "sgbm", "sgbm_num_disparities": 32, "device": "cpu", "max_depth": 8.0}
    live = replay_live(bag, "/cam/depth", params, ReplayOptions(log_dir=tmp_path / "live"))
    off = offline(bag, params)
    assert live.published == 4 and len(live.frames) == 4, (tmp_path / "live" / "node.log").read_text()
    assert_same(live, off)
    s = live.totals.summary()
    assert s["epe"] is not None and s["abs_rel"] is not None  # ground truth was used
    assert all(f.latency_s > 0 for f in live.frames.values())
    assert live.node_returncode == 0  # the node stopped cleanly on Ctrl-C


def test_live_replay_pairs_like_offline_with_approximate_sync(tmp_path, opencv_data):
    """Jittered stamps and a lost message: the node's approximate sync and the offline reader pair the
    same frames (the reader uses the node's synchroniser with the node's parameters)."""
    left = cv2.resize(cv2.cvtColor(cv2.imread(str(opencv_data / "aloeL.jpg")), cv2.COLOR_BGR2RGB), (160, 139),
                      interpolation=cv2.INTER_AREA)
    right = cv2.resize(cv2.cvtColor(cv2.imread(str(opencv_data / "aloeR.jpg")), cv2.COLOR_BGR2RGB), (160, 139),
                       interpolation=cv2.INTER_AREA)
    plan = [
        [("left", 0), ("left_info", 0), ("right", 1_000_000), ("right_info", 1_000_000)],
        [("left", 0), ("left_info", 0), ("right_info", 0)],  # the right image is lost
        [("right", 0), ("right_info", 0), ("left", 3_000_000), ("left_info", 3_000_000)],
        [("left", 0), ("left_info", 0), ("right", 30_000_000), ("right_info", 30_000_000)],  # too far apart
    ]
    bag = tmp_path / "jitter"
    write_plan_bag(bag, left, right, plan, period_ns=200_000_000)
    sync = {"approximate_sync": True, "sync_tolerance_s": 0.005}
    params = {"backend": "sgbm", "sgbm_num_disparities": 32, "device": "cpu", **sync}
    live = replay_live(bag, "/cam", params, ReplayOptions(sync=sync, log_dir=tmp_path / "live"))
    off = offline(bag, {k: v for k, v in params.items() if k not in sync}, sync)
    assert sorted(s - T0 for s in off) == [0, 403_000_000]  # stamped like the left image
    assert sorted(live.frames) == sorted(off), (tmp_path / "live" / "node.log").read_text()
    assert_same(live, off)


@pytest.mark.slow
def test_looped_bag_pairs_like_the_node(tmp_path, opencv_data):
    """A recording whose stamps jump back by 10 s halfway (a bag played in a loop, a restarted
    driver): node and offline reader both drop the pair at the jump and go on with the rest."""
    left = cv2.resize(cv2.cvtColor(cv2.imread(str(opencv_data / "aloeL.jpg")), cv2.COLOR_BGR2RGB), (160, 139),
                      interpolation=cv2.INTER_AREA)
    right = cv2.resize(cv2.cvtColor(cv2.imread(str(opencv_data / "aloeR.jpg")), cv2.COLOR_BGR2RGB), (160, 139),
                       interpolation=cv2.INTER_AREA)
    full = [("left", 0), ("left_info", 0), ("right", 0), ("right_info", 0)]
    back = -10_000_000_000
    plan = [full] * 3 + [[(role, back) for role, _ in full]] * 3
    bag = tmp_path / "loop"
    write_plan_bag(bag, left, right, plan, period_ns=250_000_000)
    params = {"backend": "sgbm", "sgbm_num_disparities": 32, "device": "cpu"}
    off = offline(bag, params)
    period = 250_000_000
    assert sorted(s - T0 for s in off) == sorted([0, period, 2 * period, 4 * period + back, 5 * period + back])
    live = replay_live(bag, "/cam", params, ReplayOptions(log_dir=tmp_path / "live"))
    assert sorted(live.frames) == sorted(off), (tmp_path / "live" / "node.log").read_text()
    assert "time_jump_back" in (tmp_path / "live" / "node.log").read_text()
    assert_same(live, off)
