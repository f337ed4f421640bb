"""The left-right consistency check (parameter ``lr_check``): the pure check on synthetic
disparities with a known occluded band, its interpolation, numpy against torch; the network
backends running the mirrored, swapped pair in the same call (PyTorch: one batch of two; ONNX:
two runs of its batch-1 graph), host against device, and changing it at run time."""
from __future__ import annotations

import sys
import types
from typing import List

import cv2
import numpy as np
import pytest
import torch

from foundation_stereo_ros.model import load_model
from foundation_stereo_ros.pipeline import FoundationStereoBackend, ProcessorConfig
from foundation_stereo_ros.pipeline.backends import SGBMBackend, make_backend
from foundation_stereo_ros.pipeline.consistency import (left_right_check, left_right_check_torch,
                                                        left_right_inconsistent, left_right_inconsistent_torch)

H, W, ITERS = 50, 70, 2
#: The deterministic test weights answer 75..210 px, more than these images are wide; the
#: backend tests scale the network's answer by this, into the image.
SHRINK = 0.05


# ---------------------------------------------------------------------------- the pure check
def occlusion_scene(h: int = 40, w: int = 120, noise: float = 0.25, seed: int = 0):
    """Left and right disparity of a background at 10 px and a box at 20 px over columns 60..79
    of the left image (right image: 40..59), with uniform noise; returns (d_left, d_right,
    band): the left pixels 50..59 see background that the box hides from the right camera."""
    rng = np.random.default_rng(seed)
    d_left = np.full((h, w), 10.0, np.float32)
    d_left[:, 60:80] = 20.0
    d_right = np.full((h, w), 10.0, np.float32)
    d_right[:, 40:60] = 20.0
    d_left += rng.uniform(-noise, noise, d_left.shape).astype(np.float32)
    d_right += rng.uniform(-noise, noise, d_right.shape).astype(np.float32)
    band = np.zeros((h, w), bool)
    band[:, 50:60] = True  # x - 10 in 40..49: the box in the right image
    return d_left, d_right, band


def test_the_check_masks_the_occluded_band_and_keeps_the_rest():
    d_left, d_right, band = occlusion_scene()
    out = left_right_check(d_left.copy(), d_right, tolerance=1.0)
    masked = np.isnan(out)
    border = np.zeros_like(band)
    border[:, :11] = True  # x - d_L < 0 for some noisy d_L ~ 10: the match leaves the right image
    assert masked[band].mean() == 1.0
    rest = ~band & ~border
    assert masked[rest].mean() < 0.01  # the noise (0.5 px at most) is within the tolerance
    assert masked[:, :10].all()  # x - d_L < 0 everywhere there
    np.testing.assert_array_equal(out[~masked], d_left[~masked])  # kept values are untouched
    # A tolerance below the noise masks much more, and a bigger one than the step keeps the band.
    assert np.isnan(left_right_check(d_left.copy(), d_right, 0.1))[rest].mean() > 0.3
    assert not np.isnan(left_right_check(d_left.copy(), d_right, 11.0))[band].any()


def test_the_right_disparity_is_interpolated_linearly_at_the_match():
    """d_R(c) = c: d_L(x) = x / 2 is consistent everywhere (its match x/2 is fractional for odd
    x); moved by e it is off by 2e. Nearest sampling would get odd x wrong by 0.5 px."""
    w = 16
    x = np.arange(w, dtype=np.float32)[None].repeat(3, 0)
    d_right = x.copy()
    for e, tol, kept in ((0.0, 1e-3, True), (0.2, 0.5, True), (0.3, 0.5, False), (-0.3, 0.5, False)):
        d_left = x / 2 + np.float32(e)
        if e < 0:
            d_left[:, 0] = 0.0  # keep x - d_L inside the image at x = 0
        bad = left_right_inconsistent(d_left, d_right, tol)
        assert (not bad[:, 1:].any()) if kept else bad[:, 1:].all(), (e, tol)


def test_nan_stays_nan_and_an_unknown_right_disparity_fails():
    d_left = np.array([[np.nan, 1.0, 1.0, 1.0]], np.float32)
    d_right = np.array([[1.0, np.nan, 1.0, 1.0]], np.float32)  # column 1 unknown
    out = left_right_check(d_left.copy(), d_right, 0.05)
    # x = 1 matches column 0 (known, agrees); x = 2 matches column 1 (unknown); x = 3: column 2.
    np.testing.assert_array_equal(np.isnan(out), [[True, False, True, False]])
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        left_right_check(d_left, d_right, 0.0)
    with pytest.raises(ValueError, match="one shape"):
        left_right_check(d_left, d_right[:, :3], 1.0)


def test_numpy_and_torch_give_the_same_mask():
    rng = np.random.default_rng(3)
    d_left = rng.uniform(-2, 30, (2, 30, 50)).astype(np.float32)
    d_left[rng.random(d_left.shape) < 0.1] = np.nan
    d_right = (d_left + rng.normal(0, 1.0, d_left.shape)).astype(np.float32)
    d_right = np.nan_to_num(d_right, nan=5.0)
    for tol in (0.3, 1.0, 4.0):
        host = left_right_inconsistent(d_left, d_right, tol)
        device = left_right_inconsistent_torch(torch.from_numpy(d_left), torch.from_numpy(d_right), tol).numpy()
        assert np.array_equal(host, device) and 0.05 < host.mean() < 0.95
        out = left_right_check_torch(torch.from_numpy(d_left), torch.from_numpy(d_right), tol).numpy()
        assert np.array_equal(out, left_right_check(d_left.copy(), d_right, tol), equal_nan=True)


# ---------------------------------------------------------------------------- the network backends
@pytest.fixture(scope="module")
def model(vits_checkpoint):
    return load_model(vits_checkpoint, device="cpu")


def _config(**kw) -> ProcessorConfig:
    values = dict(backend="foundation_stereo", checkpoint="unused", device="cpu", iters=ITERS)
    values.update(kw)
    return ProcessorConfig(**values)


def _instrument(monkeypatch, model) -> List[tuple]:
    """FoundationStereo.infer times :data:`SHRINK`, recording each call's (left, right) inputs."""
    calls = []
    real = type(model).infer

    def infer(left, right, **kw):
        calls.append((left.clone(), right.clone()))
        return real(model, left, right, **kw) * SHRINK

    monkeypatch.setattr(model, "infer", infer)
    return calls


def _pair(seed: int = 0, shift: int = 3):
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.integers(0, 256, (H, W + 16, 3)).astype(np.float32), (0, 0), 1.0)
    tex = np.clip((tex - tex.mean()) * 2.5 + 128, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(tex[:, shift:shift + W]), np.ascontiguousarray(tex[:, :W])


def _raw(model, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The (instrumented) network's disparity of one pair, nothing invalidated."""
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()  # noqa: E731
    with torch.no_grad():
        return model.infer(to_t(left), to_t(right), iters=ITERS)[0, 0].numpy()


def test_the_backend_runs_both_views_in_one_batch_of_two_and_masks(model, monkeypatch):
    calls = _instrument(monkeypatch, model)
    left, right = _pair()
    plain = FoundationStereoBackend(_config(), model=model).compute(left, right)
    checked_backend = FoundationStereoBackend(_config(lr_check=0.05), model=model)
    calls.clear()
    checked = checked_backend.compute(left, right)
    assert len(calls) == 1
    net_left, net_right = calls[0]
    assert tuple(net_left.shape) == (2, 3, H, W)
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1).float()  # noqa: E731
    assert torch.equal(net_left[0], to_t(left)) and torch.equal(net_right[0], to_t(right))
    assert torch.equal(net_left[1], to_t(right).flip(-1)) and torch.equal(net_right[1], to_t(left).flip(-1))

    # The mask: the check of the plain disparity against the mirrored pair's flipped back.
    d_right = _raw(model, right[:, ::-1], left[:, ::-1])[:, ::-1]
    expected = left_right_inconsistent(plain, d_right, 0.05)
    got = np.isnan(checked) & ~np.isnan(plain)
    assert (got == expected).mean() > 0.999 and 0.02 < got.mean() < 0.98
    kept = ~np.isnan(checked)
    assert not (kept & np.isnan(plain)).any()  # the check only removes
    assert np.abs(checked[kept] - plain[kept]).max() <= 1e-4  # batch of two vs one


@pytest.mark.parametrize("scale,tolerance", [(1.0, 0.05), (0.7, 0.2)])
def test_host_and_device_paths_mask_alike(model, monkeypatch, scale, tolerance):
    _instrument(monkeypatch, model)
    backend = FoundationStereoBackend(_config(lr_check=tolerance, scale=scale), model=model)
    left, right = _pair(seed=1)
    host = backend.compute(left, right)
    images = torch.from_numpy(np.stack([left, right])).permute(0, 3, 1, 2).float()
    device = backend.compute_on_device(images).numpy()
    assert 0.02 < np.isnan(host).mean() < 0.98
    if scale == 1.0:
        assert np.array_equal(host, device, equal_nan=True)
    else:  # OpenCV's and torch's area filters differ (by up to 0.05 px here, without the check too)
        assert (np.isnan(host) == np.isnan(device)).mean() > 0.97


@pytest.mark.slow
def test_a_batch_with_the_check_runs_two_views_per_pair_in_one_call(model, monkeypatch):
    calls = _instrument(monkeypatch, model)
    backend = FoundationStereoBackend(_config(lr_check=0.05), model=model)
    pairs = [_pair(seed=i, shift=2 + i) + (False,) for i in range(2)]
    singles = [backend.compute(l, r) for l, r, _ in pairs]
    calls.clear()
    batched = backend.compute_batch(pairs)
    assert [tuple(c[0].shape) for c in calls] == [(4, 3, H, W)]
    images = torch.stack([torch.from_numpy(np.stack([l, r])).permute(0, 3, 1, 2).float() for l, r, _ in pairs])
    on_device = backend.compute_on_device_batch(images).numpy()
    for b, s, d in zip(batched, singles, on_device):
        assert (np.isnan(b) == np.isnan(s)).mean() > 0.999
        both = ~np.isnan(b) & ~np.isnan(s)
        assert both.mean() > 0.02 and np.abs(b[both] - s[both]).max() <= 1e-4
        assert np.array_equal(b, d, equal_nan=True)


def test_out_of_memory_retries_both_views_at_half_the_scale(model, monkeypatch):
    _instrument(monkeypatch, model)
    shrunk = model.infer
    shapes = []

    def infer(left, right, **kw):
        shapes.append(tuple(left.shape))
        if left.shape[-1] == W:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return shrunk(left, right, **kw)

    monkeypatch.setattr(model, "infer", infer)
    backend = FoundationStereoBackend(_config(lr_check=0.05), model=model)
    left, right = _pair()
    got = backend.compute(left, right)
    assert shapes == [(2, 3, H, W), (2, 3, H // 2, W // 2)] and backend.last_scale == 0.5
    monkeypatch.setattr(model, "infer", shrunk)
    half = FoundationStereoBackend(_config(lr_check=0.05, scale=0.5), model=model).compute(left, right)
    assert np.array_equal(got, half, equal_nan=True)


def test_changing_lr_check_at_run_time_keeps_the_network_and_prepares_the_new_batch(model, monkeypatch):
    from foundation_stereo_ros.runtime.fastpath import NetworkRunner

    warmed = []
    monkeypatch.setattr(NetworkRunner, "warmup",
                        lambda self, height, width, batch=1, runs=2: warmed.append((height, width, batch)))
    monkeypatch.setattr(FoundationStereoBackend, "compile_backend", "eager")
    fast = FoundationStereoBackend(_config(execution="compile"), model=model)
    assert fast.prepare(W, H, batch=2) and warmed == [(64, 96, 2)] and fast.prepared_batch == 2
    fast_config = _config(execution="compile", lr_check=1.0)
    checked = make_backend(fast_config, previous=fast)
    assert checked.model is fast.model and checked.lr_check == 1.0 and checked._runner is fast._runner
    assert checked.prepared_size is None  # prepared again for batches of two views per pair
    assert checked.prepare(W, H, batch=2) and warmed[-1] == (64, 96, 4) and checked.prepared_batch == 2
    tolerance_only = make_backend(fast_config.replace(lr_check=2.0), previous=checked)
    assert tolerance_only.prepared_size == (64, 96) and tolerance_only.prepared_batch == 2
    off = make_backend(fast_config.replace(lr_check=0.0), previous=checked)
    assert off.prepared_size is None and off.views_per_pair == 1


def test_sgbm_keeps_its_own_check_and_says_so():
    config = ProcessorConfig(backend="sgbm", sgbm_num_disparities=16)
    assert SGBMBackend(config).notes == ()
    noted = SGBMBackend(config.replace(lr_check=1.0))
    assert len(noted.notes) == 1 and "sgbm_disp12_max_diff" in noted.notes[0]
    left, right = _pair()
    assert np.array_equal(noted.compute(left, right), SGBMBackend(config).compute(left, right), equal_nan=True)


class _NetworkAsOrt(types.ModuleType):
    """A stand-in ``onnxruntime`` whose one session is the (instrumented) PyTorch network with a
    fixed 64 x 96 batch-1 input, as foundation-stereo-export makes it."""

    def __init__(self, model):
        super().__init__("onnxruntime")
        self.runs = []
        ort = self

        class InferenceSession:
            def __init__(self, path, sess_options=None, providers=(), provider_options=()):
                self._providers = list(providers)

            def get_inputs(self):
                return [types.SimpleNamespace(name=n, shape=[1, 3, 64, 96]) for n in ("left", "right")]

            def get_providers(self):
                return self._providers

            def run(self, names, feeds):
                ort.runs.append(feeds["left"].shape)
                left, right = torch.from_numpy(feeds["left"]), torch.from_numpy(feeds["right"])
                with torch.no_grad():
                    return [(model(left, right, iters=ITERS).disparity * SHRINK).numpy()]

        self.SessionOptions = lambda: types.SimpleNamespace()
        self.InferenceSession = InferenceSession
        self.GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL=99)

    def get_available_providers(self):
        return ["CPUExecutionProvider"]


def test_onnx_runs_its_batch_one_graph_twice_and_masks_as_pytorch_does(model, monkeypatch, tmp_path):
    from foundation_stereo_ros.runtime import onnx_runner

    ort = _NetworkAsOrt(model)
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    monkeypatch.setattr(onnx_runner, "read_export_metadata", lambda path: {"image_height": H, "image_width": W})
    path = tmp_path / "m.onnx"
    path.write_bytes(b"stand-in")
    config = ProcessorConfig(backend="onnx", onnx_model=str(path), device="cpu", iters=ITERS)
    plain = make_backend(config)
    checked = make_backend(config.replace(lr_check=0.05), previous=plain)
    assert checked.runner is plain.runner and plain.lr_check == 0.0  # the session is shared, not rebuilt
    assert any("twice" in n for n in checked.notes) and not any("twice" in n for n in plain.notes)
    left, right = _pair()
    ort.runs.clear()
    got = checked.compute(left, right)
    assert len(ort.runs) == 2 and all(shape == (1, 3, 64, 96) for shape in ort.runs)
    _instrument(monkeypatch, model)
    expected = FoundationStereoBackend(_config(lr_check=0.05), model=model).compute(left, right)
    assert 0.02 < np.isnan(got).mean() < 0.98
    assert (np.isnan(got) == np.isnan(expected)).mean() > 0.995
    both = ~np.isnan(got) & ~np.isnan(expected)
    assert np.abs(got[both] - expected[both]).max() <= 1e-3


def test_on_aloe_the_check_removes_occlusions_and_mismatches(opencv_data):
    """The check with the mirrored, swapped pair on real images, matched by SGBM (OpenCV's own
    check, uniqueness and speckle filter off; the ViT-S test weights are untrained, so their
    answer says nothing about real occlusions). Half size; ground-truth 0 marks the pixels
    Middlebury could not match in both views (mostly occlusions). Where both views have an
    answer, the check removes GT-occluded pixels at over twice their share among the rest, and
    halves the bad-2 rate of what is kept (measured: 2.7x, 10.5 % against 3.8 %; bad-2 6.2 % -> 3.2 %
    at 1 px)."""
    read = lambda name: cv2.resize(cv2.imread(str(opencv_data / name), cv2.IMREAD_GRAYSCALE), None,  # noqa: E731
                                   fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    left, right = read("aloeL.jpg"), read("aloeR.jpg")
    gt = cv2.imread(str(opencv_data / "aloeGT.png"), cv2.IMREAD_UNCHANGED)[::2, ::2].astype(np.float32) / 2
    occluded = gt == 0
    sgbm = cv2.StereoSGBM_create(minDisparity=0, numDisparities=128, blockSize=5, P1=200, P2=800, disp12MaxDiff=-1,
                                 uniquenessRatio=0, speckleWindowSize=0, mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)

    def match(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = sgbm.compute(np.ascontiguousarray(a), np.ascontiguousarray(b)).astype(np.float32) / 16
        d[d < 0] = np.nan  # SGBM's invalid value, and the border its search range leaves out
        return d

    d_left = match(left, right)
    d_right = np.ascontiguousarray(match(right[:, ::-1], left[:, ::-1])[:, ::-1])
    # Where both views have an answer (SGBM, unlike the network, leaves a 128 px border empty):
    # with a tolerance no disparity difference reaches, only an unknown d_R fails.
    answered = np.isfinite(d_left) & ~left_right_inconsistent(d_left, d_right, 1e4)
    assert answered.mean() > 0.5
    removed = answered & left_right_inconsistent(d_left, d_right, 1.0)
    kept = answered & ~removed
    assert 0.02 < removed.sum() / answered.sum() < 0.15
    assert occluded[removed].mean() > 2 * occluded[kept].mean()
    bad2 = lambda where: (np.abs(d_left - gt) > 2)[where & ~occluded].mean()  # noqa: E731
    assert bad2(kept) < 0.6 * bad2(answered)
