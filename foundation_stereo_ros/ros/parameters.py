"""The parameters of ``stereo_depth_node``: declared from :class:`ParamSpec` (with descriptions,
ranges and read-only flags), validated at start, and the policy for a change at runtime.

The processing parameters are the pipeline's :data:`PROCESSOR_PARAMETERS`; the node's own are
:data:`NODE_PARAMETERS`. Everything a frame is processed with is one immutable
:class:`FrameSettings`: :func:`initial_settings` builds it at start, :func:`change_parameters`
decides whether a ``set_parameters`` request is accepted and builds the settings that follow it.
Neither touches the node; the node applies what they return.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import rclpy.exceptions
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from ..pipeline import ProcessorConfig, StereoProcessor
from ..pipeline.config import PROCESSOR_PARAMETERS, ParamSpec, config_problems
from ..vocabulary import is_camera_namespace
from .messages import DEPTH_FORMATS

IMAGE_TRANSPORTS = ("raw", "compressed")

#: Parameters of the node itself (the processing ones are PROCESSOR_PARAMETERS).
NODE_PARAMETERS: Tuple[ParamSpec, ...] = (
    ParamSpec("approximate_sync", False, "Pair left/right images and CameraInfo by approximate instead of exact "
              "timestamps (cameras that are not hardware-synchronised). Read-only at runtime."),
    ParamSpec("sync_tolerance_s", 0.005, "Largest stamp difference within a pair with approximate_sync, seconds. "
              "Read-only at runtime.", min=0.0, max=1.0),
    ParamSpec("queue_size", 5, "Messages per input kept waiting for partners. Read-only at runtime.", min=1, max=100,
              step=1),
    ParamSpec("qos_reliability", "best_effort", "Reliability of the input subscriptions: 'best_effort' (sensor "
              "data QoS, receives from any publisher) or 'reliable'. Read-only at runtime.",
              choices=("best_effort", "reliable")),
    ParamSpec("qos_depth", 5, "History depth of the input subscriptions and output publishers. Read-only at "
              "runtime.", min=1, max=100, step=1),
    ParamSpec("image_transport", "raw", "Transport of the input images: 'raw' (sensor_msgs/Image on left/image_rect "
              "and right/image_rect) or 'compressed' (sensor_msgs/CompressedImage, JPEG or PNG as "
              "compressed_image_transport publishes it, on <image topic>/compressed: remap the image topics as for "
              "'raw'); compressed images are decoded in the worker thread. Read-only at runtime.",
              choices=IMAGE_TRANSPORTS),
    ParamSpec("depth_format", "32FC1", "Encoding of the depth image: '32FC1' (metres, NaN where invalid) or '16UC1' "
              "(millimetres, 0 where invalid or beyond 65.535 m; REP 118, as RealSense-style consumers take).",
              choices=DEPTH_FORMATS),
    ParamSpec("points_organized", True, "points2 as an organised H x W cloud with NaN for invalid pixels (true) "
              "or a dense 1 x N cloud of valid points only (false)."),
    ParamSpec("diagnostics_period_s", 1.0, "Period of the /diagnostics status, seconds. Read-only at runtime.",
              min=0.1, max=60.0),
    ParamSpec("log_throttle_s", 5.0, "Each kind of per-frame problem is logged at most once per this many "
              "seconds (with a count of the suppressed ones).", min=0.0, max=3600.0),
)
READ_ONLY = frozenset({"approximate_sync", "sync_tolerance_s", "queue_size", "qos_reliability", "qos_depth",
                       "image_transport", "diagnostics_period_s"})
ALL_PARAMETERS: Tuple[ParamSpec, ...] = PROCESSOR_PARAMETERS + NODE_PARAMETERS
_PROCESSOR_NAMES = frozenset(s.name for s in PROCESSOR_PARAMETERS)
_NODE_SPECS = {s.name: s for s in NODE_PARAMETERS}


class StartupError(RuntimeError):
    """The node cannot run with its parameters (bad value, unusable checkpoint ...)."""


@dataclass(frozen=True)
class FrameSettings:
    """Everything one frame is processed and published with; replaced whole, never mutated."""

    processor: StereoProcessor
    points_organized: bool
    depth_format: str = DEPTH_FORMATS[0]


@dataclass(frozen=True)
class ParameterChange:
    """The decision on a ``set_parameters`` request: the settings the next frames are processed
    with (None: refused, for ``reason``), and lines for the log."""

    settings: Optional[FrameSettings] = None
    reason: str = ""
    notes: Tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.settings is not None


def parameter_descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=spec.description, read_only=spec.name in READ_ONLY)
    if spec.choices is not None:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.type is int and spec.min is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=int(spec.step or 1))]
    elif spec.type is float and spec.min is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max),
                                                        step=0.0)]
    return desc


def declare_parameters(node: Any) -> Dict[str, Any]:
    """Declare :data:`ALL_PARAMETERS` on ``node``; their values (overrides applied). A value of
    the wrong type or out of range is a :class:`StartupError` that says what is expected."""
    values = {}
    for spec in ALL_PARAMETERS:
        try:
            p = node.declare_parameter(spec.name, spec.default, parameter_descriptor(spec))
        except (rclpy.exceptions.InvalidParameterValueException,
                rclpy.exceptions.InvalidParameterTypeException) as e:
            raise StartupError(f"parameter {spec.name}: {e} (expected a {spec.type.__name__}"
                               f"{_range_text(spec)})") from None
        values[spec.name] = p.value
    return values


#: The node's string-array parameter naming its cameras (not a :class:`ParamSpec`: those are scalars).
CAMERAS_PARAMETER = "cameras"
CAMERAS_DESCRIPTION = (
    "Namespaces of the stereo cameras this node serves, relative to the node's namespace, e.g. ['front', "
    "'rear']: camera <c> is read from <c>/left/image_rect, <c>/left/camera_info, <c>/right/image_rect, "
    "<c>/right/camera_info and published on <c>/disparity, <c>/depth, <c>/points2 ...; each camera has its own "
    "synchronisation, calibration, outputs and diagnostic status, and one network matches them all (pairs of "
    "one size that are ready together in one batch). Unset or empty: one camera on the node's own topics. "
    "Read-only at runtime.")


def declare_cameras(node: Any) -> List[str]:
    """Declare the ``cameras`` parameter on ``node``; its value ([] when unset)."""
    try:
        p = node.declare_parameter(CAMERAS_PARAMETER, Parameter.Type.STRING_ARRAY,
                                   ParameterDescriptor(description=CAMERAS_DESCRIPTION, read_only=True))
    except rclpy.exceptions.InvalidParameterTypeException as e:
        raise StartupError(f"parameter cameras: {e} (expected a list of strings, e.g. ['front', 'rear'])") from None
    return list(p.value or [])


def camera_names(values: Sequence[str], max_cameras: int = 8) -> List[str]:
    """The camera namespaces of the ``cameras`` parameter, checked: [""] (one camera on the node's
    own topics) when empty; :class:`StartupError` for an empty, repeated or malformed name."""
    names = [str(v).strip().rstrip("/") for v in values]
    if not names:
        return [""]
    problems = []
    if len(names) > max_cameras:
        problems.append(f"at most {max_cameras} cameras, got {len(names)}")
    for raw, name in zip(values, names):
        if not name:
            problems.append(f"{raw!r} is not a camera namespace")
        elif not is_camera_namespace(name, absolute=True):
            problems.append(f"{raw!r} is not a valid ROS namespace (letters, digits and '_', each part starting "
                            f"with a letter or '_', parts separated by '/')")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"repeated: {', '.join(repeated)}")
    if problems:
        raise StartupError("parameter cameras: " + "; ".join(problems))
    return names


def initial_settings(values: Mapping[str, Any]) -> FrameSettings:
    """The settings of the first frames, from every parameter's value; :class:`StartupError` when
    a value is invalid or the backend cannot be built (e.g. an unusable checkpoint)."""
    problems = config_problems(_processor_values(values))
    problems += [p for k, v in values.items() if k in _NODE_SPECS for p in [_NODE_SPECS[k].check(v)] if p]
    if problems:
        raise StartupError("invalid parameters: " + "; ".join(problems))
    config = ProcessorConfig.from_mapping(_processor_values(values))
    try:
        processor = StereoProcessor(config)
    except ValueError as e:  # CheckpointError, BackendError
        raise StartupError(f"{config.backend} backend: {e}") from None
    return FrameSettings(processor, bool(values["points_organized"]), str(values["depth_format"]))


def change_parameters(base: FrameSettings, values: Mapping[str, Any], changes: Mapping[str, Any]) -> ParameterChange:
    """Whether to accept ``changes`` (name -> new value) to the parameters ``values`` whose frames
    are processed with ``base``, and the settings that follow. A changed processing parameter
    reconfigures the processor (reusing what the change leaves valid, e.g. a loaded network)."""
    merged = dict(values)
    merged.update(changes)
    problems = []
    for name, value in changes.items():
        spec = _NODE_SPECS.get(name)
        if spec is not None:
            problem = spec.check(value)
            if problem:
                problems.append(problem)
    proc_values = _processor_values(merged)
    problems += config_problems(proc_values)
    if problems:
        return ParameterChange(reason="; ".join(problems))
    processor = base.processor
    notes = []
    if _PROCESSOR_NAMES.intersection(changes):
        try:
            processor = processor.reconfigured(ProcessorConfig.from_mapping(proc_values))
        except ValueError as e:
            return ParameterChange(reason=str(e))
        if processor.backend is not base.processor.backend:
            notes += [f"{processor.config.backend} backend: {note}" for note in processor.backend.notes]
        cfg = processor.config
        if (cfg.backend == "foundation_stereo" and cfg.execution != "eager"
                and getattr(processor.backend, "prepared_size", None) is None):
            notes.append(f"execution {cfg.execution!r} will be prepared on the next frame, which will be slow "
                         f"(frames arriving meanwhile are dropped, newest kept)")
    settings = replace(base, processor=processor, points_organized=bool(merged["points_organized"]),
                       depth_format=str(merged["depth_format"]))
    return ParameterChange(settings=settings, notes=tuple(notes))


def _processor_values(values: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in values.items() if k in _PROCESSOR_NAMES}


def _range_text(spec: ParamSpec) -> str:
    if spec.choices:
        return f", one of {', '.join(spec.choices)}"
    text = f" in [{spec.min}, {spec.max}]" if spec.min is not None else ""
    if spec.type is float:
        text += "; write floats with a decimal point, e.g. 1.0 rather than 1"
    return text
