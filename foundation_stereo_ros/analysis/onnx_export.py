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
:func:`~foundation_stereo_ros.runtime.onnx_runner.read_export_metadata` reads them (for
:class:`~foundation_stereo_ros.runtime.onnx_runner.OnnxRunner`).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Dict, Union

import numpy as np
import torch
import torch.nn as nn

from ..model import FoundationStereo
from ..model.padding import InputPadder
from ..runtime.onnx_runner import METADATA_PREFIX

DEFAULT_OPSET = 18

# Reductions whose axes moved from an attribute to an input in opset 18 (ReduceSum did in 13).
_REDUCE_AXES_MOVED = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                      "ReduceLogSumExp", "ReduceSumSquare"}
_NEW_IN_18 = {"BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "CenterCropPad", "Col2Im", "GroupNormalization",
              "LpPool", "Mish", "OptionalGetElement", "OptionalHasElement"}


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


def downgrade_to_opset17(model):
    """Rewrite an opset-18 ``onnx.ModelProto`` (in place) as opset 17, for TensorRT 8.6 (JetPack 6.0).

    torch's exporter writes opset 18 and onnx's version converter has no Split 18->17 adapter, so
    the few changes of opset 18 that this network's graph uses are undone here: reduction axes
    back to attributes, ``Split(num_outputs)`` to explicit sizes, Resize's new default-valued
    attributes dropped. Anything else new in 18 raises ValueError. Needs static shapes.
    """
    import onnx  # optional (pip install onnx): only exporting needs it
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {t.name: t for t in graph.initializer if not t.external_data}  # converted on use: weights are big
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = [d.dim_value for d in dims]
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _NEW_IN_18:
            raise ValueError(f"node {node.name}: {node.op_type} does not exist before opset 18")
        if node.op_type in _REDUCE_AXES_MOVED:
            if "noop_with_empty_axes" in attrs:
                if attrs["noop_with_empty_axes"].i:
                    raise ValueError(f"node {node.name}: noop_with_empty_axes=1 has no opset-17 form")
                node.attribute.remove(attrs["noop_with_empty_axes"])
            if len(node.input) > 1 and node.input[1]:
                if node.input[1] not in consts:
                    raise ValueError(f"node {node.name}: reduction axes are not a constant")
                axes = [int(a) for a in numpy_helper.to_array(consts[node.input[1]]).reshape(-1)]
                del node.input[1:]
                node.attribute.append(helper.make_attribute("axes", axes))
        elif node.op_type == "Split" and "num_outputs" in attrs:
            n_out = attrs["num_outputs"].i
            shape = shapes.get(node.input[0])
            if shape is None:
                raise ValueError(f"node {node.name}: Split input shape unknown; cannot write explicit sizes")
            axis = attrs["axis"].i if "axis" in attrs else 0
            length = shape[axis]
            chunk = -(-length // n_out)  # opset 18: equal chunks of ceil(L/n), the last one smaller
            sizes = [min(chunk, length - i * chunk) for i in range(n_out)]
            name = f"{node.name or node.output[0]}_split_sizes"
            graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
            node.input.append(name)
            node.attribute.remove(attrs["num_outputs"])
        elif node.op_type == "Resize":
            for key, default in (("antialias", 0), ("keep_aspect_ratio_policy", b"stretch")):
                if key in attrs:
                    value = helper.get_attribute_value(attrs[key])
                    if value != default:
                        raise ValueError(f"node {node.name}: Resize {key}={value!r} has no opset-17 form")
                    node.attribute.remove(attrs[key])
        elif node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
            raise ValueError(f"node {node.name}: Pad with an axes input has no opset-17 form")
        elif node.op_type in ("ScatterElements", "ScatterND") and "reduction" in attrs:
            if helper.get_attribute_value(attrs["reduction"]) in (b"max", b"min"):
                raise ValueError(f"node {node.name}: {node.op_type} reduction max/min needs opset 18")
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]  # the reduction axes moved to attributes
    for t in unused:
        graph.initializer.remove(t)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = 17
    return model


def export_onnx(model: FoundationStereo, path: Union[str, os.PathLike], image_height: int, image_width: int,
                iters: int, opset: int = DEFAULT_OPSET, external_data: bool | None = None) -> Path:
    """Export ``model`` (fp32, eval, on the CPU) for camera images of ``image_height x image_width``.

    ``opset`` 17 is written as 18 and rewritten by :func:`downgrade_to_opset17`.
    The graph's input size is that size padded to multiples of 32. ``external_data=None`` keeps
    the weights in the .onnx file while it stays under protobuf's 2 GB limit (ViT-S and ViT-L
    both do) and moves them to a ``.data`` file beside it otherwise. Returns the written path.
    """
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise ValueError(f"ONNX export needs PyTorch 2.5 or newer (torch.onnx.export(dynamo=True)); this is "
                         f"{torch.__version__}. Export on a machine with a newer PyTorch and copy the .onnx file: it "
                         f"does not depend on the PyTorch that runs it")
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
        program = torch.onnx.export(wrapper, example, dynamo=True, opset_version=max(opset, DEFAULT_OPSET),
                                    input_names=["left", "right"], output_names=["disparity"],
                                    verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program; this PyTorch is too old for the dynamo exporter")
    program.model.metadata_props.update(export_metadata(model, image_height, image_width, iters))
    program.save(str(path), external_data=external_data)
    if opset == 17:
        import onnx  # optional, as above

        proto = onnx.load(str(path), load_external_data=False)  # weights stay where they are
        downgrade_to_opset17(proto)
        onnx.save(proto, str(path))
    return path

