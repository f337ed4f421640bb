"""The launch files run by ROS 2's launch system, as ``ros2 launch`` runs them.

For each ``ros2 launch`` line of the README's "Cameras" section (plus ``backend:=sgbm``: CI has no
checkpoint), against a colcon install of the package: a ``launch.LaunchService`` runs the line (from
a ROS install where ``launch`` is importable, else from ``../shared/ros2_launch``), this process
publishes a stereo pair where the camera's current driver publishes it, with the driver's encoding
and QoS, and receives ``depth`` and ``points2`` in the launch file's namespace. Then SIGINT, as
Ctrl-C on ``ros2 launch``: exit 0, no traceback, no process left behind. All lines run at once to
keep the module fast on two cores.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import yaml
from ros2_launch_source import SKIP_REASON, launch_paths

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "foundation_stereo_ros"
RUNNER = Path(__file__).resolve().with_name("launch_runner.py")
LAUNCH_PATHS = launch_paths()

pytestmark = [pytest.mark.slow,  # a colcon build and six launches
              pytest.mark.skipif(LAUNCH_PATHS is None, reason=SKIP_REASON)]

#: What each camera's current driver publishes (see the version notes in config/<camera>.yaml):
#: (left image, left info, right image, right info), encoding. Keyed by launch file and zed_topics.
DRIVER_TOPICS: Dict[Tuple[str, str], Tuple[Tuple[str, str, str, str], str]] = {
    ("zed.launch.py", ""): (("/zed/zed_node/left/color/rect/image", "/zed/zed_node/left/color/rect/camera_info",
                             "/zed/zed_node/right/color/rect/image", "/zed/zed_node/right/color/rect/camera_info"),
                            "bgra8"),
    ("zed.launch.py", "legacy"): (("/zed/zed_node/left/image_rect_color", "/zed/zed_node/left/camera_info",
                                   "/zed/zed_node/right/image_rect_color", "/zed/zed_node/right/camera_info"),
                                  "bgra8"),
    ("realsense.launch.py", ""): (("/camera/camera/infra1/image_rect_raw", "/camera/camera/infra1/camera_info",
                                   "/camera/camera/infra2/image_rect_raw", "/camera/camera/infra2/camera_info"),
                                  "mono8"),
    ("oakd.launch.py", ""): (("/oak/left/image_raw", "/oak/left/camera_info", "/oak/right/image_raw",
                              "/oak/right/camera_info"), "mono8"),
    ("isaac_sim.launch.py", ""): (("/front_stereo_camera/left/image_raw", "/front_stereo_camera/left/camera_info",
                                   "/front_stereo_camera/right/image_raw", "/front_stereo_camera/right/camera_info"),
                                  "rgb8"),
}
#: Launch files serving several cameras: camera namespace -> (its driver's topics, encoding).
MULTI_CAMERA_TOPICS: Dict[str, Dict[str, Tuple[Tuple[str, str, str, str], str]]] = {
    "two_cameras.launch.py": {cam: ((f"/camera/{cam}/infra1/image_rect_raw", f"/camera/{cam}/infra1/camera_info",
                                     f"/camera/{cam}/infra2/image_rect_raw", f"/camera/{cam}/infra2/camera_info"),
                                    "mono8") for cam in ("front", "rear")},
}
WIDTH, HEIGHT, SHIFT = 320, 240, 16


def readme_launch_lines() -> List[List[str]]:
    """The ``ros2 launch foundation_stereo_ros`` lines of the README's "Cameras" section, as argv lists."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Cameras", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:3] == ["ros2", "launch", PACKAGE]:
            lines.append(words[3:])
    return lines


def _case(words: List[str]):
    """(launch file, arguments, cameras) of one README line; cameras: (namespace below the launch's
    namespace, driver topics, encoding) of each camera the node serves."""
    name, args = words[0], dict(w.split(":=", 1) for w in words[1:])
    if name == "foundation_stereo.launch.py":
        topics = tuple(args[k] for k in ("left_image", "left_info", "right_image", "right_info"))
        return name, args, [("", topics, "rgb8")]
    if name in MULTI_CAMERA_TOPICS:
        return name, args, [(cam, topics, encoding) for cam, (topics, encoding) in MULTI_CAMERA_TOPICS[name].items()]
    topics, encoding = DRIVER_TOPICS[(name, args.get("zed_topics", ""))]
    return name, args, [("", topics, encoding)]


def _expected_namespace(name: str, args: Dict[str, str]) -> str:
    if args.get("namespace"):
        return args["namespace"]
    generic = _load_generic()
    config = {"zed.launch.py": "zed", "realsense.launch.py": "realsense", "oakd.launch.py": "oakd",
              "isaac_sim.launch.py": "isaac_sim", "two_cameras.launch.py": "two_cameras"}.get(name, "default")
    return generic.launch_settings(generic.config_path(config))["namespace"] or "stereo"


def _load_generic():
    spec = importlib.util.spec_from_file_location("generic_launch_for_test",
                                                  REPO / "launch" / "foundation_stereo.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runner_env(install: Path, home: Path, domain: int) -> Dict[str, str]:
    prefix = install / PACKAGE
    site = sorted(prefix.glob("lib/python3*/site-packages"))
    paths = [str(p) for p in site] + list(LAUNCH_PATHS or [])
    env = {k: v for k, v in os.environ.items() if k != "FOUNDATION_STEREO_CHECKPOINT"}
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env["AMENT_PREFIX_PATH"] = os.pathsep.join([str(prefix)] + [p for p in [os.environ.get("AMENT_PREFIX_PATH")] if p])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HOME=str(home), ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1")
    return env


def _launch(install: Path, name: str, args: Dict[str, str], env: Dict[str, str], log: Path) -> subprocess.Popen:
    path = install / PACKAGE / "share" / PACKAGE / "launch" / name
    argv = [sys.executable, str(RUNNER), str(path)] + [f"{k}:={v}" for k, v in args.items()]
    env = dict(env, ROS_LOG_DIR=str(log.with_suffix(".ros_log")))  # launches side by side: one log folder each
    with open(log, "w") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                                start_new_session=True)  # its own process group: what it leaves is visible


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _stereo_pair():
    rng = np.random.default_rng(7)
    texture = rng.integers(0, 255, (HEIGHT, WIDTH + SHIFT), dtype=np.uint8)
    return texture[:, SHIFT:], texture[:, :WIDTH]  # right sees the scene SHIFT px to the left


def _image_message(Image, grey: np.ndarray, encoding: str, frame: str, stamp):
    channels = {"mono8": 1, "rgb8": 3, "bgr8": 3, "bgra8": 4}[encoding]
    data = np.repeat(grey[:, :, None], channels, axis=2)
    if channels == 4:
        data[:, :, 3] = 255
    msg = Image(height=HEIGHT, width=WIDTH, encoding=encoding, is_bigendian=0, step=WIDTH * channels)
    msg.data = data.tobytes()
    msg.header.frame_id, msg.header.stamp = frame, stamp
    return msg


def _info_message(CameraInfo, right: bool, frame: str, stamp, fx: float = 200.0, baseline: float = 0.1):
    msg = CameraInfo(height=HEIGHT, width=WIDTH, distortion_model="plumb_bob", d=[0.0] * 5)
    msg.k = [fx, 0.0, WIDTH / 2, 0.0, fx, HEIGHT / 2, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, WIDTH / 2, -fx * baseline if right else 0.0, 0.0, fx, HEIGHT / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.header.frame_id, msg.header.stamp = frame, stamp
    return msg


@pytest.fixture(scope="module")
def launched(colcon_install, tmp_path_factory):
    """Every README line launched at once, fed a stereo pair on its driver's topics until its depth and
    points2 arrive, then stopped with SIGINT. Per line: what arrived, the exit code, the output, and
    whether its process group outlived it."""
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    tmp = tmp_path_factory.mktemp("launch_run")
    domain = 1 + (os.getpid() * 7 + 29) % 100
    env = _runner_env(colcon_install, tmp, domain)
    cases = {}
    for index, words in enumerate(readme_launch_lines()):
        name, args, cameras = _case(words)
        label = " ".join(words)
        namespace = _expected_namespace(name, args)
        cases[label] = dict(name=name, args={**args, "backend": "sgbm"}, log=tmp / f"launch_{index}.log", cameras=[
            dict(topics=topics, encoding=encoding, namespace=f"{namespace}/{cam}" if cam else namespace,
                 frame=f"camera{index}_{cam}_left", received=set()) for cam, topics, encoding in cameras])
    for case in cases.values():
        case["proc"] = _launch(colcon_install, case["name"], case["args"], env, case["log"])

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        node = rclpy.create_node("launch_run_camera", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        driver_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)  # as the drivers publish
        output_qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.BEST_EFFORT)
        clock = node.create_publisher(Clock, "/clock", 10)  # Isaac Sim's launch runs on simulation time
        cameras = [camera for case in cases.values() for camera in case["cameras"]]
        for camera in cameras:
            camera["pubs"] = [node.create_publisher(Image if i % 2 == 0 else CameraInfo, topic, driver_qos)
                              for i, topic in enumerate(camera["topics"])]
            for output, kind in (("depth", Image), ("points2", PointCloud2)):
                # Two lines may share a namespace (ZED, both topic sets): outputs count for the camera whose
                # frame they carry.
                node.create_subscription(kind, f"{camera['namespace']}/{output}", lambda msg, c=camera, o=output: (
                    c["received"].add(o) if msg.header.frame_id == c["frame"] else None), output_qos)
        left, right = _stereo_pair()
        deadline = time.monotonic() + 120
        frame = 0
        while time.monotonic() < deadline:
            pending = [camera for case in cases.values() if case["proc"].poll() is None
                       for camera in case["cameras"] if camera["received"] != {"depth", "points2"}]
            if not pending:
                break
            frame += 1
            stamp = Time(sec=1000 + frame // 10, nanosec=(frame % 10) * 100_000_000)
            clock.publish(Clock(clock=stamp))
            for camera in pending:
                enc = camera["encoding"]
                left_pub, left_info, right_pub, right_info = camera["pubs"]
                right_frame = camera["frame"].replace("_left", "_right")
                left_pub.publish(_image_message(Image, left, enc, camera["frame"], stamp))
                left_info.publish(_info_message(CameraInfo, False, camera["frame"], stamp))
                right_pub.publish(_image_message(Image, right, enc, right_frame, stamp))
                right_info.publish(_info_message(CameraInfo, True, right_frame, stamp))
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
    finally:
        for case in cases.values():
            if case["proc"].poll() is None:
                os.kill(case["proc"].pid, signal.SIGINT)  # Ctrl-C on `ros2 launch`
        for case in cases.values():
            try:
                case["rc"] = case["proc"].wait(timeout=30)
            except subprocess.TimeoutExpired:
                case["rc"] = None
            time.sleep(0.2)
            case["left_behind"] = _group_alive(case["proc"].pid)
            if case["left_behind"]:
                os.killpg(case["proc"].pid, signal.SIGKILL)
            case["output"] = case["log"].read_text()
        rclpy.try_shutdown(context=context)
    return cases


def test_readme_lines_cover_every_launch_file():
    names = {words[0] for words in readme_launch_lines()}
    assert names == {p.name for p in (REPO / "launch").glob("*.launch.py")}
    for words in readme_launch_lines():
        assert all(":=" in w for w in words[1:]), words
        _case(words)  # every line has its driver's topics here


@pytest.mark.parametrize("line", [" ".join(w) for w in readme_launch_lines()])
def test_launch_line_turns_a_driver_pair_into_depth_and_stops_cleanly_on_sigint(launched, line):
    case = launched[line]
    output = case["output"]
    for camera in case["cameras"]:
        assert camera["received"] == {"depth", "points2"}, (
            f"{line}: got {sorted(camera['received'])} on {camera['namespace']}/{{depth,points2}}\n{output}")
    assert case["rc"] == 0, f"{line}: exit code {case['rc']} after SIGINT\n{output}"
    assert "Traceback" not in output, output
    assert not case["left_behind"], f"{line}: processes outlived the launch\n{output}"
    assert re.search(r"process started with pid", output), output  # the node ran under launch


def test_start_camera_without_the_driver_says_so_in_one_line(colcon_install, tmp_path):
    """start_camera:=true where the driver package is not installed: one clear line, nothing started."""
    env = _runner_env(colcon_install, tmp_path, 1 + (os.getpid() * 7 + 31) % 100)
    drivers = {"zed.launch.py": "zed_wrapper", "realsense.launch.py": "realsense2_camera",
               "oakd.launch.py": "depthai_ros_driver"}
    procs = {name: _launch(colcon_install, name, {"start_camera": "true", "backend": "sgbm"}, env,
                           tmp_path / f"{name}.log") for name in drivers}
    for name, package in drivers.items():
        rc = procs[name].wait(timeout=60)
        output = (tmp_path / f"{name}.log").read_text()
        assert rc != 0, output
        assert "Traceback" not in output, output
        lines = [ln for ln in output.splitlines() if package in ln]
        assert len(lines) == 1, output
        assert "not installed" in lines[0] and "start_camera" in lines[0], lines[0]
        assert "process started" not in output, output  # the node was not started either
        assert not _group_alive(procs[name].pid), output


_FAKE_DRIVER_LAUNCH = '''"""A stand-in for a camera driver's launch file: records the launch arguments it was given
(the test reads what the real driver would have been told)."""
import json
import os

from launch import LaunchDescription
from launch.actions import OpaqueFunction


def _record(context):
    got = dict(context.launch_configurations)
    for name, value in list(got.items()):  # files the launch deletes when it stops
        if value.endswith(".yaml") and os.path.isfile(value):
            with open(value) as fh:
                got[name + ".content"] = fh.read()
    # The environment its processes would get (the Fast DDS profile matters most in a driver).
    got["environment"] = {k: v for k, v in context.environment.items() if k.endswith("PROFILES_FILE")}
    with open(os.path.join(os.environ["FAKE_DRIVER_RECORDS"], "{package}.json"), "w") as fh:
        json.dump(got, fh)
    return []


def generate_launch_description():
    return LaunchDescription([OpaqueFunction(function=_record)])
'''


def _composable_node_parameters(path: str, node_name: str, namespace: str) -> Dict[str, object]:
    """The parameters launch_ros gives a composable node (as the drivers start theirs) from ``path``."""
    from launch import LaunchContext
    from launch_ros.parameter_descriptions import ParameterFile
    from launch_ros.utilities import evaluate_parameters, to_parameters_list

    context = LaunchContext()
    evaluated = evaluate_parameters(context, [ParameterFile(path)])
    return {p.name: p.value for p in to_parameters_list(context, node_name, namespace, evaluated)}


def test_start_camera_tells_each_driver_what_the_node_needs(colcon_install, tmp_path, monkeypatch):
    """start_camera:=true with stand-ins for the drivers' launch files (same packages, same file names):
    the ZED wrapper gets this config as its parameter override file, whose section turns its left/right
    topics on; rs_launch.py gets the emitter through its config_file; depthai gets this config as its
    params_file, whose section turns the mono streams on."""
    for path in reversed(LAUNCH_PATHS or []):
        monkeypatch.syspath_prepend(path)
    prefix = tmp_path / "drivers"
    drivers = {"zed.launch.py": ("zed_wrapper", "zed_camera.launch.py", {}),
               "realsense.launch.py": ("realsense2_camera", "rs_launch.py", {"emitter": "1"}),
               "oakd.launch.py": ("depthai_ros_driver", "camera.launch.py", {"camera_model": "OAK-D-LITE"})}
    for package, launch_file, _ in drivers.values():
        (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True, exist_ok=True)
        (prefix / "share" / "ament_index" / "resource_index" / "packages" / package).write_text("")
        (prefix / "share" / package / "launch").mkdir(parents=True)
        fake = _FAKE_DRIVER_LAUNCH.replace("{package}", package)
        (prefix / "share" / package / "launch" / launch_file).write_text(fake)
    records = tmp_path / "records"
    records.mkdir()
    env = _runner_env(colcon_install, tmp_path, 1 + (os.getpid() * 7 + 37) % 100)
    env["AMENT_PREFIX_PATH"] = f"{prefix}{os.pathsep}{env['AMENT_PREFIX_PATH']}"
    env["FAKE_DRIVER_RECORDS"] = str(records)
    procs = {name: _launch(colcon_install, name, {"start_camera": "true", "backend": "sgbm", **extra}, env,
                           tmp_path / f"{name}.log") for name, (_, _, extra) in drivers.items()}
    share = colcon_install / PACKAGE / "share" / PACKAGE / "config"
    for name, (package, _, _) in drivers.items():
        # Ctrl-C once the driver stand-in has recorded its arguments and the node is up (a SIGINT
        # while a Python process is still importing its site module is fatal to any Python node).
        deadline = time.monotonic() + 60.0
        while not ((records / f"{package}.json").is_file() and "ready:" in (tmp_path / f"{name}.log").read_text()):
            assert time.monotonic() < deadline and procs[name].poll() is None, (tmp_path / f"{name}.log").read_text()
            time.sleep(0.1)
        os.kill(procs[name].pid, signal.SIGINT)  # Ctrl-C on `ros2 launch`
        rc = procs[name].wait(timeout=60)
        output = (tmp_path / f"{name}.log").read_text()
        assert rc == 0 and "Traceback" not in output, output
        assert not _group_alive(procs[name].pid), output
        got = json.loads((records / f"{package}.json").read_text())
        # The driver's processes load the package's Fast DDS profile (none was set by the user).
        profile = Path(got["environment"]["FASTRTPS_DEFAULT_PROFILES_FILE"])
        assert profile.name == "fastdds_large_data.xml" and profile.is_file(), got["environment"]
        assert got["environment"]["FASTDDS_DEFAULT_PROFILES_FILE"] == str(profile)
        assert colcon_install in profile.parents  # the installed package's copy
        if package == "zed_wrapper":
            assert got["camera_model"] == "zed2i"
            assert Path(got["ros_params_override_path"]) == share / "zed.yaml"
            params = _composable_node_parameters(got["ros_params_override_path"], "zed_node", "/zed")
            assert params.get("video.publish_left_right") is True, params
        elif package == "realsense2_camera":
            assert (got["enable_infra1"], got["enable_infra2"]) == ("true", "true")
            assert yaml.safe_load(got["config_file.content"]) == {"depth_module.emitter_enabled": 1}
            assert not Path(got["config_file"]).exists()  # removed when the launch stopped
        else:
            assert got["camera_model"] == "OAK-D-LITE"
            assert Path(got["params_file"]) == share / "oakd.yaml"
            params = _composable_node_parameters(got["params_file"], "oak", "")
            assert params.get("left.i_publish_topic") is True and params.get("right.i_publish_topic") is True, params
