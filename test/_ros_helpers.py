"""Helpers for tests that run stereo_depth_node with real rclpy publishers and subscribers.

A :class:`NodeHarness` starts the node in this process (its executor spins in a thread) inside a
private rclpy context on a test-specific ROS domain (localhost discovery only), plus a test node
that publishes the four inputs and records every output. Scene builders make synthetic stereo
pairs with known geometry and their CameraInfo.
"""
from __future__ import annotations

import array
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

# Keep discovery on this machine; other engineers run ROS tests here at the same time.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParametersAtomically  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

from foundation_stereo_ros.ros.conversions import numpy_to_image  # noqa: E402
from foundation_stereo_ros.ros.stereo_depth_node import StereoDepthNode  # noqa: E402

OUTPUTS = {"disparity": DisparityImage, "depth": Image, "depth/camera_info": CameraInfo, "points2": PointCloud2,
           "left_rect/image": Image, "left_rect/camera_info": CameraInfo, "right_rect/image": Image,
           "right_rect/camera_info": CameraInfo, "disparity_color": Image}


def domain_id_for_tests(offset: int = 0) -> int:
    """A ROS domain for this test process (ROS_DOMAIN_ID must stay <= 101 on Linux)."""
    return 1 + (os.getpid() * 7 + offset) % 100


def stamp_msg(header: Any, t_ns: int, frame_id: str) -> None:
    header.stamp.sec = int(t_ns // 1_000_000_000)
    header.stamp.nanosec = int(t_ns % 1_000_000_000)
    header.frame_id = frame_id


def stamp_of(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def camera_info(width: int, height: int, K: np.ndarray, D: Sequence[float], R: np.ndarray, P: np.ndarray,
                distortion_model: str = "plumb_bob") -> CameraInfo:
    msg = CameraInfo()
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = distortion_model
    msg.d = array.array("d", [float(v) for v in D])
    msg.k = np.asarray(K, np.float64).reshape(-1).copy()
    msg.r = np.asarray(R, np.float64).reshape(-1).copy()
    msg.p = np.asarray(P, np.float64).reshape(-1).copy()
    return msg


def rectified_infos(width: int, height: int, f: float, baseline: float, cx_left: float, cx_right: float,
                    cy: float) -> Tuple[CameraInfo, CameraInfo]:
    """CameraInfo of an already-rectified pair (D = 0, R = I) with the given principal points."""
    def one(cx: float, tx: float) -> CameraInfo:
        K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
        P = np.array([[f, 0, cx, tx], [0, f, cy, 0], [0, 0, 1, 0]])
        return camera_info(width, height, K, [0.0] * 5, np.eye(3), P)
    return one(cx_left, 0.0), one(cx_right, -f * baseline)


def textured_scene(height: int, width: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left RGB, right RGB, raw disparity x_l - x_r) of a textured scene with known disparity:
    a background plane at 12 px and a raised rectangle at 24 px (right = left shifted by d)."""
    rng = np.random.default_rng(seed)
    # Smoothed random texture in colour, wider than the image so the right view has content.
    pad = 64
    tex = rng.integers(0, 256, (height, width + pad, 3)).astype(np.float32)
    tex = cv2.GaussianBlur(tex, (0, 0), 1.0)
    tex = np.clip((tex - tex.mean()) * 2.5 + 128, 0, 255).astype(np.uint8)
    disp = np.full((height, width), 12.0, np.float32)
    disp[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = 24.0
    left = tex[:, :width].copy()
    right = np.empty_like(left)
    # right(x_r) sees the point at left x_l = x_r + d; fill far (background) first, then the near
    # rectangle so that it occludes correctly.
    xs = np.arange(width)
    for d_val in (12, 24):
        for y in range(height):
            mask = disp[y] == d_val
            x_r = xs[mask] - d_val
            ok = x_r >= 0
            right[y, x_r[ok]] = left[y, xs[mask][ok]]
    right[:, width - 12:] = tex[:, width: width + 12][:, ::-1]  # something plausible at the right border
    return left, right, disp


class Collector:
    """Thread-safe store of received messages per topic."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: Dict[str, List[Any]] = {}

    def add(self, topic: str, msg: Any) -> None:
        with self.lock:
            self.messages.setdefault(topic, []).append(msg)

    def get(self, topic: str) -> List[Any]:
        with self.lock:
            return list(self.messages.get(topic, []))

    def by_stamp(self, topic: str, t_ns: int) -> Optional[Any]:
        for m in self.get(topic):
            if stamp_of(m) == t_ns:
                return m
        return None

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()


def diagnostic_values(received: "Collector", hardware_id: Optional[str] = None) -> List[Dict[str, str]]:
    """Key/value dicts of every /diagnostics status received (of ``hardware_id`` if given), in order."""
    out = []
    for arr in received.get("diagnostics"):
        for status in arr.status:
            if hardware_id is None or status.hardware_id == hardware_id:
                values = {kv.key: kv.value for kv in status.values}
                values["_level"] = str(int.from_bytes(status.level, "little") if isinstance(status.level, bytes)
                                       else int(status.level))
                values["_message"] = status.message
                out.append(values)
    return out


def diagnostic_count(received: "Collector", key: str, hardware_id: Optional[str] = None) -> int:
    """Largest integer value of ``key`` in the /diagnostics received so far (0 if never seen)."""
    return max([int(v[key]) for v in diagnostic_values(received, hardware_id) if key in v] or [0])


def wait_for(predicate: Callable[[], bool], timeout_s: float, period_s: float = 0.02) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(period_s)
    return predicate()


class NodeHarness:
    """stereo_depth_node in-process plus a test node that feeds it and listens to every output."""

    def __init__(self, parameters: Dict[str, Any], namespace: str = "/stereo_test", subscribe: Sequence[str] = tuple(OUTPUTS),
                 domain_offset: int = 0, listen_rosout: bool = True, listen_diagnostics: bool = True,
                 camera: str = "") -> None:
        """``camera``: with a ``cameras`` parameter, the camera whose inputs and outputs the harness
        feeds and receives (its topics under ``<namespace>/<camera>/``)."""
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id_for_tests(domain_offset))
        self.camera = camera
        self.namespace = namespace
        namespace = f"{namespace}/{camera}" if camera else namespace
        self.topic_root = namespace
        overrides = [Parameter(k, value=v) for k, v in parameters.items()]
        self.node = StereoDepthNode(context=self.context, namespace=self.namespace, parameter_overrides=overrides)
        self.tester = rclpy.create_node("stereo_tester", context=self.context)
        self.received = Collector()
        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        # image_transport 'compressed': the images are CompressedImage on <topic>/compressed (same keys).
        image = ((CompressedImage, "/compressed") if parameters.get("image_transport", "raw") == "compressed"
                 else (Image, ""))
        self.pubs = {name: self.tester.create_publisher(t, f"{namespace}/{name}{suffix}", qos)
                     for name, (t, suffix) in (("left/image_rect", image), ("left/camera_info", (CameraInfo, "")),
                                               ("right/image_rect", image), ("right/camera_info", (CameraInfo, "")))}
        self.subs = []
        for name in subscribe:
            self.subscribe(name)
        if listen_rosout:
            self.subs.append(self.tester.create_subscription(Log, "/rosout", lambda m: self.received.add("rosout", m),
                                                             QoSProfile(depth=100)))
        if listen_diagnostics:
            self.subs.append(self.tester.create_subscription(
                DiagnosticArray, "/diagnostics", lambda m: self.received.add("diagnostics", m), QoSProfile(depth=50)))
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.tester)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self.wait_connected(subscribe)

    def subscribe(self, name: str) -> None:
        self.subs.append(self.tester.create_subscription(OUTPUTS[name], f"{self.topic_root}/{name}",
                                                         lambda m, n=name: self.received.add(n, m),
                                                         QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)))

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - shutdown races end the spin
            pass

    def wait_connected(self, outputs: Sequence[str], timeout_s: float = 15.0) -> None:
        node_pubs = next(c for c in self.node.cameras if c.name == self.camera).publishers
        ok = wait_for(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values())
                      and all(node_pubs[o].get_subscription_count() > 0 for o in outputs), timeout_s)
        if not ok:
            raise RuntimeError("discovery between the test node and stereo_depth_node did not complete")

    def publish(self, left: Image, right: Image, left_info: Optional[CameraInfo], right_info: Optional[CameraInfo],
                t_ns: int, left_frame: str = "cam_left_optical", right_frame: str = "cam_right_optical",
                left_info_frame: Optional[str] = None, right_info_frame: Optional[str] = None) -> None:
        """Stamp and publish a pair (a None CameraInfo is not sent). Each CameraInfo gets its image's
        frame id unless ``*_info_frame`` says otherwise."""
        left_info_frame = left_frame if left_info_frame is None else left_info_frame
        right_info_frame = right_frame if right_info_frame is None else right_info_frame
        for msg, frame in ((left, left_frame), (right, right_frame), (left_info, left_info_frame),
                           (right_info, right_info_frame)):
            if msg is not None:
                stamp_msg(msg.header, t_ns, frame)
        if left_info is not None:
            self.pubs["left/camera_info"].publish(left_info)
        if right_info is not None:
            self.pubs["right/camera_info"].publish(right_info)
        self.pubs["left/image_rect"].publish(left)
        self.pubs["right/image_rect"].publish(right)

    def publish_arrays(self, left: np.ndarray, right: np.ndarray, encoding: str, infos: Tuple[CameraInfo, CameraInfo],
                       t_ns: int) -> None:
        self.publish(numpy_to_image(left, encoding), numpy_to_image(right, encoding), infos[0], infos[1], t_ns)

    def wait_outputs(self, t_ns: int, topics: Sequence[str], timeout_s: float = 30.0) -> Dict[str, Any]:
        ok = wait_for(lambda: all(self.received.by_stamp(t, t_ns) is not None for t in topics), timeout_s)
        if not ok:
            missing = [t for t in topics if self.received.by_stamp(t, t_ns) is None]
            raise AssertionError(f"no output on {missing} for the frame stamped {t_ns} within {timeout_s} s")
        return {t: self.received.by_stamp(t, t_ns) for t in topics}

    def problem_count(self, problem: str) -> int:
        """The node's own counter of ``problem`` (what /diagnostics reports as problem.<key>)."""
        return self.node.stats_snapshot().problems.get(problem, 0)

    def diagnostic_count(self, key: str) -> int:
        return diagnostic_count(self.received, key, self.node.get_fully_qualified_name())

    def rosout_lines(self) -> List[str]:
        return [m.msg for m in self.received.get("rosout") if m.name.endswith("stereo_depth_node")]

    def close(self) -> None:
        self.node.stop()
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.tester.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(5.0)


def set_params(h, **values):
    """Call the node's set_parameters_atomically service from a separate node, as `ros2 param`
    does: all values are applied together or none."""
    if not hasattr(h, "param_client"):  # one caller per harness: discovery takes a while
        caller = rclpy.create_node("param_caller", context=h.context)
        h.param_executor = SingleThreadedExecutor(context=h.context)
        h.param_executor.add_node(caller)
        h.param_client = caller.create_client(SetParametersAtomically,
                                              f"{h.namespace}/stereo_depth_node/set_parameters_atomically")
        assert h.param_client.wait_for_service(timeout_sec=10.0)
    req = SetParametersAtomically.Request()
    for name, v in values.items():
        pv = ParameterValue()
        if isinstance(v, bool):
            pv.type, pv.bool_value = ParameterType.PARAMETER_BOOL, v
        elif isinstance(v, int):
            pv.type, pv.integer_value = ParameterType.PARAMETER_INTEGER, v
        elif isinstance(v, float):
            pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, v
        else:
            pv.type, pv.string_value = ParameterType.PARAMETER_STRING, v
        req.parameters.append(ParameterMsg(name=name, value=pv))
    future = h.param_client.call_async(req)
    h.param_executor.spin_until_future_complete(future, timeout_sec=20.0)
    assert future.done(), "set_parameters_atomically did not answer"
    return [future.result().result]


class InputFeeder:
    """Publishes stereo inputs to (and listens to one output of) a node running in another process."""

    def __init__(self, namespace: str, domain_id: int, output: str = "disparity") -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("input_feeder", context=self.context)
        self.namespace = namespace.rstrip("/")
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {name: self.node.create_publisher(t, f"{self.namespace}/{name}", qos)
                     for name, t in (("left/image_rect", Image), ("left/camera_info", CameraInfo),
                                     ("right/image_rect", Image), ("right/camera_info", CameraInfo))}
        self.received = Collector()
        self.output_topic = f"{self.namespace}/{output}"
        self.sub = self.node.create_subscription(OUTPUTS[output], self.output_topic,
                                                 lambda m: self.received.add(output, m), qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - shutdown races end the spin
            pass

    def wait_connected(self, timeout_s: float = 30.0) -> bool:
        return wait_for(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values())
                        and self.node.count_publishers(self.output_topic) > 0, timeout_s)

    def publish(self, left: np.ndarray, right: np.ndarray, infos: Tuple[CameraInfo, CameraInfo], t_ns: int) -> None:
        msgs = (("left/camera_info", infos[0], "left"), ("right/camera_info", infos[1], "right"),
                ("left/image_rect", numpy_to_image(left, "rgb8"), "left"),
                ("right/image_rect", numpy_to_image(right, "rgb8"), "right"))
        for name, msg, frame in msgs:
            stamp_msg(msg.header, t_ns, frame)
            self.pubs[name].publish(msg)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(5.0)
