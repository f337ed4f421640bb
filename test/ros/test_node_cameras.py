"""Several stereo cameras in one node (parameter ``cameras``): each camera's topics, outputs and
diagnostics under its own namespace, pairs that are ready together matched in one batch, and a
camera that stalls or sends bad frames never stopping the other."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from _ros_helpers import (OUTPUTS, Collector, NodeHarness, diagnostic_values, numpy_to_image, rectified_infos,
                          stamp_msg, textured_scene, wait_for)
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from foundation_stereo_ros.ros.parameters import StartupError, camera_names

H, W, F, B = 48, 160, 100.0, 0.1
SGBM = dict(backend="sgbm", sgbm_num_disparities=32, log_throttle_s=0.0, diagnostics_period_s=0.2)


class OtherCamera:
    """Inputs and outputs of a second camera of the harness's node, on the harness's test node."""

    def __init__(self, h: NodeHarness, camera: str, outputs=("disparity", "depth")) -> None:
        self.root = f"{h.namespace}/{camera}"
        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {name: h.tester.create_publisher(t, f"{self.root}/{name}", qos)
                     for name, t in (("left/image_rect", Image), ("left/camera_info", CameraInfo),
                                     ("right/image_rect", Image), ("right/camera_info", CameraInfo))}
        self.received = Collector()
        self.subs = [h.tester.create_subscription(OUTPUTS[name], f"{self.root}/{name}",
                                                  lambda m, n=name: self.received.add(n, m), qos) for name in outputs]
        node_pubs = next(c for c in h.node.cameras if c.name == camera).publishers
        assert wait_for(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values())
                        and all(node_pubs[o].get_subscription_count() > 0 for o in outputs), 15.0)

    def publish(self, left, right, infos, t_ns: int, encoding: str = "rgb8") -> None:
        for name, msg, frame in (("left/camera_info", infos[0], "rear_left"), ("right/camera_info", infos[1], "rear_right"),
                                 ("left/image_rect", numpy_to_image(left, encoding), "rear_left"),
                                 ("right/image_rect", numpy_to_image(right, encoding), "rear_right")):
            stamp_msg(msg.header, t_ns, frame)
            self.pubs[name].publish(msg)


def statuses(h: NodeHarness, suffix: str):
    return diagnostic_values(h.received, h.node.get_fully_qualified_name() + suffix)


def test_camera_names_are_checked():
    assert camera_names([]) == [""]
    assert camera_names(["front", "rear/", "/arm/wrist"]) == ["front", "rear", "/arm/wrist"]
    for bad, why in ((["front", "front"], "repeated"), ([""], "not a camera namespace"),
                     (["9lives"], "not a valid ROS namespace"), (["a b"], "not a valid ROS namespace"),
                     ([f"c{i}" for i in range(9)], "at most 8")):
        with pytest.raises(StartupError, match=why):
            camera_names(bad)


def test_two_cameras_publish_under_their_namespaces_and_are_matched_together():
    h = NodeHarness(dict(SGBM, cameras=["front", "rear"]), namespace="/robot", camera="front",
                    subscribe=("disparity", "depth"))
    try:
        rear = OtherCamera(h, "rear")
        batches = []
        proc = h.node.processor
        original = proc.stage_messages_batch

        def spy(frames, **kw):
            batches.append(len(frames))
            return original(frames, **kw)

        proc.stage_messages_batch = spy
        left, right, _ = textured_scene(H, W)
        infos = rectified_infos(W, H, F, B, W / 2, W / 2, H / 2)
        # A different scene on the rear camera: its outputs must be its own, not the front's.
        rear_left, rear_right = np.ascontiguousarray(left[:, ::-1]), np.ascontiguousarray(right[:, ::-1])
        hold = threading.Event()
        real_match = h.node._match

        def held_match(settings, pairs):
            hold.wait(20.0)
            return real_match(settings, pairs)

        h.node._frames._match = held_match
        t0 = time.time_ns()
        stamps = [t0 + 1_000_000, t0 + 2_000_000]
        h.publish_arrays(left, right, "rgb8", infos, t0)  # the worker takes it and is held
        assert wait_for(lambda: h.node._frames.in_flight == t0, 10.0)
        for stamp in stamps:  # meanwhile both cameras' pairs arrive; the newest of each waits
            h.publish_arrays(left, right, "rgb8", infos, stamp)
            rear.publish(rear_left, rear_right, infos, stamp)
        assert wait_for(lambda: h.node._frames.pending == stamps[-1] and len(h.node._frames._pending) == 2, 10.0)
        hold.set()
        h.wait_outputs(stamps[-1], ["disparity", "depth"])
        assert wait_for(lambda: rear.received.by_stamp("depth", stamps[-1]) is not None, 20.0)
        assert 2 in batches  # pairs ready together went through one batched call
        front_depth = h.received.by_stamp("depth", stamps[-1])
        rear_depth = rear.received.by_stamp("depth", stamps[-1])
        assert rear_depth.header.frame_id == "rear_left" and front_depth.header.frame_id != "rear_left"
        front = np.frombuffer(bytes(front_depth.data), np.float32).reshape(H, W)
        back = np.frombuffer(bytes(rear_depth.data), np.float32).reshape(H, W)
        assert not np.array_equal(np.nan_to_num(front), np.nan_to_num(back))
        # Each camera has its own diagnostic status, counting its own frames.
        assert wait_for(lambda: statuses(h, "/front") and statuses(h, "/rear")
                        and int(statuses(h, "/rear")[-1]["frames_published"]) == 1
                        and int(statuses(h, "/front")[-1]["frames_published"]) == 2, 10.0)
        assert int(statuses(h, "/front")[-1]["dropped_pairs"]) == 1  # the older pair waiting, replaced
    finally:
        hold.set()
        h.close()


def test_a_broken_or_silent_camera_does_not_stop_the_other_and_is_counted_under_its_name():
    h = NodeHarness(dict(SGBM, cameras=["front", "rear"]), namespace="/robot2", camera="front",
                    subscribe=("disparity",))
    try:
        rear = OtherCamera(h, "rear", outputs=("disparity",))
        left, right, _ = textured_scene(H, W)
        infos = rectified_infos(W, H, F, B, W / 2, W / 2, H / 2)
        small_infos = rectified_infos(W // 2, H, F, B, W / 4, W / 4, H / 2)
        t0 = time.time_ns()
        for i in range(4):  # the rear camera's CameraInfo does not fit its images: every rear frame is bad
            stamp = t0 + i * 1_000_000
            h.publish_arrays(left, right, "rgb8", infos, stamp)
            rear.publish(left, right, small_infos, stamp)
            h.wait_outputs(stamp, ["disparity"])
        for i in range(4, 7):  # then the rear camera goes silent
            stamp = t0 + i * 1_000_000
            h.publish_arrays(left, right, "rgb8", infos, stamp)
            h.wait_outputs(stamp, ["disparity"])
        assert rear.received.get("disparity") == []

        def rear_problems():
            return sum(int(v) for k, v in (statuses(h, "/rear") or [{}])[-1].items() if k.startswith("problem."))

        # The status is published periodically: the one after the last refused frame counts all four.
        assert wait_for(lambda: rear_problems() >= 4, 10.0)
        rear_status = statuses(h, "/rear")[-1]
        problems = {k: int(v) for k, v in rear_status.items() if k.startswith("problem.")}
        assert sum(problems.values()) >= 4 and rear_status["frames_published"] == "0"
        assert wait_for(lambda: int(statuses(h, "/front")[-1]["frames_published"]) >= 7, 10.0)
        assert not any(k.startswith("problem.") for k in statuses(h, "/front")[-1])  # not counted on front
        lines = " ".join(h.rosout_lines())
        assert "camera rear: [" in lines
    finally:
        h.close()


def test_a_camera_that_changes_size_is_matched_apart_from_the_other():
    h = NodeHarness(dict(SGBM, cameras=["front", "rear"]), namespace="/robot3", camera="front",
                    subscribe=("disparity",))
    try:
        rear = OtherCamera(h, "rear", outputs=("disparity",))
        left, right, _ = textured_scene(H, W)
        wide_left, wide_right, _ = textured_scene(H, W + 64)
        infos = rectified_infos(W, H, F, B, W / 2, W / 2, H / 2)
        wide_infos = rectified_infos(W + 64, H, F, B, (W + 64) / 2, (W + 64) / 2, H / 2)
        t0 = time.time_ns()
        for i, (rl, rr, ri) in enumerate(((left, right, infos), (wide_left, wide_right, wide_infos))):
            stamp = t0 + i * 1_000_000
            h.publish_arrays(left, right, "rgb8", infos, stamp)
            rear.publish(rl, rr, ri, stamp)
            h.wait_outputs(stamp, ["disparity"])
            assert wait_for(lambda: rear.received.by_stamp("disparity", stamp) is not None, 20.0)
            assert rear.received.by_stamp("disparity", stamp).image.width == rl.shape[1]
    finally:
        h.close()


def test_the_execution_mode_is_prepared_for_one_pair_per_camera(vits_checkpoint, monkeypatch):
    from foundation_stereo_ros.pipeline import StereoProcessor

    prepared = []
    monkeypatch.setattr(StereoProcessor, "prepare", lambda self, w, h, batch=1: prepared.append((w, h, batch)) or True)
    h = NodeHarness(dict(backend="foundation_stereo", checkpoint=str(vits_checkpoint), device="cpu",
                         execution="compile", warmup_width=96, warmup_height=64, cameras=["a", "b", "c"]),
                    namespace="/robot4", camera="a", subscribe=())
    try:
        assert prepared == [(96, 64, 3)]
    finally:
        h.close()
