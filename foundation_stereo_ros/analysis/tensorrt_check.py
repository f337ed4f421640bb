"""Will TensorRT's ONNX parser take this graph? A static check of an exported model.

No TensorRT is needed: the rules are those of the ONNX parser that ships with TensorRT
(onnx-tensorrt, branches ``8.6-GA`` and ``10.x``), read from its operator table and its importer
code. They cover what this network's export contains: the op types, the opset, the Resize modes
and the dimensions they scale, and the Einsum equations. A graph that passes can still fail to
build for other reasons (memory, a tactic), but a graph that fails would certainly not parse.

TensorRT 8.5 (JetPack 5) has no LayerNormalization importer, which every export of this
network uses (the ViT and the disparity transformer), so it is not a target here.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Union

#: Highest opset each TensorRT release's parser reads.
MAX_OPSET = {"8.6": 17, "10": 20}

#: Op types this network's export uses, each imported by TensorRT 8.6 and 10 (onnx-tensorrt
#: docs/operators.md, all marked supported). Anything else in a graph is reported.
SUPPORTED_OPS = frozenset({
    "Abs", "Add", "And", "AveragePool", "Cast", "Ceil", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "Cos", "CumSum", "Div", "Einsum", "Equal", "Erf", "Exp", "Expand", "Floor", "Gather",
    "GatherElements", "Greater", "GreaterOrEqual", "Identity", "InstanceNormalization", "LayerNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "MatMul", "Max", "Min", "Mul", "Neg", "Not", "Or", "Pad", "Pow",
    "Range", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu", "Reshape", "Resize", "Round",
    "Shape", "Sigmoid", "Sign", "Sin", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile",
    "Transpose", "Unsqueeze", "Where",
})

_RESIZE_MODES = {"nearest", "linear", "cubic"}
_RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
# The importer accepts linear resizing on at most the last 3 dimensions and cubic on the last 2.
_RESIZE_MAX_DIMS = {"linear": 3, "cubic": 2}


def tensorrt_problems(model: Union[Any, str, os.PathLike], tensorrt: str = "8.6") -> List[str]:
    """What in ``model`` (an ``onnx.ModelProto`` or a path) TensorRT ``tensorrt`` ('8.6' or '10')
    cannot parse; an empty list when nothing is found."""
    import onnx  # optional (pip install onnx): imported only when a graph is checked
    from onnx import numpy_helper, shape_inference

    if tensorrt not in MAX_OPSET:
        raise ValueError(f"tensorrt must be one of {sorted(MAX_OPSET)}, got {tensorrt!r}")
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    problems: List[str] = []
    opset = max((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), default=0)
    if opset > MAX_OPSET[tensorrt]:
        problems.append(f"opset {opset}: TensorRT {tensorrt} reads opsets up to {MAX_OPSET[tensorrt]} "
                        f"(foundation-stereo-export --opset {MAX_OPSET[tensorrt]})")
    if model.functions:
        problems.append(f"{len(model.functions)} local function(s): TensorRT does not import ONNX functions")
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - e.g. an op of an unknown domain; check with the shapes given
        inferred = model
    shapes = _static_shapes(inferred)
    consts: Dict[str, Any] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for node in model.graph.node:
        where = f"{node.op_type} {node.name or node.output[0]}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r} needs a plugin")
        elif node.op_type not in SUPPORTED_OPS:
            problems.append(f"{where}: op type not in the list checked against TensorRT's parser")
        elif node.op_type == "Resize":
            problems += _resize_problems(node, where, shapes, consts)
        elif node.op_type == "Einsum":
            problems += _einsum_problems(node, where, shapes)
        elif node.op_type == "CumSum" and (len(node.input) < 2 or node.input[1] not in consts):
            problems.append(f"{where}: the axis must be a constant")
    return problems


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper  # optional, as in tensorrt_problems

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _static_shapes(model: Any) -> Dict[str, List[int]]:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _resize_problems(node: Any, where: str, shapes: Dict[str, List[int]], consts: Dict[str, Any]) -> List[str]:
    mode = _attr(node, "mode", "nearest")
    transform = _attr(node, "coordinate_transformation_mode", "half_pixel")
    problems = []
    if mode not in _RESIZE_MODES:
        problems.append(f"{where}: mode {mode!r}")
    if transform not in _RESIZE_TRANSFORMS:
        problems.append(f"{where}: coordinate_transformation_mode {transform!r}")
    if _attr(node, "antialias", 0):
        problems.append(f"{where}: antialias")
    max_dims = _RESIZE_MAX_DIMS.get(mode)
    if max_dims is None:
        return problems
    in_shape = shapes.get(node.input[0])
    scales = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if scales is not None and scales.size:
        factors = [float(s) for s in scales.reshape(-1)]
    elif sizes is not None and in_shape is not None and len(in_shape) == sizes.size:
        factors = [int(o) / i if i else 1.0 for o, i in zip(sizes.reshape(-1), in_shape)]
    else:
        return problems + [f"{where}: scales or sizes are not constants of a known input shape; cannot check "
                           f"which dimensions it resizes"]
    leading = factors[:-max_dims]
    if any(f != 1.0 for f in leading):
        problems.append(f"{where}: {mode} resize of a leading dimension (factors {factors}); TensorRT resizes "
                        f"only the last {max_dims} dimensions in this mode")
    return problems


def _einsum_problems(node: Any, where: str, shapes: Dict[str, List[int]]) -> List[str]:
    equation = str(_attr(node, "equation", "")).replace(" ", "")
    lhs = equation.split("->")[0]
    operands = lhs.split(",")
    problems = []
    if "..." in equation:
        problems.append(f"{where}: ellipsis in {equation!r}")
    for term in operands:
        if len(set(term)) != len(term):
            problems.append(f"{where}: diagonal (repeated index) in {equation!r}")
    # Broadcasting between inputs: a label of size 1 in one operand and larger in another.
    sizes: Dict[str, set] = {}
    for term, name in zip(operands, node.input):
        shape = shapes.get(name)
        if shape is None or len(shape) != len(term):
            continue
        for label, n in zip(term, shape):
            sizes.setdefault(label, set()).add(n)
    broadcast = sorted(label for label, ns in sizes.items() if len(ns) > 1)
    if broadcast:
        problems.append(f"{where}: broadcasting on {broadcast} in {equation!r}")
    return problems


# ------------------------------------------------------------------ layers an fp16 engine must keep in fp32
#: Ops the fp32 region extends through: coordinate arithmetic, shape ops and the lookup itself.
#: Everything else (convolutions, matrix products, softmax, normalisation, activations) computes
#: features, where fp16 is what makes the engine fast, and ends the region.
_POSITION_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Floor", "Ceil", "Round", "Clip", "Min", "Max", "Cast", "Where",
    "Reshape", "Unsqueeze", "Squeeze", "Expand", "Transpose", "Concat", "Slice", "Split", "Gather", "Pad", "Tile",
    "Identity", "Flatten", "ReduceSum", "GatherElements",
})
_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def fp32_position_layers(model: Union[Any, str, os.PathLike]) -> List[str]:
    """Names of the nodes an fp16 TensorRT engine must keep in fp32, as the PyTorch path does.

    In fp16 the sampling positions of the geometry lookup have steps of 0.125 px from 128 px on
    (quarter resolution, so 0.5 px at full resolution) and ``disp + delta`` loses the small
    updates of the last iterations; the upsampled output (x4) has 0.25-0.5 px steps from 256 px.
    The region: backwards from each GatherElements' indices, from the interpolation weights it
    is multiplied by, and from the graph's output, through coordinate arithmetic and shape ops
    (:data:`_POSITION_OPS`, and nearest-neighbour Resize, which copies values: the convex
    upsampling's), so it takes in the disparity accumulated over the iterations and
    the lookup positions, and stops at the layers that compute features. Only nodes with a
    floating-point output are named (integer layers have no precision to set). TensorRT's ONNX
    parser names each layer after its node, so the names go to ``trtexec --layerPrecisions``
    (:func:`trtexec_precision_flags`).
    """
    import onnx  # optional, as in tensorrt_problems
    from onnx import shape_inference

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    try:
        typed = shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - fall back to the types the file records
        typed = model
    graph = model.graph
    elem_type = {vi.name: vi.type.tensor_type.elem_type
                 for vi in list(typed.graph.value_info) + list(graph.input) + list(graph.output)}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: Dict[str, List[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    region: Dict[int, Any] = {}
    stack: List[str] = [o.name for o in graph.output]
    for gather in (n for n in graph.node if n.op_type == "GatherElements"):
        region[id(gather)] = gather
        stack.append(gather.input[1])  # the indices: positions
        for mul in (m for m in consumers.get(gather.output[0], []) if m.op_type == "Mul"):
            region[id(mul)] = mul  # value x interpolation weight
            stack += [i for i in mul.input if i != gather.output[0]]
            for add in (a for a in consumers.get(mul.output[0], []) if a.op_type == "Add"):
                region[id(add)] = add  # v0 + v1
    seen = set()
    while stack:
        name = stack.pop()
        node = producer.get(name)
        nearest = node is not None and node.op_type == "Resize" and _attr(node, "mode", "nearest") == "nearest"
        if name in seen or node is None or (node.op_type not in _POSITION_OPS and not nearest):
            continue
        seen.add(name)
        region[id(node)] = node
        stack += [node.input[0]] if nearest else [i for i in node.input if i]  # not its sizes
    order = {id(n): k for k, n in enumerate(graph.node)}
    names = [n.name for n in sorted(region.values(), key=lambda n: order[id(n)])
             if n.name and elem_type.get(n.output[0], 1) in _FLOAT_TYPES]
    return names


def trtexec_precision_flags(layers: List[str]) -> str:
    """``trtexec`` options that keep ``layers`` in fp32 in an ``--fp16`` build."""
    if not layers:
        return ""
    return "--precisionConstraints=obey --layerPrecisions=" + ",".join(f"{name}:fp32" for name in layers)
