"""Load and soak: cameras faster than inference, and thousands of frames through a running node.

* Load (node in this process, a matcher slowed to ~6 Hz, cameras at 30 Hz): latency stays
  bounded because the newest pair wins, every pair is either processed or counted as dropped,
  the executor keeps receiving at the camera rate, and memory does not grow with the backlog.
* Soak (node as its own process, tiny images, SGBM): a few thousand frames; the node's resident
  memory is stable after warm-up, and every output matches a distinct input stamp, none lost
  between the node and its subscriber, none duplicated.
"""
from __future__ import annotations

import pytest
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image
from stereo_msgs.msg import DisparityImage

import foundation_stereo_ros.pipeline.processor as processor_module
from foundation_stereo_ros.pipeline import DisparityBackend
from foundation_stereo_ros.ros.conversions import numpy_to_image

from _ros_helpers import (Collector, NodeHarness, diagnostic_values, domain_id_for_tests, rectified_infos, stamp_msg,
                          stamp_of, textured_scene, wait_for)

pytestmark = pytest.mark.slow  # load and soak runs of several seconds each

REPO = Path(__file__).resolve().parents[2]


def rss_mb(pid: int = 0) -> float:
    """Resident set size of a process (this one by default), MiB."""
    with open(f"/proc/{pid or os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


class SlowBackend(DisparityBackend):
    """A real matcher behind a fixed delay: inference slower than the cameras."""

    def __init__(self, inner: DisparityBackend, delay_s: float) -> None:
        self.inner, self.delay_s, self.name = inner, delay_s, inner.name
        self.busy = threading.Event()  # set while a frame is being matched

    def compute(self, left, right, grey=False):
        self.busy.set()
        try:
            time.sleep(self.delay_s)
            return self.inner.compute(left, right, grey)
        finally:
            self.busy.clear()

    def search_range(self, width):
        return self.inner.search_range(width)

    @property
    def delta_d(self):
        return self.inner.delta_d

    def valid_window(self, width, height):
        return self.inner.valid_window(width, height)


def test_cameras_faster_than_inference_keep_latency_bounded_and_memory_flat(monkeypatch):
    # Cameras at 30 Hz, inference at ~6 Hz. Cameras, node and subscriber share this process and
    # its two cores; faster cameras would measure that process's executor, not the node.
    delay, rate_hz, duration_s = 0.15, 30.0, 4.0
    real_make_backend = processor_module.make_backend
    monkeypatch.setattr(processor_module, "make_backend",
                        lambda config, previous=None: SlowBackend(real_make_backend(config), delay))
    # 240 x 320 colour: each pair is ~0.5 MB, so a backlog that grew with the input would show in RSS.
    h, w = 240, 320
    node = NodeHarness(dict(backend="sgbm", sgbm_num_disparities=32, diagnostics_period_s=0.5),
                       namespace="/load", subscribe=("disparity",), listen_rosout=False)
    try:
        left, right, _ = textured_scene(h, w, seed=6)
        infos = rectified_infos(w, h, 300.0, 0.1, w / 2, w / 2, h / 2)
        arrivals = {}  # stamp -> receive time, from the output callback
        # Newest pair wins, seen from inside the node: as the worker starts on a pair, how many
        # newer pairs had the node already taken in? (A queue would answer: most of them.)
        frames, offered, newer_at_start = node.node._frames, [], []
        real_offer, real_match = frames.offer, frames._match

        def offer(stamp, pair, **camera):
            offered.append(stamp)
            real_offer(stamp, pair, **camera)

        def match(settings, pair):
            current = frames.in_flight
            newer_at_start.append(sum(1 for s in list(offered) if s > current))
            return real_match(settings, pair)

        monkeypatch.setattr(frames, "offer", offer)
        monkeypatch.setattr(frames, "_match", match)
        node.subs.append(node.tester.create_subscription(
            DisparityImage, "/load/disparity", lambda m: arrivals.setdefault(stamp_of(m), time.time_ns()),
            QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)))
        warm = time.time_ns()  # one frame first: allocations of the first frame are not growth
        node.publish_arrays(left, right, "rgb8", infos, warm)
        node.wait_outputs(warm, ["disparity"])

        sent, rss = [], []
        period = 1.0 / rate_hz
        t_next = time.monotonic()
        end = t_next + duration_s
        while time.monotonic() < end:
            stamp = time.time_ns()
            node.publish_arrays(left, right, "rgb8", infos, stamp)
            sent.append(stamp)
            if len(sent) % 25 == 0:
                rss.append(rss_mb())
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
        node.wait_outputs(sent[-1], ["disparity"], timeout_s=30.0)  # the newest pair always comes out
        time.sleep(2 * delay)
        st = node.node._stats

        out = sorted(s for s in arrivals if s in set(sent))
        received, published, dropped = st.pairs_received - 1, st.frames_published - 1, st.dropped
        print(f"\nload: sent {len(sent)} pairs at {rate_hz:g} Hz, node received {received}, processed {published}, "
              f"dropped {dropped}; RSS {rss[0]:.1f} -> {max(rss):.1f} MiB")
        # The executor is never blocked by inference: it takes in most pairs at camera rate, many
        # times what it processes (a blocked executor would take in about one pair per frame
        # processed). Publisher, node and subscriber share one process and two cores here, so
        # best-effort delivery loses some messages under load.
        assert received >= 0.25 * len(sent) and received >= 3 * published
        # Every pair is processed or counted as dropped; most are dropped (inference is 5x slower).
        # A lost single message shows up as an unpaired one, never as a wrong pair.
        assert published + dropped == received and set(st.problems) <= {"unpaired"}
        assert dropped >= 0.5 * received
        assert len(out) == published and out[-1] == sent[-1]
        # Newest pair wins: outputs in stamp order, and the worker always starts on the newest
        # pair the node has taken in (one or two more may arrive between its taking the pair and
        # the probe, when this process starves its threads). This is measured
        # inside the node: the outputs' age on arrival here also counts the moments when this one
        # process (cameras, node and subscriber on two cores, after the rest of the suite) starves
        # itself, which a robot's separate processes do not share, so it is printed, not bounded
        # (a queue would show here as well: it grows by ~rate * delay - 1 pairs per processed frame).
        assert list(out) == sorted(out)
        print(f"load: pairs newer than the one being matched when matching started: {newer_at_start}")
        assert len(newer_at_start) >= published and max(newer_at_start) <= 2, newer_at_start
        sent_ns = np.array(sent)
        latencies = np.array([(arrivals[s] - s) / 1e9 for s in out])
        age = np.array([np.count_nonzero((sent_ns > s) & (sent_ns <= arrivals[s])) for s in out])
        print(f"load: output age on arrival {age.max()} pairs at most, latency {latencies.max():.3f} s at most")
        # Memory: a backlog of the pairs dropped here would be ~0.5 MB each.
        assert max(rss) - rss[0] < 25.0, rss
        # ... and /diagnostics reports the drops.
        fqn = node.node.get_fully_qualified_name()
        assert wait_for(lambda: any(int(v.get("dropped_pairs", 0)) == dropped
                                    for v in diagnostic_values(node.received, fqn)), 5.0)
    finally:
        node.close()


# ---------------------------------------------------------------------------------------------- soak
def test_soak_thousands_of_frames_stable_memory_no_lost_or_duplicated_outputs():
    n_frames, burst = 3000, 3
    h, w = 24, 64
    domain = domain_id_for_tests(offset=71)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "foundation_stereo_ros.ros.stereo_depth_node", "--ros-args", "-r", "__ns:=/soak",
           "-p", "backend:=sgbm", "-p", "sgbm_num_disparities:=16", "-p", "qos_reliability:=reliable",
           "-p", "qos_depth:=50", "-p", "diagnostics_period_s:=0.5"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    tester = rclpy.create_node("soak_tester", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(tester)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    try:
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {name: tester.create_publisher(t, f"/soak/{name}", qos)
                for name, t in (("left/image_rect", Image), ("left/camera_info", CameraInfo),
                                ("right/image_rect", Image), ("right/camera_info", CameraInfo))}
        outputs, lock = [], threading.Lock()

        def on_output(msg):
            with lock:
                outputs.append(stamp_of(msg))

        received = Collector()
        tester.create_subscription(DisparityImage, "/soak/disparity", on_output,
                                   QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
        tester.create_subscription(DiagnosticArray, "/diagnostics", lambda m: received.add("diagnostics", m),
                                   QoSProfile(depth=50))
        spinner.start()
        assert wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values())
                        and tester.count_publishers("/soak/disparity") > 0, 60.0), "".join(lines)

        left, right, _ = textured_scene(h, w, seed=8)
        l_img, r_img = numpy_to_image(left, "rgb8"), numpy_to_image(right, "rgb8")
        l_info, r_info = rectified_infos(w, h, 60.0, 0.1, w / 2, w / 2, h / 2)
        t0 = time.time_ns()
        stamps = [t0 + i * 1_000_000 for i in range(n_frames)]  # 1 ms apart: a 1 kHz camera, distinct stamps
        rss_samples = []
        start = time.monotonic()
        for i, stamp in enumerate(stamps):
            for msg, frame in ((l_img, "left"), (l_info, "left"), (r_img, "right"), (r_info, "right")):
                stamp_msg(msg.header, stamp, frame)
            pubs["left/camera_info"].publish(l_info)
            pubs["right/camera_info"].publish(r_info)
            pubs["left/image_rect"].publish(l_img)
            pubs["right/image_rect"].publish(r_img)
            if (i + 1) % burst == 0:  # flow control: the newest pair of a burst always comes out
                wait_for(lambda: outputs and outputs[-1] == stamp, 10.0, period_s=0.001)
            if (i + 1) % 250 == 0:
                rss_samples.append(rss_mb(proc.pid))
        assert wait_for(lambda: outputs and outputs[-1] == stamps[-1], 20.0)
        elapsed = time.monotonic() - start
        fqn = "/soak/stereo_depth_node"
        assert wait_for(lambda: any(int(v.get("pairs_received", 0)) == n_frames
                                    and int(v.get("frames_published", 0)) == len(outputs)
                                    for v in diagnostic_values(received, fqn)), 10.0), \
            (diagnostic_values(received, fqn)[-1:], len(outputs))
        final = [v for v in diagnostic_values(received, fqn) if int(v["pairs_received"]) == n_frames][-1]
        published, dropped = int(final["frames_published"]), int(final["dropped_pairs"])
        print(f"\nsoak: {n_frames} pairs in {elapsed:.1f} s ({n_frames / elapsed:.0f} Hz): {published} processed, "
              f"{dropped} dropped; node RSS {', '.join(f'{r:.1f}' for r in rss_samples)} MiB")
        # Every pair accounted for: processed or dropped as stale; nothing failed.
        assert published + dropped == n_frames
        assert not [k for k in final if k.startswith("problem.")], final
        assert published >= n_frames // burst  # at least the newest pair of every burst
        # Every output is a distinct input stamp, none lost between node and subscriber.
        with lock:
            got = list(outputs)
        assert len(got) == len(set(got)) == published
        assert set(got) <= set(stamps)
        assert got == sorted(got)
        # Stable memory after warm-up (the first 500 frames): a leak of one frame's messages per
        # frame would add ~40 MiB here.
        warm = rss_samples[1]
        assert max(rss_samples[2:]) - warm < 8.0, rss_samples
        # /diagnostics reports the same resident memory (rss_mb), for watching a node in the field.
        assert abs(float(final["rss_mb"]) - rss_samples[-1]) < 10.0, (final["rss_mb"], rss_samples)
    finally:
        executor.shutdown(timeout_sec=2.0)
        tester.destroy_node()
        rclpy.try_shutdown(context=context)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, "".join(lines)
