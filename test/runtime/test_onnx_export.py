"""ONNX export (foundation-stereo-export) checked against PyTorch with ONNX Runtime on the CPU, the
ONNX Runtime runner on numpy images, and the pipeline's 'onnx' backend in the node."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

# Required test dependencies (requirements.txt): a missing one fails here rather than skipping the export tests.
import onnx
import onnxruntime as ort
import onnxscript  # noqa: F401 - torch.onnx's exporter needs it

from foundation_stereo_ros.analysis.onnx_export import downgrade_to_opset17
from foundation_stereo_ros.model import load_model
from foundation_stereo_ros.pipeline.backends import invalidate, onnx_provider_list
from foundation_stereo_ros.runtime.onnx_runner import OnnxRunner, check_pair, read_export_metadata
from foundation_stereo_ros.tools import export_onnx as export_cli

pytestmark = pytest.mark.slow  # one module-wide ViT-S export (about 30 s) feeds these

HEIGHT, WIDTH, ITERS = 60, 90, 2  # pads to 64x96


@pytest.fixture(scope="module")
def model(vits_checkpoint):
    return load_model(vits_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def export_run(vits_checkpoint, tmp_path_factory):
    """One export through the CLI, which also compares ONNX Runtime (CPU) with PyTorch on a random pair."""
    path = tmp_path_factory.mktemp("onnx") / "fs_vits.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = export_cli.main(["--checkpoint", str(vits_checkpoint), "--height", str(HEIGHT), "--width",
                                str(WIDTH), "--iters", str(ITERS), "--output", str(path), "--tolerance", "2e-3"])
    return path, code, printed.getvalue()


@pytest.fixture(scope="module")
def exported(export_run):
    path, code, _ = export_run
    assert code == 0
    return path


@pytest.fixture(scope="module")
def runner(exported):
    return OnnxRunner(exported, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def aloe(opencv_data):
    def load(name):
        img = cv2.imread(str(opencv_data / name))
        return cv2.cvtColor(cv2.resize(img, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return load("aloeL.jpg"), load("aloeR.jpg")


def test_export_is_a_valid_fixed_size_graph(exported):
    onnx.checker.check_model(str(exported))
    graph = onnx.load(str(exported), load_external_data=False).graph
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert shapes == {"left": [1, 3, 64, 96], "right": [1, 3, 64, 96]}
    assert [o.name for o in graph.output] == ["disparity"]
    meta = read_export_metadata(exported)
    assert meta == {"iters": "2", "vit_size": "vits", "max_disp": "416", "image_height": "60", "image_width": "90",
                    "input_height": "64", "input_width": "96"}


def test_onnx_runtime_matches_pytorch_on_random_input(export_run):
    """The CLI's check (ONNX Runtime CPU vs PyTorch forward, same random pair) passed at 2e-3 px."""
    _, code, printed = export_run
    assert "TensorRT 10 ONNX parser rules (ops, opset, Resize, Einsum): nothing found that it refuses" in printed
    m = re.search(r"max \|diff\| (\S+) px, mean (\S+) px \(disparities up to (\S+) px\)", printed)
    assert m, printed
    max_diff, mean_diff, largest = (float(v) for v in m.groups())
    assert code == 0 and max_diff <= 2e-3 and mean_diff <= max_diff
    assert largest > 1.0  # a non-trivial output was compared


def test_export_cli_fails_when_onnx_and_pytorch_differ(monkeypatch, tmp_path, capsys):
    """The CLI's exit status follows its comparison (export and comparison stubbed: they are tested above)."""
    import foundation_stereo_ros.analysis.onnx_export as onnx_export

    import foundation_stereo_ros.analysis.tensorrt_check as tensorrt_check

    monkeypatch.setattr(onnx_export, "export_onnx", lambda model, path, *a, **k: path)
    monkeypatch.setattr(tensorrt_check, "tensorrt_problems", lambda *a, **k: [])
    monkeypatch.setattr(export_cli, "check_against_pytorch",
                        lambda *a, **k: dict(max_abs_px=0.5, mean_abs_px=0.1, max_disparity_px=80.0))
    args = ["--random-weights", "vits", "--height", "64", "--width", "64", "--output", str(tmp_path / "x.onnx")]
    assert export_cli.main(args) == 1
    assert "differs from PyTorch" in capsys.readouterr().err
    assert export_cli.main(args + ["--tolerance", "0.6"]) == 0


def test_opset17_rewrite_is_valid_and_gives_the_same_numbers(exported, runner, tmp_path):
    """TensorRT 8.6 reads opset <= 17: the rewritten graph must pass the opset-17 checker and compute the same."""
    proto = onnx.load(str(exported))
    assert proto.opset_import[0].version == 18
    ops18 = [n.op_type for n in proto.graph.node]
    assert any(n.op_type == "Split" and any(a.name == "num_outputs" for a in n.attribute) for n in proto.graph.node)
    downgrade_to_opset17(proto)
    path17 = tmp_path / "fs17.onnx"
    onnx.save(proto, str(path17))
    onnx.checker.check_model(str(path17), full_check=True)
    assert [n.op_type for n in proto.graph.node] == ops18
    assert not any(a.name in ("num_outputs", "antialias") for n in proto.graph.node for a in n.attribute)
    # ReduceSum has had an axes input since opset 13; the other reductions take attributes again.
    assert not any(a.name == "noop_with_empty_axes" for n in proto.graph.node if n.op_type != "ReduceSum"
                   for a in n.attribute)
    rng = np.random.default_rng(4)
    feeds = {k: (rng.random((1, 3, 64, 96)) * 255).astype(np.float32) for k in ("left", "right")}
    got17 = ort.InferenceSession(str(path17), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got18 = runner.session.run(None, feeds)[0]
    np.testing.assert_allclose(got17, got18, atol=1e-5, rtol=1e-6)


def test_export_passes_the_tensorrt_parser_rules(exported, tmp_path):
    """The graph uses only what TensorRT's ONNX parser imports (8.6 at opset 17, 10 at 18): op
    types, Resize modes on the dimensions it resizes, Einsum without ellipsis or broadcasting."""
    from foundation_stereo_ros.analysis.tensorrt_check import tensorrt_problems

    proto = onnx.load(str(exported), load_external_data=False)
    assert tensorrt_problems(proto, "10") == []
    assert tensorrt_problems(exported, "8.6") == ["opset 18: TensorRT 8.6 reads opsets up to 17 "
                                                  "(foundation-stereo-export --opset 17)"]
    downgrade_to_opset17(proto)
    assert tensorrt_problems(proto, "8.6") == []
    # The checked graph does contain the ops whose rules are checked.
    ops = {n.op_type for n in proto.graph.node}
    assert {"Resize", "Einsum", "LayerNormalization", "GatherElements"} <= ops
    modes = {a.s.decode() for n in proto.graph.node if n.op_type == "Resize" for a in n.attribute if a.name == "mode"}
    assert {"linear", "cubic"} <= modes


def test_fp16_engines_are_told_to_keep_the_positions_in_fp32(exported):
    """The export lists the layers an fp16 TensorRT engine must keep in fp32 (the lookup
    positions and weights, the disparity accumulated over the iterations, the upsampled output)
    in ``<file>.fp32_layers.txt`` as trtexec options; no feature layer is among them."""
    from foundation_stereo_ros.analysis.tensorrt_check import fp32_position_layers, trtexec_precision_flags

    layers = fp32_position_layers(exported)
    flags = export_cli.fp32_layers_path(exported).read_text().strip()
    assert flags == trtexec_precision_flags(layers) and flags.startswith("--precisionConstraints=obey ")
    proto = onnx.load(str(exported), load_external_data=False)
    nodes = {n.name: n for n in proto.graph.node}
    assert set(layers) <= set(nodes) and len(set(layers)) == len(layers)
    kinds = {nodes[n].op_type for n in layers}
    assert not kinds & {"Conv", "ConvTranspose", "MatMul", "Einsum", "Softmax", "LayerNormalization",
                        "InstanceNormalization"}, kinds
    for op in ("GatherElements", "Floor"):  # every lookup and every sampling position
        assert {n.name for n in proto.graph.node if n.op_type == op} <= set(layers), op
    # disp + delta of every iteration: the Adds fed by the disparity head's last convolution
    head = [n.output[0] for n in proto.graph.node if n.op_type == "Conv" and any("disp_head" in i for i in n.input)]
    accumulate = [n.name for n in proto.graph.node if n.op_type == "Add" and set(n.input) & set(head)]
    assert len(accumulate) == ITERS and set(accumulate) <= set(layers)
    output = next(n for n in proto.graph.node if "disparity" in n.output)
    assert output.name in layers


def test_fp16_positions_would_move_in_steps_an_eighth_of_a_pixel():
    """Why: at quarter resolution a 640-px-wide image has positions up to 160, where fp16 steps
    are 0.125 px (0.5 px at full resolution), and a late GRU update of 0.03 px is lost."""
    x = torch.linspace(128.0, 255.9, 4001)
    assert (x.half().float() - x).abs().max().item() == pytest.approx(0.0625, abs=1e-4)  # half of 0.125
    disp = torch.tensor(150.0)
    assert (disp.half() + torch.tensor(0.03).half()).item() == 150.0
    assert (disp + 0.03).item() != 150.0


def _graph(nodes, inputs, initializers=(), opset=17):
    from onnx import helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s)
                                           for n, s in inputs],
                              [helper.make_tensor_value_info(nodes[-1].output[0], onnx.TensorProto.FLOAT, None)],
                              list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_tensorrt_rules_find_what_the_parser_refuses():
    from onnx import helper

    from foundation_stereo_ros.analysis.tensorrt_check import tensorrt_problems

    f = onnx.TensorProto.FLOAT
    x = [("x", [1, 8, 4, 4])]
    ok_cubic = _graph([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic")], x,
                      [helper.make_tensor("s", f, [4], [1, 1, 2, 2])])
    assert tensorrt_problems(ok_cubic) == []
    channel_cubic = _graph([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic")], x,
                           [helper.make_tensor("s", f, [4], [1, 2, 2, 2])])
    assert "only the last 2 dimensions" in " ".join(tensorrt_problems(channel_cubic))
    sizes_linear = _graph([helper.make_node("Resize", ["x", "", "", "n"], ["y"], mode="linear")], x,
                          [helper.make_tensor("n", onnx.TensorProto.INT64, [4], [2, 16, 8, 8])])
    assert "leading dimension" in " ".join(tensorrt_problems(sizes_linear))
    odd_transform = _graph([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear",
                                             coordinate_transformation_mode="tf_crop_and_resize")], x,
                           [helper.make_tensor("s", f, [4], [1, 1, 2, 2])])
    assert "coordinate_transformation_mode" in " ".join(tensorrt_problems(odd_transform))
    ellipsis = _graph([helper.make_node("Einsum", ["x", "x"], ["y"], equation="...ij,...jk->...ik")], x)
    assert "ellipsis" in " ".join(tensorrt_problems(ellipsis))
    diagonal = _graph([helper.make_node("Einsum", ["x"], ["y"], equation="bcii->bci")], x)
    assert "diagonal" in " ".join(tensorrt_problems(diagonal))
    broadcast = _graph([helper.make_node("Einsum", ["x", "z"], ["y"], equation="bchw,bchv->bhwv")],
                       x + [("z", [1, 1, 4, 4])])
    assert "broadcasting on ['c']" in " ".join(tensorrt_problems(broadcast))
    cumsum_axis = _graph([helper.make_node("CumSum", ["x", "a"], ["y"])], x + [("a", [])])
    assert "axis must be a constant" in " ".join(tensorrt_problems(cumsum_axis))
    fixed_axis = _graph([helper.make_node("CumSum", ["x", "a"], ["y"])], x,
                        [helper.make_tensor("a", onnx.TensorProto.INT64, [], [3])])
    assert tensorrt_problems(fixed_axis) == []
    unknown = _graph([helper.make_node("Unique", ["x"], ["y"])], x)
    assert "Unique" in " ".join(tensorrt_problems(unknown))
    custom = _graph([helper.make_node("Fancy", ["x"], ["y"], domain="com.example")], x)
    assert "plugin" in " ".join(tensorrt_problems(custom))
    assert "opset 18" in " ".join(tensorrt_problems(_graph([helper.make_node("Relu", ["x"], ["y"])], x, opset=18)))
    with pytest.raises(ValueError, match="tensorrt must be"):
        tensorrt_problems(ok_cubic, "8.5")


def test_opset17_rewrite_refuses_what_it_cannot_express():
    from onnx import helper

    node = helper.make_node("Resize", ["x", "", "s"], ["y"], antialias=1, mode="linear")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor("s", onnx.TensorProto.FLOAT, [4], [1, 1, 2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ValueError, match="antialias"):
        downgrade_to_opset17(model)


def test_runner_matches_pytorch_infer_on_real_images(runner, model, aloe):
    left, right = aloe
    assert runner.providers == ["CPUExecutionProvider"]
    assert runner.input_size == (64, 96) and runner.iters == ITERS and runner.max_disp == 416.0
    got = runner(left, right)
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float()  # noqa: E731
    expected = model.infer(to_t(left), to_t(right), iters=ITERS)[0, 0].numpy()
    assert got.shape == (HEIGHT, WIDTH) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=1e-4)
    masked = invalidate(got.copy())
    u = np.arange(WIDTH)[None, :]
    assert np.array_equal(np.isnan(masked), (expected < 0) | (u - expected < 0))


def test_runner_accepts_any_size_that_pads_to_the_graph(runner, model):
    rng = np.random.default_rng(2)
    left = rng.integers(0, 256, (64, 70, 3), dtype=np.uint8)  # also pads to 64x96
    right = np.roll(left, -2, axis=1)
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float()  # noqa: E731
    expected = model.infer(to_t(left), to_t(right), iters=ITERS)[0, 0].numpy()
    np.testing.assert_allclose(runner(left, right), expected, atol=2e-3, rtol=1e-4)


def test_runner_rejects_images_of_another_size(runner):
    img = np.zeros((120, 160, 3), np.uint8)
    with pytest.raises(ValueError, match=r"exported for 64x96.*--height 120 --width 160"):
        runner(img, img)
    with pytest.raises(ValueError, match="uint8"):
        runner(img.astype(np.float32), img.astype(np.float32))


@pytest.mark.parametrize("left,right,msg", [
    (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), "uint8"),
    (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), "differ in size"),
    ([[0]], np.zeros((8, 8, 3), np.uint8), "numpy array"),
])
def test_check_pair_rejects_bad_images(left, right, msg):
    with pytest.raises(ValueError, match=msg):
        check_pair(left, right)


def test_runner_takes_the_node_providers_and_refuses_bad_files(exported, tmp_path):
    chosen = onnx_provider_list("auto", "cuda", ort.get_available_providers())
    runner = OnnxRunner(exported, chosen)
    assert runner.providers[0] == chosen[0]
    with pytest.raises(ValueError, match="not found"):
        OnnxRunner(tmp_path / "missing.onnx", ["CPUExecutionProvider"])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load"):
        OnnxRunner(junk, providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="not available"):
        OnnxRunner(exported, providers=["NoSuchExecutionProvider"])


_GPU_PROVIDERS = [
    pytest.param("CUDAExecutionProvider", dict(cuda_tf32=False), 0.01, id="cuda"),  # true fp32: summation order only
    pytest.param("TensorrtExecutionProvider", dict(trt_fp16=False), 0.05, id="tensorrt-fp32"),
    pytest.param("TensorrtExecutionProvider", dict(trt_fp16=True), 0.5, id="tensorrt-fp16"),
]


@pytest.mark.parametrize("provider, options, atol", _GPU_PROVIDERS)
def test_gpu_provider_matches_the_cpu_provider(exported, runner, aloe, provider, options, atol, tmp_path):
    """The same export on ONNX Runtime's GPU providers (onnxruntime-gpu) against its CPU provider.
    Bounds: CUDA with TF32 off (ONNX Runtime's default is on) differs only in summation order;
    TensorRT fp32 keeps TF32 (ONNX Runtime has no option to turn it off); TensorRT fp16 is half
    precision where the engine chooses it."""
    if provider not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime ({ort.__version__}) has no {provider} (onnxruntime-gpu brings it)")
    if provider == "TensorrtExecutionProvider":
        options = dict(options, trt_cache_dir=str(tmp_path / "trt"))
    gpu = OnnxRunner(exported, providers=[provider, "CPUExecutionProvider"], **options)
    assert gpu.providers[0] == provider  # loaded on the GPU, not silently on the CPU
    left, right = aloe
    expected = runner(left, right)
    got = gpu(left, right)
    diff = np.abs(got - expected)
    print(f"{provider} {options}: max {diff.max():.4g} px, mean {diff.mean():.4g} px")
    assert diff.max() < atol and diff.mean() < atol / 10


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    out = str(tmp_path / "x.onnx")
    with pytest.raises(SystemExit):
        export_cli.main(["--random-weights", "vits", "--height", "0", "--width", "64", "--output", out])
    assert export_cli.main(["--random-weights", "vits", "--height", "64", "--width", "64", "--opset", "13",
                            "--output", out]) == 2
    assert "opset" in capsys.readouterr().err
    assert export_cli.main(["--checkpoint", str(tmp_path / "nope"), "--height", "64", "--width", "64",
                            "--output", out]) == 2
    assert "not found" in capsys.readouterr().err
    assert not Path(out).exists()


def test_export_on_a_pytorch_without_the_dynamo_exporter_says_what_to_do(monkeypatch, tmp_path, capsys):
    """PyTorch < 2.5 (older JetPack wheels) has no torch.onnx.export(dynamo=True)."""
    def old_export(model, args, f=None, export_params=True, verbose=False, opset_version=None):
        raise AssertionError("must not be called")

    monkeypatch.setattr(torch.onnx, "export", old_export)
    out = tmp_path / "x.onnx"
    assert export_cli.main(["--random-weights", "vits", "--height", "64", "--width", "64", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "PyTorch 2.5 or newer" in err and torch.__version__ in err and "copy the .onnx" in err
    assert not out.exists()


def test_benchmark_onnxruntime_mode_reuses_the_export(exported, vits_checkpoint, tmp_path):
    """foundation-stereo-benchmark's onnxruntime mode, with the export above placed where it looks."""
    import json
    import shutil

    from foundation_stereo_ros.tools import benchmark

    onnx_dir = tmp_path / "exports"
    onnx_dir.mkdir()
    shutil.copy(exported, onnx_dir / "vits_64x96_it2.onnx")  # the name the benchmark gives this config
    out = tmp_path / "bench.json"
    code = benchmark.main(["--device", "cpu", "--checkpoint", str(vits_checkpoint), "--sizes", "60x90", "--iters",
                           str(ITERS), "--modes", "eager-fp32,onnxruntime", "--repeats", "1", "--no-stages",
                           "--no-node", "--onnx-dir", str(onnx_dir), "--json", str(out)])
    assert code == 0
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    ort_row = rows["onnxruntime"]
    assert ort_row["status"] == "ok" and ort_row["providers"][-1] == "CPUExecutionProvider"
    assert ort_row["latency_ms"]["median"] > 0
    assert ort_row["vs_eager_fp32"]["max_abs_px"] < 2e-3
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["vits_64x96_it2.onnx"]  # nothing re-exported


# ---------------------------------------------------------------- the node's 'onnx' backend

def _invalid(d: np.ndarray) -> np.ndarray:
    """The pipeline's invalid pixels: a negative disparity, or a match left of the right image."""
    u = np.arange(d.shape[1], dtype=np.float32)[None, :]
    return (d < 0) | (d > u)


def _check_backend_output(backend, left, right, expected: np.ndarray, atol: float) -> None:
    """Random weights give mostly negative (invalid) disparities, so the values are compared
    before invalidation and the NaN map separately."""
    raw = backend.network_disparity(left, right)
    np.testing.assert_allclose(raw, expected, atol=atol, rtol=1e-4)
    assert np.array_equal(np.isnan(backend.compute(left, right)), _invalid(raw))


def _onnx_config(exported, **kw):
    from foundation_stereo_ros.pipeline import ProcessorConfig

    values = dict(backend="onnx", onnx_model=str(exported), device="cpu", rectify="never")
    values.update(kw)
    return ProcessorConfig(**values)


def test_pipeline_onnx_backend_matches_pytorch_at_the_export_size(exported, model, aloe):
    from foundation_stereo_ros.pipeline import OnnxBackend

    backend = OnnxBackend(_onnx_config(exported))
    left, right = aloe
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float()  # noqa: E731
    expected = model.infer(to_t(left), to_t(right), iters=ITERS)[0, 0].numpy()
    _check_backend_output(backend, left, right, expected, atol=2e-3)
    assert backend.last_scale == 1.0 and backend.search_range(WIDTH) == (0.0, 416.0)
    assert backend.providers == ("CPUExecutionProvider",)
    notes = " | ".join(backend.notes)
    assert "CPUExecutionProvider" in notes
    assert "runs 2 GRU iterations (fixed at export); the iters parameter (32) does not apply" in notes


def test_pipeline_onnx_backend_resizes_other_camera_sizes_to_the_export_size(exported, model, aloe):
    from foundation_stereo_ros.pipeline import OnnxBackend

    backend = OnnxBackend(_onnx_config(exported, iters=ITERS))
    assert backend.notes == ("ONNX Runtime providers: CPUExecutionProvider",)
    small_l, small_r = aloe
    big_l = cv2.resize(small_l, (2 * WIDTH, 2 * HEIGHT), interpolation=cv2.INTER_CUBIC)
    big_r = cv2.resize(small_r, (2 * WIDTH, 2 * HEIGHT), interpolation=cv2.INTER_CUBIC)
    # By definition: matched at the export size (area filter), resized back, disparities doubled.
    shrink = lambda a: cv2.resize(a, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)  # noqa: E731
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float()  # noqa: E731
    net = model.infer(to_t(shrink(big_l)), to_t(shrink(big_r)), iters=ITERS)[0, 0].numpy()
    expected = cv2.resize(net, (2 * WIDTH, 2 * HEIGHT), interpolation=cv2.INTER_LINEAR) * 2.0
    assert expected.shape == (2 * HEIGHT, 2 * WIDTH)
    _check_backend_output(backend, big_l, big_r, expected, atol=5e-3)
    assert backend.last_scale == 0.5 and backend.search_range(2 * WIDTH) == (0.0, 832.0)


def test_pipeline_onnx_backend_reports_what_it_cannot_do(exported, tmp_path):
    from foundation_stereo_ros.pipeline import BackendError, OnnxBackend, ProcessorConfig

    with pytest.raises(BackendError, match="no such file"):
        OnnxBackend(_onnx_config(tmp_path / "missing.onnx"))
    for kw, message in ((dict(hierarchical=True), "no hierarchical inference"),
                        (dict(scale=0.5), "fixed input size"),
                        (dict(onnx_model=""), "needs onnx_model"),
                        (dict(device="cuda", precision="bf16"), "bf16 is not offered"),
                        (dict(onnx_provider="tensorrt"), "needs a CUDA device"),
                        (dict(device="cuda", precision="fp16", onnx_provider="cuda"), "fp16 for backend 'onnx' is "
                                                                                       "TensorRT's")):
        values = dict(backend="onnx", onnx_model=str(exported), device="cpu")
        values.update(kw)
        with pytest.raises(ValueError, match=message):
            ProcessorConfig(**values)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        # Asked for the GPU, but this onnxruntime has none: it runs, and says so.
        backend = OnnxBackend(_onnx_config(exported, device="cuda"))
        assert backend.providers == ("CPUExecutionProvider",)
        assert any("has no GPU provider" in n and "slowly" in n for n in backend.notes)
        with pytest.raises(BackendError, match="onnxruntime-gpu"):
            OnnxBackend(_onnx_config(exported, device="cuda", onnx_provider="cuda"))


def test_onnx_provider_order_follows_the_parameters():
    from foundation_stereo_ros.pipeline.backends import BackendError

    trt, cuda, cpu = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    everything = [cpu, cuda, trt, "AzureExecutionProvider"]
    assert onnx_provider_list("auto", "cuda", everything) == [trt, cuda, cpu]
    assert onnx_provider_list("auto", "cuda:1", [cpu, cuda]) == [cuda, cpu]
    assert onnx_provider_list("auto", "cpu", everything) == [cpu]
    assert onnx_provider_list("tensorrt", "cuda", everything) == [trt, cuda, cpu]
    assert onnx_provider_list("cuda", "cuda", everything) == [cuda, cpu]
    assert onnx_provider_list("cpu", "cuda", everything) == [cpu]
    with pytest.raises(BackendError, match="has no TensorrtExecutionProvider"):
        onnx_provider_list("tensorrt", "cuda", [cpu, cuda])
    # Without a list: what the installed onnxruntime has.
    assert onnx_provider_list("auto", "cuda") == onnx_provider_list("auto", "cuda", ort.get_available_providers())


def test_node_with_the_onnx_backend_publishes_what_the_pipeline_computes(exported, aloe):
    import time

    from foundation_stereo_ros.pipeline import OnnxBackend
    from foundation_stereo_ros.ros.conversions import disparity_from_msg

    from _ros_helpers import NodeHarness, diagnostic_values, rectified_infos, wait_for

    params = dict(backend="onnx", onnx_model=str(exported), device="cpu", iters=ITERS, rectify="never",
                  warmup_width=WIDTH, warmup_height=HEIGHT)
    h = NodeHarness(params, namespace="/onnx_node", subscribe=("disparity",))
    try:
        left, right = aloe
        f, baseline = 60.0, 0.1
        infos = rectified_infos(WIDTH, HEIGHT, f, baseline, WIDTH / 2, WIDTH / 2, HEIGHT / 2)
        stamp = time.time_ns()
        h.publish_arrays(left, right, "rgb8", infos, stamp)
        msg = h.wait_outputs(stamp, ["disparity"], timeout_s=60.0)["disparity"]
        expected = OnnxBackend(_onnx_config(exported)).compute(left, right)
        np.testing.assert_allclose(disparity_from_msg(msg), expected, atol=1e-5, equal_nan=True)
        assert msg.max_disparity == pytest.approx(416.0) and msg.f == pytest.approx(f)
        hw = h.node.get_fully_qualified_name()
        assert wait_for(lambda: any(v.get("onnx_providers") == "CPUExecutionProvider"
                                    for v in diagnostic_values(h.received, hw)), 10.0)
    finally:
        h.close()


def test_bag_evaluation_runs_the_onnx_backend_like_the_node(exported, opencv_data, tmp_path):
    """foundation-stereo-eval with --backend onnx:onnx_model=...: the disparities it writes are the
    ONNX backend's for each frame of the bag (here 80x69 images, resized to the export's 90x60)."""
    import json

    from foundation_stereo_ros.pipeline import OnnxBackend, decode_stereo_pair
    from foundation_stereo_ros.tools import evaluate

    from _eval_helpers import disparity_values, make_aloe_bag, read_messages

    bag = make_aloe_bag(tmp_path / "aloe", opencv_data, 0.125, gt=True)
    out, out_bag = tmp_path / "report", tmp_path / "outputs"
    spec = f"onnx:onnx_model={exported}"
    rc = evaluate.main([str(bag), "--backend", spec, "--device", "cpu", "--warmup", "0", "-o", str(out),
                        "--output-bag", str(out_bag), "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    (label,) = summary["backends"]
    assert summary["backends"][label]["latency"]["n"] == 1
    messages = read_messages(out_bag)
    written = disparity_values(messages["/stereo/disparity"][0][1])  # one backend: the input's namespace
    inputs = read_messages(bag)
    left_msg = inputs["/stereo/left/image_rect"][0][1]
    right_msg = inputs["/stereo/right/image_rect"][0][1]
    pair = decode_stereo_pair(left_msg, right_msg)
    expected = OnnxBackend(_onnx_config(exported)).compute(pair.left, pair.right)
    assert written.shape == expected.shape == pair.left.shape[:2]
    np.testing.assert_allclose(np.where(written > 0, written, np.nan), np.where(expected > 0, expected, np.nan),
                               atol=1e-4, equal_nan=True)
