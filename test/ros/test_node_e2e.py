"""stereo_depth_node end to end, with real rclpy publishers and subscribers on localhost.

A test node publishes stereo pairs with CameraInfo; the node runs in this process (executor in a
thread); every output is checked: headers, encodings, sizes, depth == f * t / disparity, points
that project back onto their pixels through K, colours from the left image.
"""
from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from foundation_stereo_ros.pipeline import unpack_rgb
from foundation_stereo_ros.ros.conversions import (disparity_from_msg, image_to_array, numpy_to_image,
                                                   pointcloud2_to_array)

from _ros_helpers import OUTPUTS, NodeHarness, rectified_infos, set_params, textured_scene, wait_for

H, W, F, B = 64, 200, 100.0, 0.1
CX_L, CX_R, CY = 100.0, 96.0, 32.0  # principal points differ: delta_cx = 4 px
_ns = itertools.count()


def harness(params, **kw):
    return NodeHarness(params, namespace=f"/e2e_{next(_ns)}", **kw)


@pytest.fixture(scope="module")
def sgbm_node():
    h = harness(dict(backend="sgbm", sgbm_num_disparities=32, diagnostics_period_s=0.5))
    yield h
    h.close()


def check_outputs(out, stamp, left_rgb, f, baseline, fx, cx, cy, grey=False, min_valid=0.3):
    """Every check of the issue on one frame's outputs; returns the valid-disparity mask."""
    h, w = left_rgb.shape[:2]
    for topic, msg in out.items():
        assert msg.header.frame_id == "cam_left_optical", topic
        assert msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec == stamp, topic
    d = out["disparity"]
    assert d.image.encoding == "32FC1" and (d.image.height, d.image.width) == (h, w)
    assert d.f == pytest.approx(f) and d.t == pytest.approx(baseline)
    assert d.image.header.frame_id == "cam_left_optical"
    disp = disparity_from_msg(d)
    valid = np.isfinite(disp)
    assert valid.mean() >= min_valid, f"only {valid.mean():.1%} valid disparities"
    assert (disp[valid] <= d.max_disparity + 1e-3).all()
    x, y, vw, vh = (d.valid_window.x_offset, d.valid_window.y_offset, d.valid_window.width,
                    d.valid_window.height)
    assert 0 <= x and 0 <= y and x + vw <= w and y + vh <= h and vw > 0 and vh > 0

    depth_msg = out["depth"]
    assert depth_msg.encoding == "32FC1" and (depth_msg.height, depth_msg.width) == (h, w)
    depth = image_to_array(depth_msg)
    pos = valid & (disp > 0)
    np.testing.assert_allclose(depth[pos], d.f * d.t / disp[pos], rtol=1e-5)
    assert np.isnan(depth[~valid]).all()

    info = out["depth/camera_info"]
    assert (info.width, info.height) == (w, h)
    K = np.asarray(info.k).reshape(3, 3)
    assert K[0, 0] == pytest.approx(fx) and K[0, 2] == pytest.approx(cx) and K[1, 2] == pytest.approx(cy)
    assert not np.any(np.asarray(info.d))

    pc = out["points2"]
    assert (pc.height, pc.width, pc.is_dense) == (h, w, False)
    cloud = pointcloud2_to_array(pc)
    xyz = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=-1)
    finite = np.isfinite(xyz[..., 2])
    np.testing.assert_array_equal(finite, np.isfinite(depth))
    np.testing.assert_array_equal(xyz[..., 2][finite], depth[finite])
    vv, uu = np.mgrid[0:h, 0:w]
    # Project through the published K: each point lands on its own pixel.
    u = K[0, 0] * xyz[..., 0] / xyz[..., 2] + K[0, 2]
    v = K[1, 1] * xyz[..., 1] / xyz[..., 2] + K[1, 2]
    np.testing.assert_allclose(u[finite], uu[finite], atol=1e-3)
    np.testing.assert_allclose(v[finite], vv[finite], atol=1e-3)
    np.testing.assert_array_equal(unpack_rgb(cloud["rgb"]), left_rgb)

    left_msg = out["left_rect/image"]
    assert left_msg.encoding == ("mono8" if grey else "rgb8") and (left_msg.height, left_msg.width) == (h, w)
    left_back = image_to_array(left_msg)
    np.testing.assert_array_equal(left_back, left_rgb[..., 0] if grey else left_rgb)
    li = out["left_rect/camera_info"]
    np.testing.assert_array_equal(np.asarray(li.k), np.asarray(info.k))

    col = out["disparity_color"]
    assert col.encoding == "rgb8" and (col.height, col.width) == (h, w)
    assert (image_to_array(col)[~valid] == 0).all()
    return valid


def test_sgbm_end_to_end(sgbm_node):
    left, right, truth = textured_scene(H, W)
    infos = rectified_infos(W, H, F, B, CX_L, CX_R, CY)
    stamp = time.time_ns()
    # bgr8 on the wire: colours in points2 must still come out as the left image's RGB.
    sgbm_node.publish_arrays(left[..., ::-1].copy(), right[..., ::-1].copy(), "bgr8", infos, stamp)
    out = sgbm_node.wait_outputs(stamp, [t for t in OUTPUTS if not t.startswith("right_rect")])
    valid = check_outputs(out, stamp, left, F, B, F, CX_L, CY)
    d = out["disparity"]
    # stereo_image_proc's convention: published disparity = raw - (cx_l - cx_r); min/max likewise.
    assert d.min_disparity == pytest.approx(0 - (CX_L - CX_R))
    assert d.max_disparity == pytest.approx(31 - (CX_L - CX_R))
    assert d.delta_d == pytest.approx(1 / 16)
    disp = disparity_from_msg(d)
    raw = disp + (CX_L - CX_R)
    assert np.mean(np.abs(raw[valid] - truth[valid]) <= 1.0) > 0.9
    # The depth of the background plane from its construction: Z = f B / (12 - delta_cx).
    depth = image_to_array(out["depth"])
    assert np.nanmedian(depth[valid & (truth == 12)]) == pytest.approx(F * B / (12 - (CX_L - CX_R)), rel=0.02)
    r = out.get("right_rect/image") or sgbm_node.received.by_stamp("right_rect/image", stamp)
    assert r is not None and r.header.frame_id == "cam_right_optical"


def test_grey_and_big_endian_16bit_input(sgbm_node):
    left, right, _ = textured_scene(H, W, seed=5)
    grey_l = (left.mean(axis=2) * 40).astype(np.uint16)  # 16-bit IR-like, ~10 bits used
    grey_r = (right.mean(axis=2) * 40).astype(np.uint16)
    infos = rectified_infos(W, H, F, B, CX_L, CX_R, CY)
    stamps = []
    for big in (False, True):
        stamp = time.time_ns()
        lm, rm = numpy_to_image(grey_l, "mono16"), numpy_to_image(grey_r, "mono16")
        if big:
            for m in (lm, rm):
                m.data = image_to_array(m).astype(">u2").tobytes()
                m.is_bigendian = 1
        sgbm_node.publish(lm, rm, infos[0], infos[1], stamp)
        sgbm_node.wait_outputs(stamp, ["disparity", "left_rect/image"])
        stamps.append(stamp)
    little, big = (sgbm_node.received.by_stamp("disparity", s) for s in stamps)
    assert np.isfinite(disparity_from_msg(little)).mean() > 0.3
    np.testing.assert_array_equal(image_to_array(little.image), image_to_array(big.image))
    assert sgbm_node.received.by_stamp("left_rect/image", stamps[1]).encoding == "mono8"


def test_diagnostics_report_rate_latency_and_counts(sgbm_node):
    left, right, _ = textured_scene(H, W)
    infos = rectified_infos(W, H, F, B, CX_L, CX_R, CY)
    for _ in range(3):
        stamp = time.time_ns()
        sgbm_node.publish_arrays(left, right, "rgb8", infos, stamp)
        sgbm_node.wait_outputs(stamp, ["disparity"])

    def ours():
        for arr in sgbm_node.received.get("diagnostics"):
            for s in arr.status:
                if s.hardware_id == sgbm_node.node.get_fully_qualified_name():
                    yield {kv.key: kv.value for kv in s.values}, s

    assert wait_for(lambda: any(float(v["rate_hz"]) > 0 for v, _ in ours()), 5.0)
    values, status = [(v, s) for v, s in ours() if float(v["rate_hz"]) > 0][-1]
    assert int(values["frames_published"]) >= 3 and values["backend"] == "sgbm"
    assert 0.0 <= float(values["latency_mean_s"]) < 10.0
    assert 0.0 < float(values["processing_mean_s"]) < 10.0
    assert {"dropped_pairs", "pairs_received"} <= set(values)


def test_runtime_parameter_changes_are_validated_and_applied(sgbm_node):
    for bad, fragment in ((dict(rectify="sometimes"), "rectify"), (dict(iters=0), ""),
                          (dict(queue_size=9), "read-only"), (dict(backend="foundation_stereo"), "checkpoint"),
                          (dict(min_depth=5.0, max_depth=1.0), "max_depth"), (dict(sgbm_block_size=4), "")):
        results = set_params(sgbm_node, **bad)
        assert not all(r.successful for r in results), bad
        assert fragment.lower() in " ".join(r.reason for r in results).lower(), (bad, results)
    assert sgbm_node.node.get_parameter("rectify").value == "auto"
    assert sgbm_node.node.get_parameter("backend").value == "sgbm"

    results = set_params(sgbm_node, sgbm_num_disparities=48, points_organized=False)
    assert all(r.successful for r in results), results
    left, right, _ = textured_scene(H, W)
    stamp = time.time_ns()
    sgbm_node.publish_arrays(left, right, "rgb8", rectified_infos(W, H, F, B, CX_L, CX_R, CY), stamp)
    out = sgbm_node.wait_outputs(stamp, ["disparity", "points2"])
    assert out["disparity"].max_disparity == pytest.approx(47 - (CX_L - CX_R))
    pc = out["points2"]
    assert pc.height == 1 and pc.is_dense and 0 < pc.width < H * W
    assert np.isfinite(pointcloud2_to_array(pc)["z"]).all()
    assert all(r.successful for r in set_params(sgbm_node, sgbm_num_disparities=32, points_organized=True))


def test_only_outputs_with_subscribers_are_computed():
    h = harness(dict(backend="sgbm", sgbm_num_disparities=32), subscribe=("disparity",))
    try:
        seen = []
        proc = h.node.processor
        original = proc.stage_messages_batch

        def spy(frames, **kw):
            seen.extend(frame.outputs for frame in frames)
            return original(frames, **kw)

        proc.stage_messages_batch = spy
        left, right, _ = textured_scene(H, W)
        stamp = time.time_ns()
        h.publish_arrays(left, right, "rgb8", rectified_infos(W, H, F, B, CX_L, CX_R, CY), stamp)
        h.wait_outputs(stamp, ["disparity"])
        assert len(seen) == 1
        assert not (seen[0].depth or seen[0].points or seen[0].disparity_color or seen[0].rectified_images)
        # A subscriber to a rectified picture asks for the rectified pair (a GPU-to-host copy on the
        # device path) and gets it.
        h.subscribe("right_rect/image")
        h.wait_connected(["right_rect/image"])
        stamp = time.time_ns()
        h.publish_arrays(left, right, "rgb8", rectified_infos(W, H, F, B, CX_L, CX_R, CY), stamp)
        out = h.wait_outputs(stamp, ["disparity", "right_rect/image"])
        assert len(seen) == 2 and seen[1].rectified_images and not seen[1].points
        assert np.array_equal(image_to_array(out["right_rect/image"]), right)
    finally:
        h.close()


def test_depth_and_points_are_computed_in_the_publisher_thread_after_the_next_frames_host_work():
    """The worker matches; the publisher thread finishes (depth, points) and publishes, while the
    worker goes on with the next pair. The worker tells the handover when a frame leaves the host."""
    h = harness(dict(backend="sgbm", sgbm_num_disparities=32), subscribe=("depth", "points2"))
    try:
        node, proc = h.node, h.node.processor
        threads, told = [], []
        original_finish, original_done = type(proc)._finish, node._frames.host_work_done
        proc._finish = lambda frame: (threads.append(threading.current_thread().name), original_finish(proc, frame))[1]
        node._frames.host_work_done = lambda: (told.append(threading.current_thread().name), original_done())[1]
        left, right, _ = textured_scene(H, W)
        stamp = time.time_ns()
        h.publish_arrays(left, right, "rgb8", rectified_infos(W, H, F, B, CX_L, CX_R, CY), stamp)
        out = h.wait_outputs(stamp, ["depth", "points2"])
        assert threads == [node._frames.publisher.name] and told == [node._frames.worker.name]
        assert np.isfinite(image_to_array(out["depth"])).any()
    finally:
        h.close()


@pytest.mark.slow
def test_slow_inference_drops_old_pairs_and_keeps_the_newest():
    # 640x480 with 256 disparities keeps SGBM busy long enough for pairs to pile up.
    h = harness(dict(backend="sgbm", sgbm_num_disparities=256, sgbm_mode="sgbm", qos_reliability="reliable",
                     queue_size=20, qos_depth=20), subscribe=("disparity",))
    try:
        left, right, _ = textured_scene(480, 640)
        infos = rectified_infos(640, 480, 400.0, 0.1, 320.0, 320.0, 240.0)
        stamps = []
        for _ in range(8):
            stamps.append(time.time_ns())
            h.publish_arrays(left, right, "rgb8", infos, stamps[-1])
            time.sleep(0.01)
        h.wait_outputs(stamps[-1], ["disparity"], timeout_s=60.0)  # the newest pair always comes out
        st = h.node._stats
        assert wait_for(lambda: st.pairs_received == 8, 5.0)
        published = [s for s in stamps if h.received.by_stamp("disparity", s) is not None]
        assert st.dropped >= 1
        assert len(published) + st.dropped == 8  # every pair is either processed or counted as dropped
        assert len(set(published)) == len(published)
    finally:
        h.close()


def test_foundation_stereo_end_to_end(vits_checkpoint):
    # Random weights: disparities are meaningless as depth, but every output must be consistent.
    w, hgt = 256, 64
    h = harness(dict(backend="foundation_stereo", checkpoint=str(vits_checkpoint), device="cpu", iters=2,
                     precision="fp32", scale=1.0))
    try:
        left, right, _ = textured_scene(hgt, w)
        infos = rectified_infos(w, hgt, F, B, w / 2, w / 2 - 2.0, hgt / 2)
        stamp = time.time_ns()
        h.publish_arrays(left, right, "rgb8", infos, stamp)
        out = h.wait_outputs(stamp, [t for t in OUTPUTS if not t.startswith("right_rect")], timeout_s=300.0)
        valid = check_outputs(out, stamp, left, F, B, F, w / 2, hgt / 2, min_valid=0.02)
        d = out["disparity"]
        assert d.delta_d == 0.0 and d.min_disparity == pytest.approx(-2.0)
        assert d.max_disparity == pytest.approx(416 - 2.0)  # the network's max_disp, adjusted
        # Matches outside the right image were removed: raw disparity <= column.
        raw = disparity_from_msg(d) + 2.0
        cols = np.broadcast_to(np.arange(w, dtype=np.float32), raw.shape)
        assert (raw[valid] <= cols[valid] + 1e-3).all()
    finally:
        h.close()


def test_publishing_a_frame_overlaps_matching_the_next_and_keeps_the_order():
    """The publisher thread builds and sends frame N while the worker matches frame N+1, so the
    message building does not add to the network's time per frame. Shown with events, not timing:
    the publication of the first frame waits until the worker is matching the second."""
    h = harness(dict(backend="sgbm", sgbm_num_disparities=32), subscribe=("disparity", "points2"))
    try:
        node = h.node
        matching_second = threading.Event()
        overlapped = []
        proc = node.processor
        real_process, real_publish = proc.match_staged, node._publish
        calls = []

        def process(*args, **kw):
            calls.append(1)
            if len(calls) == 2:
                matching_second.set()
            return real_process(*args, **kw)

        def publish(matched):
            if not overlapped:  # the first frame: hold it until the worker works on the next one
                overlapped.append(matching_second.wait(20.0))
            return real_publish(matched)

        proc.match_staged = process
        node._publish = publish
        left, right, _ = textured_scene(H, W)
        infos = rectified_infos(W, H, F, B, CX_L, CX_R, CY)
        first = time.time_ns()
        h.publish_arrays(left, right, "rgb8", infos, first)
        assert wait_for(lambda: node._frames.publishing == first, 20.0)  # handed over, being published
        second = first + 1000
        h.publish_arrays(left, right, "rgb8", infos, second)
        h.wait_outputs(second, ["disparity", "points2"])
        assert overlapped == [True]
        stamps = [int(m.header.stamp.sec) * 10 ** 9 + int(m.header.stamp.nanosec) for m in h.received.get("disparity")]
        assert stamps == [first, second]  # in order, none lost
        assert node._stats.frames_published == 2 and node._stats.dropped == 0
    finally:
        h.close()


def test_a_slow_publisher_holds_back_one_frame_at_most_and_stop_waits_for_it():
    h = harness(dict(backend="sgbm", sgbm_num_disparities=32), subscribe=("disparity",))
    try:
        node = h.node
        release = threading.Event()
        real_publish = node._publish

        def publish(matched):
            release.wait(20.0)
            return real_publish(matched)

        node._publish = publish
        left, right, _ = textured_scene(H, W)
        infos = rectified_infos(W, H, F, B, CX_L, CX_R, CY)
        stamps = [time.time_ns() + i * 1000 for i in range(4)]
        h.publish_arrays(left, right, "rgb8", infos, stamps[0])
        assert wait_for(lambda: node._frames.publishing == stamps[0], 20.0)
        h.publish_arrays(left, right, "rgb8", infos, stamps[1])
        # The second frame is matched and waits in the hand-over; the worker does not run ahead.
        assert wait_for(lambda: node._frames.matched is not None and node._frames.pending is None, 20.0)
        h.publish_arrays(left, right, "rgb8", infos, stamps[2])
        assert wait_for(lambda: node._frames.in_flight == stamps[2], 20.0)
        h.publish_arrays(left, right, "rgb8", infos, stamps[3])
        # The worker matched the third frame and waits for the hand-over slot; the fourth waits as
        # the pending pair: nothing piles up beyond one frame per stage.
        assert wait_for(lambda: node._frames.pending is not None, 20.0)
        time.sleep(0.2)
        assert (node._frames.in_flight == stamps[2] and node._frames.matched is not None
                and node._frames.publishing == stamps[0])
        release.set()
        h.wait_outputs(stamps[3], ["disparity"])
        got = [int(m.header.stamp.sec) * 10 ** 9 + int(m.header.stamp.nanosec) for m in h.received.get("disparity")]
        assert got == stamps
        # stop() with a frame being published waits for the publisher thread too.
        release.clear()
        h.publish_arrays(left, right, "rgb8", infos, stamps[3] + 1000)
        assert wait_for(lambda: node._frames.publishing is not None, 20.0)
        threading.Timer(0.3, release.set).start()
        assert node.stop(timeout_s=10.0)
        assert not node._frames.publisher.is_alive() and not node._frames.worker.is_alive()
    finally:
        release.set()
        h.close()


def test_an_exception_in_the_worker_or_the_publisher_is_counted_and_the_node_goes_on():
    h = harness(dict(backend="sgbm", sgbm_num_disparities=32, log_throttle_s=0.0), subscribe=("disparity",))
    try:
        node = h.node
        proc = node.processor
        real_process, real_publish = proc.match_staged, node._publish
        fail = {"process": 1, "publish": 1}

        def process(*args, **kw):
            if fail["process"]:
                fail["process"] -= 1
                raise RuntimeError("a bug in matching")
            return real_process(*args, **kw)

        def publish(matched):
            if fail["publish"]:
                fail["publish"] -= 1
                raise RuntimeError("a bug in publishing")
            return real_publish(matched)

        proc.match_staged = process
        node._publish = publish
        left, right, _ = textured_scene(H, W)
        infos = rectified_infos(W, H, F, B, CX_L, CX_R, CY)
        stamps = [time.time_ns() + i * 1000 for i in range(3)]
        for i, stamp in enumerate(stamps):
            h.publish_arrays(left, right, "rgb8", infos, stamp)
            assert wait_for(lambda: h.problem_count("internal_error") + node._stats.frames_published == i + 1, 20.0)
        h.wait_outputs(stamps[2], ["disparity"])  # the third frame goes through
        assert h.problem_count("internal_error") == 2
        assert node._frames.worker.is_alive() and node._frames.publisher.is_alive()
        lines = " ".join(h.rosout_lines())
        assert "frame failed: RuntimeError: a bug in matching" in lines
        assert "publishing failed: RuntimeError: a bug in publishing" in lines
    finally:
        h.close()
