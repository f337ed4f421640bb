"""ONNX export of the network at a fixed input size and GRU iteration count.

The graph is produced by ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript). The
older TorchScript exporter cannot be used: it loses the static width of the padded right
features before ``Tensor.unfold`` in the cost volume and refuses the op. With torch.export every
op of the network has an ONNX translation at opset 18 (the sliding window becomes Gather/Slice,
the lookup GatherElements, the all-pairs correlation an Einsum), so no export-specific rewrite
of the network is needed.

The exported graph takes ``left`` and ``right`` as float32 (1, 3, H, W) RGB 0..255 images
already padded to ``H, W`` (multiples of 32, see :class:`~foundation_stereo_ros.model.padding.InputPadder`)
and returns ``disparity`` (1, 1, H, W) float32. The GRU loop is unrolled ``iters`` times with
shared weights. Metadata entries (``foundation_stereo.*``) record what the graph was made for;
:class:`~foundation_stereo_ros.runtime.backends.OnnxRuntimeDisparity` reads them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Union

import torch
import torch.nn as nn

from ..model import FoundationStereo
from ..model.padding import InputPadder

DEFAULT_OPSET = 18
METADATA_PREFIX = "foundation_stereo."


class FixedIterationNetwork(nn.Module):
    """``FoundationStereo.forward`` with the iteration count baked in: (left, right) -> disparity."""

    def __init__(self, model: FoundationStereo, iters: int):
        super().__init__()
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        self.model = model
        self.iters = iters

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.model(left, right, iters=self.iters).disparity


def export_metadata(model: FoundationStereo, image_height: int, image_width: int, iters: int) -> Dict[str, str]:
    """The ``foundation_stereo.*`` metadata of an export for camera images of this size."""
    padder = InputPadder(image_height, image_width)
    ph, pw = padder.padded_size
    cfg = model.cfg
    return {f"{METADATA_PREFIX}{k}": str(v) for k, v in dict(
        iters=iters, vit_size=cfg.vit_size, max_disp=cfg.max_disp, image_height=image_height,
        image_width=image_width, input_height=ph, input_width=pw).items()}


def export_onnx(model: FoundationStereo, path: Union[str, os.PathLike], image_height: int, image_width: int,
                iters: int, opset: int = DEFAULT_OPSET, external_data: bool | None = None) -> Path:
    """Export ``model`` (fp32, eval, on the CPU) for camera images of ``image_height x image_width``.

    The graph's input size is that size padded to multiples of 32. ``external_data=None`` keeps
    the weights in the .onnx file while it stays under protobuf's 2 GB limit (ViT-S and ViT-L
    both do) and moves them to a ``.data`` file beside it otherwise. Returns the written path.
    """
    try:
        import onnxscript  # noqa: F401  - torch.onnx's dynamo exporter needs it
    except ImportError:
        raise ValueError("ONNX export needs the 'onnxscript' package (pip install onnxscript onnx)") from None
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if opset < 17:
        # LayerNormalization (the ViT and the disparity transformer) is a single op from opset 17.
        raise ValueError(f"opset must be >= 17, got {opset}")
    padder = InputPadder(image_height, image_width)  # validates the size
    ph, pw = padder.padded_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().eval().cpu()
    wrapper = FixedIterationNetwork(model, iters).eval()
    gen = torch.Generator().manual_seed(0)
    example = (torch.rand(1, 3, ph, pw, generator=gen) * 255, torch.rand(1, 3, ph, pw, generator=gen) * 255)
    with torch.no_grad():
        program = torch.onnx.export(wrapper, example, dynamo=True, opset_version=opset,
                                    input_names=["left", "right"], output_names=["disparity"],
                                    verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program; this PyTorch is too old for the dynamo exporter")
    program.model.metadata_props.update(export_metadata(model, image_height, image_width, iters))
    program.save(str(path), external_data=external_data)
    return path


def read_export_metadata(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """The ``foundation_stereo.*`` metadata of an exported file (prefix removed); {} if none."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}
