"""The robot side of ``foundation-stereo-benchmark --node-rate MS``: a process that publishes
camera pairs faster than the node can take them and subscribes to every output the node
publishes, so each is built and sent over DDS.

Started by :func:`foundation_stereo_ros.tools.benchmark.live_node.measure_node_rate` as
``python -m foundation_stereo_ros.tools.node_rate --robot-side ...``; it imports nothing of the
benchmark, so it starts without loading PyTorch. As it ends (SIGTERM) it prints one JSON line with
the times it sent its pairs, so the benchmark can count the pairs lost on the way to the node.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

from ..pipeline.calibration import make_camera_model

# What the node publishes and the robot side takes (the benchmark waits until it takes all of them).
OUTPUT_TOPICS = ("disparity", "depth", "points2", "left_rect/image")

#: The key of the line the robot side prints as it ends: the time.monotonic() of every pair it sent
#: (one clock for all processes of the machine).
SENT_KEY = "pairs_sent_at"

#: How the robot side takes the outputs. 'messages': each as a Python message, as a Python
#: subscriber would; 'raw': each as its serialised bytes (every byte still crosses DDS, but the
#: probe skips rclpy's conversion to Python, a share of the same two cores the node runs on).
PROBES = ("messages", "raw")


def _robot_side(namespace: str, height: int, width: int, period_s: float, outputs: Sequence[str] = OUTPUT_TOPICS,
                raw: bool = False) -> int:
    """Publish a rectified pair with CameraInfo every ``period_s`` (fresh stamps) and take ``outputs``
    (as serialised bytes when ``raw``)."""
    # ROS is imported here, not at the top: the benchmark reads OUTPUT_TOPICS on machines without it.
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from stereo_msgs.msg import DisparityImage

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
    for topic in outputs:  # taking every output is the subscriber's share of the work
        node.create_subscription(types[topic], topic, lambda _msg: None, qos, raw=raw)

    sent: List[float] = []  # time.monotonic() of each pair sent: the benchmark counts those in its window

    def send() -> None:
        sent.append(time.monotonic())
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
    print(json.dumps({SENT_KEY: sent}), flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The robot side, started by the benchmark's ``measure_node_rate`` (measure with foundation-stereo-benchmark)."""
    p = argparse.ArgumentParser(description="the publishing and subscribing side of a --node-rate measurement")
    p.add_argument("--robot-side", action="store_true", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--period-s", type=float, required=True)
    p.add_argument("--outputs", default=",".join(OUTPUT_TOPICS), help="comma list of the outputs to take")
    p.add_argument("--probe", choices=PROBES, default="messages", help="how the outputs are taken")
    args = p.parse_args(argv)
    outputs = [t for t in args.outputs.split(",") if t]
    unknown = sorted(set(outputs) - set(OUTPUT_TOPICS))
    if unknown:
        p.error(f"unknown outputs {unknown}; the node's are {', '.join(OUTPUT_TOPICS)}")
    return _robot_side(args.namespace, args.height, args.width, args.period_s, outputs, raw=args.probe == "raw")


if __name__ == "__main__":
    sys.exit(main())
