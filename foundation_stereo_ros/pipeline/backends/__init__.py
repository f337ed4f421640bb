"""Disparity estimators behind one interface (:class:`DisparityBackend`): OpenCV SGBM, the
FoundationStereo network in PyTorch, and its ONNX export run by ONNX Runtime.

A backend turns a rectified RGB pair into the *raw* disparity ``x_left - x_right`` in pixels of
the input resolution (float32, NaN where it has no valid match) and describes its search range,
sub-pixel step and valid window. The principal-point adjustment and everything after it is done
by :class:`~foundation_stereo_ros.pipeline.processor.StereoProcessor`, identically for every
backend. The network backends run the network through the *runners* of
:mod:`foundation_stereo_ros.runtime` (which pad, infer and return its raw disparity).

- ``base``: the interface (one pair, or a batch of pairs of one size), its errors, :func:`invalidate`
- ``sgbm``: :class:`SGBMBackend`
- ``network``: :class:`FoundationStereoBackend` (scale, execution modes, out-of-memory fallback)
- ``onnx``: :class:`OnnxBackend` and the ONNX Runtime provider policy
- ``resize``: running a network at a size other than the camera's

Importing this package imports neither torch nor onnxruntime; the network backends do when built.
"""
from __future__ import annotations

from typing import Optional

from ..config import ProcessorConfig
from .base import BackendError, DisparityBackend, ExecutionModeError, invalidate
from .network import FoundationStereoBackend, is_out_of_memory
from .onnx import OnnxBackend, default_trt_cache_dir, onnx_provider_list
from .sgbm import SGBMBackend

__all__ = ["BackendError", "DisparityBackend", "ExecutionModeError", "FoundationStereoBackend", "OnnxBackend",
           "SGBMBackend", "default_trt_cache_dir", "invalidate", "is_out_of_memory", "make_backend",
           "onnx_provider_list"]


def make_backend(config: ProcessorConfig, previous: Optional[DisparityBackend] = None) -> DisparityBackend:
    """The backend ``config`` asks for; reuses ``previous``'s loaded network when the checkpoint and
    device are unchanged, and defers loading a network that replaces ``previous``'s to the first
    frame. Raises CheckpointError / BackendError (ValueErrors) when it cannot be built."""
    if config.backend == "sgbm":
        return SGBMBackend(config)
    if config.backend == "onnx":
        if isinstance(previous, OnnxBackend) and previous.source == config.backend_key():
            return previous.with_options(config)
        return OnnxBackend(config)
    if isinstance(previous, FoundationStereoBackend):
        if previous.source == (config.checkpoint, config.device):
            return previous.with_options(config)
        # Another network replaces a loaded one: checked now, loaded by the next frame after the
        # old one is let go (one in memory at a time, and never beside a CUDA-graph capture).
        return FoundationStereoBackend(config, defer_load=True)
    return FoundationStereoBackend(config)
