"""Processing parameters: one table of specs (default, description, range) and a validated config.

The node declares a ROS parameter for every :data:`PROCESSOR_PARAMETERS` entry with the same
name, description and range, and ``config/default.yaml`` lists them all; the offline tools build
the same :class:`ProcessorConfig` from their options, so both process frames identically.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from ..vocabulary import EXECUTIONS, PRECISIONS

BACKENDS = ("foundation_stereo", "onnx", "sgbm")
ONNX_PROVIDERS = ("auto", "tensorrt", "cuda", "cpu")
SGBM_MODES = ("sgbm", "hh", "sgbm_3way", "hh4")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its default fixes its type (bool, int, float or str)."""

    name: str
    default: Any
    description: str
    choices: Optional[Sequence[str]] = None
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None  # integer parameters: allowed values are min + k * step

    @property
    def type(self) -> type:
        return type(self.default)

    def check(self, value: Any) -> Optional[str]:
        """None if ``value`` is acceptable, else the reason it is not."""
        t = self.type
        if t is bool:
            ok = isinstance(value, bool)
        elif t is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            return f"{self.name} must be a {t.__name__}, got {value!r} ({type(value).__name__})"
        if t is float and not math.isfinite(value):
            return f"{self.name} must be finite, got {value}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name} must be one of {', '.join(map(repr, self.choices))}; got {value!r}"
        if self.min is not None and value < self.min:
            return f"{self.name} must be >= {self.min}, got {value}"
        if self.max is not None and value > self.max:
            return f"{self.name} must be <= {self.max}, got {value}"
        if self.step and t is int and (value - (self.min or 0)) % self.step:
            return f"{self.name} must be {self.min or 0} + a multiple of {self.step}, got {value}"
        return None


PROCESSOR_PARAMETERS: Tuple[ParamSpec, ...] = (
    ParamSpec("backend", "foundation_stereo", "Disparity estimator: 'foundation_stereo' (the network in PyTorch), "
              "'onnx' (the network exported by foundation-stereo-export, run by ONNX Runtime with TensorRT, CUDA or "
              "the CPU) or 'sgbm' (OpenCV semi-global matching on the CPU, no GPU or checkpoint needed).",
              choices=BACKENDS),
    ParamSpec("checkpoint", "", "FoundationStereo checkpoint: the .pth file or its folder (with cfg.yaml beside "
              "it). Required for backend 'foundation_stereo'."),
    ParamSpec("iters", 32, "GRU refinement iterations of the network (fewer: faster, coarser). Backend 'onnx' runs "
              "the number fixed at export.", min=1, max=128,
              step=1),
    ParamSpec("hierarchical", False, "Coarse-to-fine inference: a half-resolution pass initialises the full one "
              "(helps large images / large disparities)."),
    ParamSpec("device", "cuda", "Device of the network: 'cuda', 'cuda:N' or 'cpu' (backend 'onnx': the GPU ONNX "
              "Runtime runs on, or 'cpu' for its CPU provider only)."),
    ParamSpec("precision", "fp32", "Network arithmetic: 'fp32', or 'fp16'/'bf16' autocast on CUDA (backend 'onnx': "
              "'fp16' builds the TensorRT engine in fp16).",
              choices=PRECISIONS),
    ParamSpec("execution", "eager", "How the PyTorch network runs: 'eager'; 'compile' (torch.compile: minutes of "
              "compilation before the first frame); 'cudagraph' (the whole pass replayed as one CUDA graph; CUDA "
              "only); 'compile-cudagraph' (both). The non-eager modes are prepared for one network input size, "
              "warmup_width x warmup_height at start (or the first frame's); frames of any other size run eager.",
              choices=EXECUTIONS),
    ParamSpec("warmup_width", 0, "Camera image width to prepare the execution mode for at start (with "
              "warmup_height); 0: prepare on the first frame.", min=0, max=16384, step=1),
    ParamSpec("warmup_height", 0, "Camera image height to prepare the execution mode for at start (with "
              "warmup_width); 0: prepare on the first frame.", min=0, max=16384, step=1),
    ParamSpec("onnx_model", "", "ONNX model made by foundation-stereo-export (fixed input size and GRU "
              "iterations). Required for backend 'onnx'."),
    ParamSpec("onnx_provider", "auto", "ONNX Runtime execution provider: 'auto' (TensorRT, then CUDA, then the "
              "CPU, as installed; the CPU only with device 'cpu'), 'tensorrt', 'cuda' or 'cpu'.",
              choices=ONNX_PROVIDERS),
    ParamSpec("onnx_trt_cache_dir", "", "Folder where ONNX Runtime's TensorRT provider keeps built engines, so "
              "only the first start builds one (minutes on Jetson); empty: $ROS_HOME/foundation_stereo_trt "
              "(ROS_HOME defaults to ~/.ros)."),
    ParamSpec("geometry_device", "auto", "Where rectification, depth and points are computed for backend "
              "'foundation_stereo': 'auto' (for a network on CUDA the faster of the GPU, where each output leaves it "
              "in one copy, and the host, timed once on the first frame; otherwise the host), 'network' (always "
              "on the network's device, the CPU included, where it is slower) or 'host' (OpenCV and numpy).",
              choices=("auto", "network", "host")),
    ParamSpec("scale", 1.0, "Network input resolution relative to the camera image; the disparity is resized "
              "back and multiplied by 1/scale.", min=0.05, max=2.0),
    ParamSpec("oom_min_scale_factor", 0.25, "Out-of-memory fallback of the network: a frame that runs out of GPU "
              "memory is retried at half the resolution, then a quarter ..., down to this fraction of 'scale'; "
              "below it the frame is skipped. 1.0: no retries.", min=0.01, max=1.0),
    ParamSpec("oom_probe_period_s", 5.0, "After an out-of-memory fallback, frames keep the reduced resolution and "
              "the configured one is tried again every this many seconds (0: every frame tries it first).",
              min=0.0, max=3600.0),
    ParamSpec("check_frame_ids", True, "Skip a frame whose image frame_id differs from the frame_id of its own "
              "CameraInfo (calibration of another camera). Left and right frame ids may differ; empty ids are "
              "not checked."),
    ParamSpec("rectify", "auto", "'auto': rectify when CameraInfo has distortion or a rotation; 'always'; "
              "'never' (input is already rectified).", choices=("auto", "always", "never")),
    ParamSpec("min_depth", 0.0, "Depths below this (metres) are invalid (NaN) in depth and points2; 0: no limit.",
              min=0.0, max=1.0e4),
    ParamSpec("max_depth", 0.0, "Depths above this (metres) are invalid (NaN) in depth and points2; 0: no limit.",
              min=0.0, max=1.0e4),
    ParamSpec("edge_filter", 0.0, "Flying-pixel filter: a pixel whose depth differs from one of its 4 neighbours' "
              "by more than this fraction of the nearer of the two (0.05: 5 %) lies on a depth discontinuity and is "
              "invalid in disparity, depth and points2; 0: off.", min=0.0, max=10.0),
    ParamSpec("lr_check", 0.0, "Left-right consistency check of the network (backends 'foundation_stereo' and "
              "'onnx'), tolerance in camera px: the network also matches the mirrored, swapped pair to get the right "
              "view's disparity d_R (one batch of two: about twice the network time), and a pixel whose d_L(x) differs "
              "from d_R(x - d_L(x)) (linearly interpolated) by more than this is invalid (occluded in the right image, "
              "or mismatched); 0: off. Backend 'sgbm' has its own check (sgbm_disp12_max_diff).", min=0.0, max=64.0),
    ParamSpec("sgbm_num_disparities", 128, "SGBM disparity search range in px (multiple of 16).", min=16, max=1024,
              step=16),
    ParamSpec("sgbm_min_disparity", 0, "SGBM smallest disparity searched, px.", min=-512, max=512, step=1),
    ParamSpec("sgbm_block_size", 5, "SGBM matched block size, px (odd).", min=1, max=31, step=2),
    ParamSpec("sgbm_p1", 0, "SGBM penalty for disparity changes of 1 px between neighbours; 0: 8 * block_size^2.",
              min=0, max=100000, step=1),
    ParamSpec("sgbm_p2", 0, "SGBM penalty for larger disparity changes (> p1); 0: 32 * block_size^2.",
              min=0, max=400000, step=1),
    ParamSpec("sgbm_uniqueness_ratio", 10, "SGBM: the best match must beat the second best by this margin, %.",
              min=0, max=100, step=1),
    ParamSpec("sgbm_speckle_window_size", 100, "SGBM: connected regions smaller than this (px) are invalidated; "
              "0 disables speckle filtering.", min=0, max=10000, step=1),
    ParamSpec("sgbm_speckle_range", 2, "SGBM: largest disparity variation inside a connected region, px.",
              min=0, max=64, step=1),
    ParamSpec("sgbm_disp12_max_diff", 1, "SGBM: left-right consistency check tolerance in px; -1 disables it.",
              min=-1, max=1024, step=1),
    ParamSpec("sgbm_pre_filter_cap", 63, "SGBM: clip of the x-derivative prefilter.", min=1, max=63, step=1),
    ParamSpec("sgbm_mode", "sgbm_3way", "SGBM variant: 'sgbm' (5 directions), 'hh' (8 directions, much more "
              "memory), 'sgbm_3way' (fast), 'hh4'.", choices=SGBM_MODES),
)

SPECS: Dict[str, ParamSpec] = {s.name: s for s in PROCESSOR_PARAMETERS}

#: Fields that change the disparity backend (others can be swapped without rebuilding it).
FOUNDATION_STEREO_FIELDS = ("checkpoint", "device")
ONNX_FIELDS = ("onnx_model", "onnx_provider", "onnx_trt_cache_dir", "device", "precision")
SGBM_FIELDS = tuple(s.name for s in PROCESSOR_PARAMETERS if s.name.startswith("sgbm_"))


@dataclass(frozen=True)
class ProcessorConfig:
    """Everything that decides how a pair is processed. Validated on construction (ValueError)."""

    backend: str = SPECS["backend"].default
    checkpoint: str = SPECS["checkpoint"].default
    iters: int = SPECS["iters"].default
    hierarchical: bool = SPECS["hierarchical"].default
    device: str = SPECS["device"].default
    precision: str = SPECS["precision"].default
    execution: str = SPECS["execution"].default
    warmup_width: int = SPECS["warmup_width"].default
    warmup_height: int = SPECS["warmup_height"].default
    onnx_model: str = SPECS["onnx_model"].default
    onnx_provider: str = SPECS["onnx_provider"].default
    onnx_trt_cache_dir: str = SPECS["onnx_trt_cache_dir"].default
    geometry_device: str = SPECS["geometry_device"].default
    scale: float = SPECS["scale"].default
    oom_min_scale_factor: float = SPECS["oom_min_scale_factor"].default
    oom_probe_period_s: float = SPECS["oom_probe_period_s"].default
    check_frame_ids: bool = SPECS["check_frame_ids"].default
    rectify: str = SPECS["rectify"].default
    min_depth: float = SPECS["min_depth"].default
    max_depth: float = SPECS["max_depth"].default
    edge_filter: float = SPECS["edge_filter"].default
    lr_check: float = SPECS["lr_check"].default
    sgbm_num_disparities: int = SPECS["sgbm_num_disparities"].default
    sgbm_min_disparity: int = SPECS["sgbm_min_disparity"].default
    sgbm_block_size: int = SPECS["sgbm_block_size"].default
    sgbm_p1: int = SPECS["sgbm_p1"].default
    sgbm_p2: int = SPECS["sgbm_p2"].default
    sgbm_uniqueness_ratio: int = SPECS["sgbm_uniqueness_ratio"].default
    sgbm_speckle_window_size: int = SPECS["sgbm_speckle_window_size"].default
    sgbm_speckle_range: int = SPECS["sgbm_speckle_range"].default
    sgbm_disp12_max_diff: int = SPECS["sgbm_disp12_max_diff"].default
    sgbm_pre_filter_cap: int = SPECS["sgbm_pre_filter_cap"].default
    sgbm_mode: str = SPECS["sgbm_mode"].default

    def __post_init__(self) -> None:
        # Integers are fine where floats are expected (YAML '1' for scale); store them as float.
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if SPECS[f.name].type is float and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))
        problems = config_problems(self.as_dict())
        if problems:
            raise ValueError("invalid processing parameters: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], ignore_unknown: bool = False) -> "ProcessorConfig":
        """From a dict of parameter values (missing ones take their defaults)."""
        unknown = [k for k in values if k not in SPECS]
        if unknown and not ignore_unknown:
            raise ValueError(f"unknown processing parameters: {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in values.items() if k in SPECS})

    def as_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> "ProcessorConfig":
        return dataclasses.replace(self, **changes)

    def backend_key(self) -> Tuple:
        """Equal keys: the same backend object can serve both configs."""
        names = {"foundation_stereo": FOUNDATION_STEREO_FIELDS, "onnx": ONNX_FIELDS}.get(self.backend, SGBM_FIELDS)
        return (self.backend,) + tuple(getattr(self, n) for n in names)


def config_problems(values: Mapping[str, Any]) -> list:
    """Every reason the (complete or partial) parameter set ``values`` is unacceptable."""
    problems = [p for k, v in values.items() if k in SPECS for p in [SPECS[k].check(v)] if p]
    if problems:
        return problems
    get = lambda k: values.get(k, SPECS[k].default)  # noqa: E731
    if get("max_depth") > 0 and get("min_depth") >= get("max_depth"):
        problems.append(f"min_depth ({get('min_depth')}) must be below max_depth ({get('max_depth')}) "
                        f"unless max_depth is 0 (no limit)")
    p1, p2 = get("sgbm_p1"), get("sgbm_p2")
    if (p1 or p2) and (p1 == 0) != (p2 == 0):
        problems.append("set both sgbm_p1 and sgbm_p2, or neither (0: automatic)")
    elif p1 and p2 <= p1:
        problems.append(f"sgbm_p2 ({p2}) must be larger than sgbm_p1 ({p1})")
    device = get("device")
    if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        problems.append(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    elif get("precision") != "fp32" and device == "cpu":
        problems.append(f"precision {get('precision')!r} needs a CUDA device; use fp32 on the CPU")
    backend, execution = get("backend"), get("execution")
    if (get("warmup_width") == 0) != (get("warmup_height") == 0):
        problems.append("set both warmup_width and warmup_height, or neither (0: the first frame's size)")
    if backend == "foundation_stereo" and execution != "eager":
        if get("hierarchical"):
            problems.append(f"hierarchical inference runs two passes of different sizes and is eager only; "
                            f"set execution 'eager' or hierarchical false (execution is {execution!r})")
        if "cudagraph" in execution and device == "cpu":
            problems.append(f"execution {execution!r} needs a CUDA device; use 'eager' or 'compile' on the CPU")
    if backend == "onnx":
        if not get("onnx_model"):
            problems.append("backend 'onnx' needs onnx_model: the .onnx file made by foundation-stereo-export")
        if get("hierarchical"):
            problems.append("backend 'onnx' has no hierarchical inference (the exported graph is one pass)")
        if get("scale") != 1.0:
            problems.append("backend 'onnx' has a fixed input size (chosen at export); leave scale at 1.0")
        if get("precision") == "bf16":
            problems.append("backend 'onnx' runs fp32, or fp16 through TensorRT; bf16 is not offered")
        provider = get("onnx_provider")
        if device == "cpu" and provider in ("tensorrt", "cuda"):
            problems.append(f"onnx_provider {provider!r} needs a CUDA device; set device 'cuda' or provider 'cpu'")
        if get("precision") == "fp16" and provider in ("cuda", "cpu"):
            problems.append(f"fp16 for backend 'onnx' is TensorRT's; provider {provider!r} runs the fp32 graph")
    return problems


def specs(names: Iterable[str] = ()) -> Tuple[ParamSpec, ...]:
    return tuple(SPECS[n] for n in names) if names else PROCESSOR_PARAMETERS
