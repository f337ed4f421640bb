"""How much the running node adds on top of the network: frames per second of a live
``stereo_depth_node`` whose network is replaced by a wait of a given length.

The node runs in this process with its real code (synchroniser, worker, publisher thread,
message conversions, rclpy publishers). The network is a stored disparity returned after
``network_ms`` of waiting with the GIL released, as a GPU network leaves the host while it runs.
A second process plays the rest of the robot: it publishes camera pairs faster than the node
can take them and subscribes to disparity, depth, points2 and left_rect/image, so every output is
built and sent over DDS. The node's frame period against ``network_ms`` is what it adds.

``serial`` runs the same with the pipeline off (the worker waits for each frame's publication
before it takes the next pair), to show what the publisher thread saves.

Used by ``foundation-stereo-benchmark --node-rate MS``, which starts the robot side as
``python -m foundation_stereo_ros.tools.node_rate --robot-side ...``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

OUTPUT_TOPICS = ("disparity", "depth", "points2", "left_rect/image")


def measure_node_rate(height: int, width: int, network_ms: float, device: Any = "cpu", geometry: str = "host",
                      seconds: float = 4.0, serial: bool = False, domain_id: Optional[int] = None,
                      feed_ratio: float = 0.5) -> Dict[str, Any]:
    """Run the node for ``seconds`` after a warm-up and report its rate and overhead (see the module
    docstring). ``geometry``: the ``geometry_device`` parameter (host, network or auto)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from ..ros.stereo_depth_node import StereoDepthNode
    from .benchmark import stored_disparity_processor, summarize

    domain = domain_id if domain_id is not None else 1 + (os.getpid() * 13) % 100
    # Both sides on this machine only: the measurement must not depend on (or disturb) the network.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    namespace = f"/node_rate_{os.getpid()}"
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    node = executor = robot = None
    try:
        node = StereoDepthNode(context=context, namespace=namespace, parameter_overrides=[
            Parameter("backend", value="sgbm"), Parameter("qos_reliability", value="reliable"),
            Parameter("rectify", value="always"), Parameter("diagnostics_period_s", value=60.0)])
        processor = stored_disparity_processor(height, width, device, geometry, delay_s=network_ms / 1e3)
        node.use_processor(processor)
        node.serial_publishing = serial
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        period_s = max(network_ms * feed_ratio / 1e3, 0.005)
        robot = subprocess.Popen([sys.executable, "-m", "foundation_stereo_ros.tools.node_rate", "--robot-side",
                                  "--namespace", namespace, "--height", str(height), "--width", str(width),
                                  "--period-s", str(period_s)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60.0
        while not all(node.count_subscribers(f"{namespace}/{topic}") > 0 for topic in OUTPUT_TOPICS):
            if time.monotonic() > deadline or robot.poll() is not None:
                raise RuntimeError(f"the robot side did not connect: {robot.stderr.read() if robot.poll() else ''}")
            time.sleep(0.05)
        stats = node._stats
        deadline = time.monotonic() + 60.0
        while stats.frames_published < 3:  # warm-up: remap tables, first transfers, DDS matching
            if time.monotonic() > deadline:
                raise RuntimeError("the node published no frames")
            time.sleep(0.05)
        with stats.lock:
            stats.window.clear()
            received0, dropped0 = stats.pairs_received, stats.dropped
        time.sleep(seconds)
        with stats.lock:
            window = list(stats.window)
            received, dropped = stats.pairs_received - received0, stats.dropped - dropped0
            problems = dict(stats.problems)
    finally:
        if robot is not None:
            robot.terminate()
            try:
                robot.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                robot.kill()
        if node is not None:
            node.stop()
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
    if len(window) < 3:
        raise RuntimeError(f"only {len(window)} frames published in {seconds} s")
    times = [w[0] for w in window]
    period_ms = (times[-1] - times[0]) / (len(times) - 1) * 1e3
    return dict(height=height, width=width, network_ms=network_ms, geometry_device=geometry,
                on_device=processor.geometry_on_device, pipeline="serial" if serial else "pipelined",
                frames=len(window), rate_hz=1e3 / period_ms, period_ms=period_ms,
                overhead_pct=(period_ms / network_ms - 1.0) * 100.0 if network_ms > 0 else None,
                processing_ms=summarize([w[2] * 1e3 for w in window]), pairs_received=received,
                pairs_dropped=dropped, problems=problems, outputs=list(OUTPUT_TOPICS))


def format_rows(rows: Sequence[Dict[str, Any]]) -> str:
    hdr = (f"{'size':>9} {'geometry':>8} {'pipeline':>9} {'network ms':>10} {'period ms':>9} {'rate Hz':>8} "
           f"{'adds':>7} {'frames':>6}")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        adds = f"{r['overhead_pct']:6.1f}%" if r.get("overhead_pct") is not None else f"{'-':>7}"
        lines.append(f"{r['height']}x{r['width']:<5} {r['geometry_device']:>8} {r['pipeline']:>9} "
                     f"{r['network_ms']:10.1f} {r['period_ms']:9.2f} {r['rate_hz']:8.2f} {adds} {r['frames']:6d}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ the robot side
def _robot_side(namespace: str, height: int, width: int, period_s: float) -> int:
    """Publish a rectified pair with CameraInfo every ``period_s`` (fresh stamps) and take every output."""
    import signal

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from stereo_msgs.msg import DisparityImage

    from ..pipeline.calibration import make_camera_model
    from ..ros.conversions import camera_info_msg, numpy_to_image

    rclpy.init()
    node = rclpy.create_node("node_rate_robot", namespace=namespace)
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    rng = np.random.default_rng(0)
    images = [numpy_to_image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "rgb8") for _ in range(2)]
    f = 0.9 * width
    k = [f, 0, width / 2, 0, f, height / 2, 0, 0, 1]
    infos = [camera_info_msg(make_camera_model(width, height, k, [0.0] * 5, np.eye(3).reshape(-1),
                                               [f, 0, width / 2, tx, 0, f, height / 2, 0, 0, 0, 1, 0]))
             for tx in (0.0, -f * 0.12)]
    pubs = [node.create_publisher(Image, "left/image_rect", qos), node.create_publisher(CameraInfo, "left/camera_info", qos),
            node.create_publisher(Image, "right/image_rect", qos), node.create_publisher(CameraInfo, "right/camera_info", qos)]
    types = {"disparity": DisparityImage, "depth": Image, "points2": PointCloud2, "left_rect/image": Image}
    for topic in OUTPUT_TOPICS:  # taking every output is the subscriber's share of the work
        node.create_subscription(types[topic], topic, lambda _msg: None, qos)

    def send() -> None:
        now = node.get_clock().now().to_msg()
        for msg, frame in ((images[0], "left"), (infos[0], "left"), (images[1], "right"), (infos[1], "right")):
            msg.header.stamp = now
            msg.header.frame_id = frame
        pubs[1].publish(infos[0])
        pubs[3].publish(infos[1])
        pubs[0].publish(images[0])
        pubs[2].publish(images[1])

    node.create_timer(period_s, send)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    try:
        executor.spin()
    except Exception:  # noqa: BLE001 - ExternalShutdownException / KeyboardInterrupt end the run
        pass
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The robot side, started by :func:`measure_node_rate` (measure with foundation-stereo-benchmark)."""
    p = argparse.ArgumentParser(description="the publishing and subscribing side of a --node-rate measurement")
    p.add_argument("--robot-side", action="store_true", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--period-s", type=float, required=True)
    args = p.parse_args(argv)
    return _robot_side(args.namespace, args.height, args.width, args.period_s)


if __name__ == "__main__":
    sys.exit(main())
