"""Launch files and camera configs.

`launch`/`launch_ros` are not installable from PyPI: the LaunchDescriptions are built with a ROS
install's, else with their source in ../shared/ros2_launch (test_launch_run.py runs them). Everything
the launch files compute (config lookup, remappings, parameter overrides, driver arguments) is plain
Python and tested here, and the node is started with each config exactly as the launch file would
start it, then inspected through the ROS graph.
"""
from __future__ import annotations

import importlib.util
import os
import py_compile
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from ros2_launch_source import SKIP_REASON, launch_paths

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
CAMERAS = ("zed", "realsense", "oakd", "isaac_sim")
LAUNCH_FILES = ["foundation_stereo.launch.py", "two_cameras.launch.py"] + [f"{c}.launch.py" for c in CAMERAS]
REQUIRED_ARGUMENTS = {"checkpoint", "model_variant", "namespace", "iters", "scale", "precision", "device", "backend",
                      "start_camera"}
LAUNCH_PATHS = launch_paths()


def load(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generic():
    return load("foundation_stereo.launch.py")


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_file_is_valid_python(name, tmp_path):
    py_compile.compile(str(LAUNCH / name), cfile=str(tmp_path / "x.pyc"), doraise=True)
    module = load(name)  # imports nothing from launch at module level
    assert callable(module.generate_launch_description)


def test_every_argument_has_a_description(generic):
    names = [a[0] for a in generic.ARGUMENTS]
    assert REQUIRED_ARGUMENTS <= set(names)
    assert len(names) == len(set(names))
    for name, default, description in generic.ARGUMENTS:
        assert len(description) > 20, name
    for cam in ("zed", "realsense", "oakd"):
        for name, default, description in getattr(load(f"{cam}.launch.py"), "EXTRA_ARGUMENTS", ()):
            assert name not in names and len(description) > 20


@pytest.mark.skipif(LAUNCH_PATHS is None, reason=SKIP_REASON)
@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_description_builds(name, monkeypatch):
    for path in reversed(LAUNCH_PATHS or []):
        monkeypatch.syspath_prepend(path)
    from launch.actions import DeclareLaunchArgument

    ld = load(name).generate_launch_description()
    declared = {e.name: e for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    assert REQUIRED_ARGUMENTS <= set(declared)
    assert all(e.description for e in declared.values())


@pytest.mark.parametrize("camera", CAMERAS)
def test_camera_config_settings(generic, camera):
    path = generic.config_path(camera)
    assert Path(path) == REPO / "config" / f"{camera}.yaml"
    settings = generic.launch_settings(path)
    assert set(settings["remappings"]) == set(generic.INPUTS)
    assert all(t.startswith("/") for t in settings["remappings"].values())
    assert settings["namespace"].startswith("/")
    defaults = {name: default for name, default, _ in generic.ARGUMENTS}
    cam_module = load(f"{camera}.launch.py")
    defaults.update({n: d for n, d, _ in getattr(cam_module, "EXTRA_ARGUMENTS", ())})
    if camera == "isaac_sim":
        assert settings["driver"] == {}  # Isaac Sim is started from its own launcher
    else:
        args = dict(generic.driver_arguments(settings, defaults, path, "/tmp/driver.yaml"))
        assert "{" not in "".join(args.values())  # every placeholder filled from a declared argument
        expected = {"zed": ("zed_wrapper", "camera_model", "zed2i"),
                    "realsense": ("realsense2_camera", "config_file", "/tmp/driver.yaml"),
                    "oakd": ("depthai_ros_driver", "params_file", path)}
        package, key, value = expected[camera]
        assert settings["driver"]["package"] == package and args[key] == value
        parameters = generic.driver_parameters(settings, defaults)
        if camera == "realsense":
            # rs_launch.py passes only the arguments it declares: the emitter goes through config_file
            assert parameters == {"depth_module.emitter_enabled": 0}
            assert generic.driver_parameters(settings, {**defaults, "emitter": "1"}) == {
                "depth_module.emitter_enabled": 1}
            assert "depth_module.emitter_enabled" not in args
        else:
            assert parameters == {}
        if camera == "zed":
            assert args["ros_params_override_path"] == path  # its /zed/zed_node section turns left/right on


def test_two_camera_config_remaps_each_camera_under_its_namespace(generic, tmp_path):
    path = generic.config_path("two_cameras")
    settings = generic.launch_settings(path)
    assert list(settings["cameras"]) == ["front", "rear"] and settings["remappings"] == {}
    remaps = dict(generic.remappings(settings, {}))
    assert remaps == {f"{cam}/{node_input}": f"/camera/{cam}/{infra}/{kind}"
                      for cam in ("front", "rear")
                      for node_input, infra, kind in (("left/image_rect", "infra1", "image_rect_raw"),
                                                      ("left/camera_info", "infra1", "camera_info"),
                                                      ("right/image_rect", "infra2", "image_rect_raw"),
                                                      ("right/camera_info", "infra2", "camera_info"))}
    assert settings["driver"] == {}  # the user starts the cameras
    with pytest.raises(ValueError, match="remap them in its 'cameras' section"):
        generic.remappings(settings, {"left_image": "/x/left"})  # one camera's topic: which camera?
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({"foundation_stereo_launch": {"ros__parameters": {
        "remap": {"left_image": "/a"}, "cameras": {"front": {"left_image": "/b"}}}}}))
    with pytest.raises(ValueError, match="either remap"):
        generic.launch_settings(str(both))
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"foundation_stereo_launch": {"ros__parameters": {
        "cameras": {"front": {"left_img": "/b"}}}}}))
    with pytest.raises(ValueError, match="cameras.front: unknown entries"):
        generic.launch_settings(str(typo))


def test_driver_sections_of_the_configs_use_the_drivers_node_names():
    """The drivers start their nodes as composable nodes, whose parameters launch_ros takes only from the
    '/**' section and the section of the node's full name (not '/**/name')."""
    zed = yaml.safe_load((REPO / "config" / "zed.yaml").read_text())
    assert zed["/zed/zed_node"]["ros__parameters"]["video"]["publish_left_right"] is True
    oakd = yaml.safe_load((REPO / "config" / "oakd.yaml").read_text())
    assert oakd["/oak"]["ros__parameters"]["left"]["i_publish_topic"] is True
    assert oakd["/oak"]["ros__parameters"]["right"]["i_publish_topic"] is True


def test_config_files_parse_as_ros_parameter_files():
    """rcl's YAML parser (the one --params-file uses) accepts every config, launch section included."""
    import rclpy

    for name in CAMERAS + ("default", "two_cameras"):
        context = rclpy.Context()
        rclpy.init(args=["--ros-args", "--params-file", str(REPO / "config" / f"{name}.yaml")], context=context)
        rclpy.shutdown(context=context)


@pytest.mark.parametrize("camera", CAMERAS + ("two_cameras",))
def test_config_parameters_are_accepted_by_the_node(generic, camera):
    from foundation_stereo_ros.pipeline import config_problems
    from foundation_stereo_ros.ros.stereo_depth_node import ALL_PARAMETERS

    specs = {s.name: s for s in ALL_PARAMETERS}
    params = generic.node_parameters(generic.config_path(camera))
    assert params
    for key, value in params.items():
        if key == "use_sim_time":  # every rclpy node has it
            assert isinstance(value, bool)
            continue
        assert key in specs, f"{camera}.yaml: {key} is not a parameter of the node"
        assert specs[key].check(value) is None, specs[key].check(value)
    assert config_problems({k: v for k, v in params.items() if k in specs}) == []


def test_parameter_overrides(generic, tmp_path, monkeypatch, vits_checkpoint):
    monkeypatch.delenv("FOUNDATION_STEREO_CHECKPOINT", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert generic.parameter_overrides({"iters": "16", "scale": "0.5", "hierarchical": "true", "backend": "sgbm",
                                        "precision": "", "device": ""}) == {
        "iters": 16, "scale": 0.5, "hierarchical": True, "backend": "sgbm"}
    with pytest.raises(ValueError, match="iters"):
        generic.parameter_overrides({"iters": "many"})
    with pytest.raises(ValueError, match="11-33-40"):
        generic.parameter_overrides({"model_variant": "vits"})  # not downloaded
    with pytest.raises(ValueError, match="model_variant"):
        generic.parameter_overrides({"model_variant": "vit-huge"})
    cached = tmp_path / ".cache" / "foundation_stereo" / "11-33-40"
    shutil.copytree(vits_checkpoint.parent, cached)
    assert generic.parameter_overrides({"model_variant": "11-33-40"})["checkpoint"] == str(
        cached / "model_best_bp2.pth")
    assert generic.parameter_overrides({})["checkpoint"] == str(cached / "model_best_bp2.pth")  # any variant
    # a checkpoint in the config file is not replaced by the cache lookup
    assert "checkpoint" not in generic.parameter_overrides({}, {"checkpoint": "/models/mine.pth"})
    monkeypatch.setenv("FOUNDATION_STEREO_CHECKPOINT", str(vits_checkpoint))
    assert generic.parameter_overrides({"model_variant": "23-51-11"})["checkpoint"] == str(vits_checkpoint)


def test_fast_path_arguments_become_node_parameters_of_the_right_type(generic, tmp_path, monkeypatch):
    from foundation_stereo_ros.ros.parameters import ALL_PARAMETERS

    specs = {s.name: s for s in ALL_PARAMETERS}
    monkeypatch.delenv("FOUNDATION_STEREO_CHECKPOINT", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached checkpoint to add

    for name, kind in generic.PARAMETER_ARGUMENTS.items():
        assert specs[name].type is kind, name
    assert generic.parameter_overrides({"backend": "onnx", "onnx_model": "/models/fs.onnx", "execution": "cudagraph",
                                        "warmup_width": "640", "warmup_height": "480", "geometry_device": "host",
                                        "image_transport": "compressed", "depth_format": "16UC1"}) == {
        "backend": "onnx", "onnx_model": "/models/fs.onnx", "execution": "cudagraph", "warmup_width": 640,
        "warmup_height": 480, "geometry_device": "host", "image_transport": "compressed", "depth_format": "16UC1"}
    with pytest.raises(ValueError, match="warmup_width"):
        generic.parameter_overrides({"warmup_width": "wide"})


def test_remappings_from_arguments_win(generic):
    settings = generic.launch_settings(generic.config_path("zed"))
    remaps = dict(generic.remappings(settings, {"left_image": "/my/left"}))
    assert remaps["left/image_rect"] == "/my/left"
    assert remaps["right/image_rect"] == "/zed/zed_node/right/color/rect/image"  # zed-ros2-wrapper 5.1 and later
    assert remaps["right/camera_info"] == "/zed/zed_node/right/color/rect/camera_info"


def test_zed_topics_argument_selects_the_names_of_older_wrappers(generic):
    settings = generic.launch_settings(generic.config_path("zed"))
    remaps = dict(generic.remappings(settings, {"zed_topics": "legacy", "left_image": "/my/left"}))
    assert remaps == {"left/image_rect": "/my/left", "left/camera_info": "/zed/zed_node/left/camera_info",
                      "right/image_rect": "/zed/zed_node/right/image_rect_color",
                      "right/camera_info": "/zed/zed_node/right/camera_info"}
    with pytest.raises(ValueError, match="zed_topics"):
        generic.remappings(settings, {"zed_topics": "4.2"})


# ---------------------------------------------------------------------------------------------
# the node started with each config, as the launch files start it

def _start_node(generic, config: str, tmp_path: Path, extra_values: dict):
    from foundation_stereo_ros.evaluation.replay import node_command, write_parameter_file

    path = generic.config_path(config)
    settings = generic.launch_settings(path)
    values = {name: default for name, default, _ in generic.ARGUMENTS}
    values.update(extra_values)
    namespace = values["namespace"] or settings["namespace"] or "stereo"
    overrides = generic.parameter_overrides(values, generic.node_parameters(path))
    overrides_file = write_parameter_file(overrides, tmp_path / f"{config}_overrides.yaml")
    remaps = dict(generic.remappings(settings, values))
    cmd = node_command(namespace, [Path(path), overrides_file], remaps)
    log = open(tmp_path / f"{config}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, namespace, remaps, log


@pytest.mark.slow
def test_node_runs_with_each_config(generic, tmp_path, monkeypatch):
    """Start the node with every camera config and its remaps (all at once, sgbm backend as
    backend:=sgbm would select), then check its topics and parameters through the ROS graph."""
    import rclpy
    from rcl_interfaces.srv import GetParameters
    from rclpy.executors import SingleThreadedExecutor

    monkeypatch.setenv("ROS_DOMAIN_ID", str(1 + (os.getpid() * 7 + 53) % 100))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.delenv("FOUNDATION_STEREO_CHECKPOINT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    configs = {cam: cam for cam in CAMERAS}
    configs["generic"] = "default"
    procs = {}
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        for label, config in configs.items():
            values = {"backend": "sgbm"}
            if label == "generic":
                values.update({"namespace": "/generic_cam", "left_image": "/g/left/image", "left_info": "/g/left/info",
                               "right_image": "/g/right/image", "right_info": "/g/right/info"})
            procs[label] = _start_node(generic, config, tmp_path, values)
        node = rclpy.create_node("launch_config_probe", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        expected_outputs = {"disparity", "depth", "depth/camera_info", "points2", "left_rect/image",
                            "left_rect/camera_info", "disparity_color"}

        def graph(label):
            ns = procs[label][1]
            subs = {t for t, _ in node.get_subscriber_names_and_types_by_node("stereo_depth_node", ns)}
            pubs = {t for t, _ in node.get_publisher_names_and_types_by_node("stereo_depth_node", ns)}
            return subs, pubs

        deadline = time.monotonic() + 90
        pending = set(procs)
        while pending and time.monotonic() < deadline:
            for label in list(pending):
                proc = procs[label][0]
                assert proc.poll() is None, (tmp_path / f"{configs[label]}.log").read_text()
                try:
                    subs, pubs = graph(label)
                except Exception:  # the node is not discovered yet
                    continue
                if set(procs[label][2].values()) <= subs and len(pubs) >= len(expected_outputs):
                    pending.discard(label)
            time.sleep(0.2)
        assert not pending, {lb: (tmp_path / f"{configs[lb]}.log").read_text() for lb in pending}

        for label, (proc, ns, remaps, _) in procs.items():
            subs, pubs = graph(label)
            assert set(remaps.values()) <= subs  # the node listens to the camera's topics
            assert {f"{ns}/{t}" for t in expected_outputs} <= pubs  # and publishes under its namespace

            client = node.create_client(GetParameters, f"{ns}/stereo_depth_node/get_parameters")
            assert client.wait_for_service(timeout_sec=20)
            names = ["backend", "rectify", "approximate_sync", "max_depth", "use_sim_time"]
            future = client.call_async(GetParameters.Request(names=names))
            executor.spin_until_future_complete(future, timeout_sec=20)
            got = dict(zip(names, future.result().values))
            want = generic.node_parameters(generic.config_path(configs[label]))
            assert got["backend"].string_value == "sgbm"  # the launch argument overrides the config
            if "rectify" in want:
                assert got["rectify"].string_value == want["rectify"]
            if "approximate_sync" in want:
                assert got["approximate_sync"].bool_value == want["approximate_sync"]
            if "max_depth" in want:
                assert got["max_depth"].double_value == pytest.approx(want["max_depth"])
            assert got["use_sim_time"].bool_value == (label == "isaac_sim")
    finally:
        rclpy.try_shutdown(context=context)
        for proc, _, _, log in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 2)  # Ctrl-C, as launch does on shutdown
        for proc, _, _, log in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=5)
            log.close()
    assert all(p[0].returncode == 0 for p in procs.values())
