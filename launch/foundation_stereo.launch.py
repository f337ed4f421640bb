"""Start the FoundationStereo depth node for any stereo camera (and, optionally, its driver).

    ros2 launch foundation_stereo_ros foundation_stereo.launch.py \\
        left_image:=/my_cam/left/image_rect left_info:=/my_cam/left/camera_info \\
        right_image:=/my_cam/right/image_rect right_info:=/my_cam/right/camera_info \\
        model_variant:=11-33-40 namespace:=my_cam/depth

The camera launch files (zed, realsense, oakd, isaac_sim) are this file with another ``config``:
everything that differs per camera lives in ``config/<camera>.yaml``, which holds the node's
parameters (section ``/**/stereo_depth_node``) and, in the section ``foundation_stereo_launch``
(a node that does not exist, so ROS ignores it), the topic remappings, the default namespace and
the camera driver to start. Launch arguments left empty keep the config file's values.

A config may offer other topic names chosen by a launch argument (``remap_choices``: argument ->
value -> input -> topic; ZED wrappers before 5.1 use other names), and driver parameters that the
driver's launch file reads from a flat YAML file (``driver.parameters``; written at launch time,
its path is ``{driver_parameters}`` in the driver's arguments).

A config for several cameras served by one node (``config/two_cameras.yaml``) lists them in its
launch section's ``cameras`` (camera namespace -> input -> topic) instead of ``remap``: the node gets
the ``cameras`` parameter in that order, and each camera's inputs are remapped under its namespace.

The module imports ``launch`` only inside :func:`generate_launch_description`, so its pure
helpers (:func:`launch_settings`, :func:`parameter_overrides`) are testable without ROS.
"""
import os
import tempfile
from typing import Any, Dict, List, Optional, Tuple

PACKAGE = "foundation_stereo_ros"
NODE_NAME = "stereo_depth_node"
LAUNCH_SECTION = "foundation_stereo_launch"
INPUTS = ("left_image", "left_info", "right_image", "right_info")
#: The node's relative input names, which the remappings rename.
NODE_INPUTS = {"left_image": "left/image_rect", "left_info": "left/camera_info",
               "right_image": "right/image_rect", "right_info": "right/camera_info"}
VARIANTS = {"23-51-11": "23-51-11", "11-33-40": "11-33-40", "vitl": "23-51-11", "vits": "11-33-40"}

#: (name, default, description) of every launch argument; '' means "keep the config's value".
ARGUMENTS: Tuple[Tuple[str, str, str], ...] = (
    ("config", "", "Parameter file of the node and the launch settings (config/<camera>.yaml); default: "
                   "config/default.yaml for the generic launch file."),
    ("namespace", "", "Namespace of the node and of its outputs (disparity, depth, points2); default: the "
                      "config's launch section, else 'stereo'."),
    ("backend", "", "Disparity backend: 'foundation_stereo' (the network in PyTorch), 'onnx' (an export run "
                    "by ONNX Runtime / TensorRT; see onnx_model) or 'sgbm' (OpenCV, CPU, no checkpoint needed)."),
    ("onnx_model", "", "ONNX model made by foundation-stereo-export, for backend:=onnx."),
    ("execution", "", "PyTorch execution mode: 'eager', 'compile', 'cudagraph' or 'compile-cudagraph'."),
    ("warmup_width", "", "Camera image width to compile / capture / build the engine for at start (with "
                         "warmup_height)."),
    ("warmup_height", "", "Camera image height to compile / capture / build the engine for at start."),
    ("geometry_device", "", "Where rectification, depth and points run: 'auto' (the GPU when the network "
                            "runs on CUDA), 'network' or 'host'."),
    ("image_transport", "", "Transport of the camera images: 'raw' (sensor_msgs/Image) or 'compressed' "
                            "(sensor_msgs/CompressedImage on <image topic>/compressed, decoded by the node)."),
    ("depth_format", "", "Depth image encoding: '32FC1' (metres, NaN invalid) or '16UC1' (millimetres, 0 "
                         "invalid; REP 118)."),
    ("checkpoint", "", "FoundationStereo checkpoint (.pth or its folder). Empty: $FOUNDATION_STEREO_CHECKPOINT, "
                       "else ~/.cache/foundation_stereo/<model_variant>/model_best_bp2.pth."),
    ("model_variant", "", "Published model to look for in ~/.cache/foundation_stereo when no checkpoint is "
                          "given: '23-51-11' (ViT-L, best) or '11-33-40' (ViT-S, faster); also 'vitl'/'vits'."),
    ("iters", "", "GRU refinement iterations (fewer: faster, coarser)."),
    ("scale", "", "Network input resolution relative to the camera image, e.g. 0.5."),
    ("precision", "", "Network arithmetic: 'fp32', 'fp16' or 'bf16' (CUDA only for the last two)."),
    ("device", "", "Torch device: 'cuda', 'cuda:N' or 'cpu'."),
    ("hierarchical", "", "Coarse-to-fine inference for large images: 'true' or 'false'."),
    ("start_camera", "false", "Also start the camera driver named in the config ('true'/'false')."),
    ("left_image", "", "Left rectified (or raw, with rectify:=auto) image topic; default: the config's remapping."),
    ("left_info", "", "Left CameraInfo topic; default: the config's remapping."),
    ("right_image", "", "Right image topic; default: the config's remapping."),
    ("right_info", "", "Right CameraInfo topic; default: the config's remapping."),
    ("log_level", "info", "Node log level: debug, info, warn, error."),
    ("dds_profile", "", "Fast DDS profile for every process of this launch (camera driver and node): empty for "
                        "the package's large-sample profile (config/fastdds_large_data.xml) unless "
                        "FASTRTPS_DEFAULT_PROFILES_FILE / FASTDDS_DEFAULT_PROFILES_FILE is set, a path for "
                        "another, 'none' for Fast DDS's defaults."),
)

#: Launch arguments that become node parameters, with their parameter type.
PARAMETER_ARGUMENTS = {"backend": str, "checkpoint": str, "iters": int, "scale": float, "precision": str,
                       "device": str, "hierarchical": bool, "onnx_model": str, "execution": str,
                       "warmup_width": int, "warmup_height": int, "geometry_device": str, "image_transport": str,
                       "depth_format": str}


def package_share() -> str:
    """The package's share directory: installed (ament index) or this source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory(PACKAGE)
    except Exception:  # not installed through ament (source tree, pip install)
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(name_or_path: str) -> str:
    """A config file by path, or by camera name ('zed' -> <share>/config/zed.yaml)."""
    if not name_or_path:
        name_or_path = "default"
    if os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        path = os.path.abspath(os.path.expanduser(name_or_path))
    else:
        path = os.path.join(package_share(), "config", f"{name_or_path}.yaml")
    if not os.path.isfile(path):
        raise ValueError(f"config file {path} not found")
    return path


def launch_settings(path: str) -> Dict[str, Any]:
    """The ``foundation_stereo_launch`` section of a config file: ``remappings`` (input name ->
    topic), ``namespace``, ``driver`` (package, launch_file, arguments) - empty where absent."""
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    section = (data.get(LAUNCH_SECTION) or {}).get("ros__parameters") or {}
    remap = section.get("remap") or {}
    unknown = sorted(set(remap) - set(INPUTS))
    if unknown:
        raise ValueError(f"{path}: unknown remap entries {unknown}; expected {list(INPUTS)}")
    choices = section.get("remap_choices") or {}
    for argument, by_value in choices.items():
        for value, topics in (by_value or {}).items():
            bad = sorted(set(topics or {}) - set(INPUTS))
            if bad:
                raise ValueError(f"{path}: remap_choices.{argument}.{value}: unknown entries {bad}; "
                                 f"expected {list(INPUTS)}")
    cameras = section.get("cameras") or {}
    if cameras and remap:
        raise ValueError(f"{path}: give either remap (one camera) or cameras (several), not both")
    for camera, topics in cameras.items():
        bad = sorted(set(topics or {}) - set(INPUTS))
        if bad:
            raise ValueError(f"{path}: cameras.{camera}: unknown entries {bad}; expected {list(INPUTS)}")
    driver = section.get("driver") or {}
    if driver and not (driver.get("package") and driver.get("launch_file")):
        raise ValueError(f"{path}: driver needs 'package' and 'launch_file'")
    return {"remappings": {k: str(v) for k, v in remap.items() if v}, "namespace": str(section.get("namespace", "")),
            "cameras": {str(c): {k: str(t) for k, t in (topics or {}).items() if t} for c, topics in cameras.items()},
            "remap_choices": {str(a): {str(v): {k: str(t) for k, t in (topics or {}).items() if t}
                                       for v, topics in (by_value or {}).items()} for a, by_value in choices.items()},
            "driver": {"package": driver.get("package", ""), "launch_file": driver.get("launch_file", ""),
                       "arguments": [str(a) for a in driver.get("arguments") or []],
                       "parameters": dict(driver.get("parameters") or {})} if driver else {}}


def node_parameters(path: str) -> Dict[str, Any]:
    """The node's parameters in a config file (sections ``stereo_depth_node``, ``/**/stereo_depth_node``
    or ``/**``, merged in that order of precedence, lowest first)."""
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    params: Dict[str, Any] = {}
    for key in ("/**", NODE_NAME, f"/{NODE_NAME}", f"/**/{NODE_NAME}"):
        section = data.get(key)
        if isinstance(section, dict):
            params.update(section.get("ros__parameters") or {})
    return params


def _to_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def find_default_checkpoint(variant: str) -> Optional[str]:
    """$FOUNDATION_STEREO_CHECKPOINT, or the cache folder of ``variant`` (any published one when empty)."""
    if variant and variant not in VARIANTS:
        raise ValueError(f"model_variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    from foundation_stereo_ros.evaluation import checkpoint_search as cs

    if os.environ.get(cs.ENV_VAR):
        found = cs.find_checkpoint()
        return str(found) if found else None
    if variant:
        p = cs.cache_dir() / VARIANTS[variant] / cs.CHECKPOINT_FILE
        return str(p) if p.is_file() else None
    found = cs.find_checkpoint()
    return str(found) if found else None


def parameter_overrides(values: Dict[str, str], config_parameters: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Node parameters from launch argument values; empty arguments are left out so that the
    config file decides. Without a checkpoint argument or one in the config, the default
    checkpoint is looked up (:func:`find_default_checkpoint`). Raises ValueError for values of
    the wrong type."""
    out: Dict[str, Any] = {}
    for name, kind in PARAMETER_ARGUMENTS.items():
        text = (values.get(name) or "").strip()
        if not text:
            continue
        try:
            out[name] = _to_bool(text) if kind is bool else kind(text)
        except ValueError as exc:
            raise ValueError(f"launch argument {name}:={text!r}: {exc}") from None
    if "checkpoint" not in out and not (config_parameters or {}).get("checkpoint"):
        variant = (values.get("model_variant") or "").strip()
        found = find_default_checkpoint(variant)
        if found:
            out["checkpoint"] = found
        elif variant:
            raise ValueError(f"model_variant:={variant}: no checkpoint at ~/.cache/foundation_stereo/"
                             f"{VARIANTS[variant]}/model_best_bp2.pth; download it (see the README) or pass "
                             f"checkpoint:=")
    return out


def remappings(settings: Dict[str, Any], values: Dict[str, str]) -> List[Tuple[str, str]]:
    """(node input, topic) pairs: launch arguments win over the topics a ``remap_choices`` argument
    selects, which win over the config's remappings."""
    topics = dict(settings.get("remappings", {}))
    for argument, by_value in settings.get("remap_choices", {}).items():
        chosen = (values.get(argument) or "").strip()
        if chosen in by_value:
            topics.update(by_value[chosen])
        elif chosen:
            raise ValueError(f"launch argument {argument}:={chosen!r}: expected one of {sorted(by_value)} or empty")
    topics.update({k: values[k] for k in INPUTS if values.get(k)})
    cameras = settings.get("cameras") or {}
    if cameras:
        given = [k for k in INPUTS if values.get(k)]
        if given:
            raise ValueError(f"launch arguments {', '.join(given)} name one camera's topics; this config serves "
                             f"the cameras {', '.join(cameras)}: remap them in its 'cameras' section")
        return [(f"{camera}/{NODE_INPUTS[k]}", by_input[k]) for camera, by_input in cameras.items()
                for k in INPUTS if k in by_input]
    return [(NODE_INPUTS[k], topics[k]) for k in INPUTS if k in topics]


def _fill(text: str, values: Dict[str, str], what: str) -> str:
    try:
        return text.format(**values)
    except KeyError as exc:
        raise ValueError(f"{what} refers to unknown launch argument {exc}") from None


def driver_parameters(settings: Dict[str, Any], values: Dict[str, str]) -> Dict[str, Any]:
    """The config's ``driver.parameters`` with ``{name}`` placeholders filled from the launch arguments;
    a filled value is read as YAML, so ``'{emitter}'`` with emitter:=1 gives the integer 1."""
    import yaml

    out = {}
    for name, value in settings.get("driver", {}).get("parameters", {}).items():
        if isinstance(value, str):
            value = yaml.safe_load(_fill(value, values, f"driver parameter {name}")) if value else value
        out[str(name)] = value
    return out


def driver_arguments(settings: Dict[str, Any], values: Dict[str, str], config: str,
                     parameters_file: str = "") -> List[Tuple[str, str]]:
    """The driver's launch arguments; ``{name}`` in the config is replaced by the launch argument
    ``name``, ``{config}`` by the config file's path and ``{driver_parameters}`` by ``parameters_file``."""
    out = []
    for item in settings.get("driver", {}).get("arguments", []):
        key, sep, value = item.partition(":=")
        if not sep:
            raise ValueError(f"driver argument {item!r} must read name:=value")
        out.append((key, _fill(value, {**values, "config": config, "driver_parameters": parameters_file},
                                f"driver argument {item!r}")))
    return out


def write_driver_parameters(parameters: Dict[str, Any]) -> str:
    """``parameters`` as a flat YAML file for the driver's launch file; its path."""
    import yaml

    fd, path = tempfile.mkstemp(prefix="foundation_stereo_driver_", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(parameters, fh)
    return path


def driver_share(package: str) -> str:
    """The driver package's share directory, or ValueError with one line saying what is missing."""
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        return get_package_share_directory(package)
    except PackageNotFoundError:
        raise ValueError(f"start_camera:=true needs the camera driver package '{package}', which is not installed "
                         f"(not in AMENT_PREFIX_PATH); install and source it, or start the camera yourself and "
                         f"leave start_camera:=false") from None


def declare_arguments(defaults: Optional[Dict[str, str]] = None, extra: Tuple[Tuple[str, str, str], ...] = ()):
    """DeclareLaunchArgument actions for :data:`ARGUMENTS` plus ``extra``, with ``defaults`` overriding
    the generic defaults (a camera launch file sets its config this way)."""
    from launch.actions import DeclareLaunchArgument

    defaults = defaults or {}
    return [DeclareLaunchArgument(name, default_value=defaults.get(name, default), description=description)
            for name, default, description in ARGUMENTS + tuple(extra)]


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def dds_environment(choice: str, environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment variables for the launched processes from the ``dds_profile`` argument (see
    foundation_stereo_ros.ros.dds): the profile's variables, or with 'none' the choice itself, so
    that the node does not load the package's profile on its own."""
    from foundation_stereo_ros.ros import dds

    environ = dict(os.environ) if environ is None else environ
    if choice.strip().lower() == "none":
        return {dds.CHOICE_VARIABLE: "none"}
    return dds.profile_environment(environ, choice)


def _launch_setup(context, *args, **kwargs):
    from launch.actions import IncludeLaunchDescription, LogInfo, RegisterEventHandler, SetEnvironmentVariable
    from launch.event_handlers import OnShutdown
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch_ros.actions import Node

    names = [a[0] for a in ARGUMENTS] + list(kwargs.get("extra_names", ()))
    values = {n: context.launch_configurations.get(n, "") for n in names}
    config = config_path(values["config"])
    settings = launch_settings(config)
    namespace = values["namespace"] or settings["namespace"] or "stereo"
    # Before the driver: the DDS profile matters most on the publishing side of the images.
    environment = dds_environment(values["dds_profile"])
    actions = [SetEnvironmentVariable(name, value) for name, value in environment.items()]
    if _to_bool(values["start_camera"] or "false"):
        driver = settings.get("driver")
        if not driver:
            actions.append(LogInfo(msg=f"start_camera:=true but {config} names no camera driver; start it yourself"))
        else:
            source = os.path.join(driver_share(driver["package"]), "launch", driver["launch_file"])
            parameters = driver_parameters(settings, values)
            parameters_file = write_driver_parameters(parameters) if parameters else ""
            if parameters_file:
                actions.append(RegisterEventHandler(OnShutdown(
                    on_shutdown=lambda event, context, path=parameters_file: _remove(path))))
            actions.append(IncludeLaunchDescription(
                PythonLaunchDescriptionSource(source),
                launch_arguments=driver_arguments(settings, values, config, parameters_file)))
    actions.append(Node(
        package=PACKAGE, executable=NODE_NAME, name=NODE_NAME, namespace=namespace, output="screen",
        parameters=[config, parameter_overrides(values, node_parameters(config)),
                    {"cameras": list(settings["cameras"])} if settings["cameras"] else {}],
        remappings=remappings(settings, values),
        arguments=["--ros-args", "--log-level", values["log_level"] or "info"]))
    return actions


def stereo_launch_description(defaults: Optional[Dict[str, str]] = None,
                              extra: Tuple[Tuple[str, str, str], ...] = ()):
    """The launch description shared by every launch file of the package (see module doc)."""
    from launch import LaunchDescription
    from launch.actions import OpaqueFunction

    return LaunchDescription(declare_arguments(defaults, extra) + [
        OpaqueFunction(function=_launch_setup, kwargs={"extra_names": [e[0] for e in extra]})])


def generate_launch_description():
    return stereo_launch_description()
