"""Inference paths the shared fixture does not cover: batches, odd sizes, hierarchical
inference, other max_disp values, precisions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foundation_stereo_ros.model import FoundationStereo, FoundationStereoConfig, load_model
from foundation_stereo_ros.model.padding import InputPadder

ITERS = 2


@pytest.fixture(scope="module")
def model(vits_checkpoint):
    return load_model(vits_checkpoint)


def _pair(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    left = (torch.rand(b, 3, h, w, generator=g) * 255).round()
    right = torch.roll(left, shifts=-4, dims=3)
    return left, right


def test_batch_equals_samples_one_by_one(model):
    left, right = _pair(2, 64, 96)
    right[1] = (right[1] * 0.7).round()  # two different pairs in one batch
    batched = model.infer(left, right, iters=ITERS)
    singles = torch.cat([model.infer(left[i:i + 1], right[i:i + 1], iters=ITERS) for i in range(2)])
    torch.testing.assert_close(batched, singles, atol=1e-3, rtol=0)
    assert (batched[0] - batched[1]).abs().max() > 1e-3  # the samples really differ


def test_odd_size_equals_padded_result_cropped(model):
    left, right = _pair(1, 70, 100)
    got = model.infer(left, right, iters=ITERS)
    assert got.shape == (1, 1, 70, 100)
    # 70x100 pads to 96x128: 13 rows above, 13 below, 14 columns left, 14 right (replicate)
    lp = F.pad(left, (14, 14, 13, 13), mode="replicate")
    rp = F.pad(right, (14, 14, 13, 13), mode="replicate")
    with torch.no_grad():
        full = model(lp, rp, iters=ITERS).disparity
    torch.testing.assert_close(got, full[..., 13:83, 14:114], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_hierarchical_follows_its_definition(model):
    left, right = _pair(1, 100, 150)
    got = model.infer(left, right, iters=ITERS, hierarchical=True, small_ratio=0.5)
    with torch.no_grad():
        # 1. a half-resolution pass (50x75 padded to 64x96: 7/7 rows, 10/11 columns)
        sl = F.interpolate(left, scale_factor=0.5, mode="bilinear", align_corners=False)
        sr = F.interpolate(right, scale_factor=0.5, mode="bilinear", align_corners=False)
        sp = InputPadder(50, 75)
        assert (sp.top, sp.bottom, sp.left, sp.right) == (7, 7, 10, 11)
        small = model(*sp.pad(sl, sr), iters=ITERS).disparity[..., 7:57, 10:85]
        # 2. upsampled to full size, disparities doubled, negatives clipped
        init_full = (F.interpolate(small, size=(100, 150), mode="bilinear", align_corners=True) * 2).clamp(min=0)
        # 3. padded like the images (100x150 -> 128x160: 14/14 rows, 5/5 columns); the reference
        #    adds the left padding to it; then brought to 1/4 resolution and scale
        fp = InputPadder(100, 150)
        assert (fp.top, fp.left) == (14, 5)
        init = F.pad(init_full, (5, 5, 14, 14), mode="replicate") + 5
        init = F.interpolate(init, scale_factor=0.25, mode="bilinear", align_corners=True) * 0.25
        # 4. the full-resolution pass starts from it
        full = model(*fp.pad(left, right), iters=ITERS, init_disp=init).disparity[..., 14:114, 5:155]
    torch.testing.assert_close(got, full, atol=1e-4, rtol=0)
    plain = model.infer(left, right, iters=ITERS)
    assert (plain - got).abs().max() > 1e-3  # the initialisation is really used


@pytest.mark.parametrize("max_disp", [192, 256])
def test_other_max_disp(vits_checkpoint, max_disp):
    state = torch.load(vits_checkpoint, map_location="cpu", weights_only=True)["model"]
    model = FoundationStereo(FoundationStereoConfig(vit_size="vits", max_disp=max_disp))
    model.load_state_dict(state)
    model.eval()
    seen = {}

    def record(module, inputs, output):
        seen["volume"] = output.shape

    model.classifier.register_forward_hook(record)
    left, right = _pair(1, 64, 96)
    with torch.no_grad():
        out = model(left, right, iters=ITERS)
    assert seen["volume"] == (1, 1, max_disp // 4, 16, 24)
    assert out.disparity.shape == (1, 1, 64, 96) and torch.isfinite(out.disparity).all()
    assert out.init_disparity.min() >= 0 and out.init_disparity.max() <= max_disp // 4 - 1


def test_iterations_are_chosen_per_call(model):
    left, right = _pair(1, 64, 64)
    with torch.no_grad():
        out = model(left, right, iters=3, all_iterations=True)
    assert len(out.iterations) == 3
    torch.testing.assert_close(out.iterations[-1], out.disparity)
    with pytest.raises(ValueError, match="iters"):
        model(left, right, iters=0)


def test_reduced_precision_needs_cuda(model):
    left, right = _pair(1, 64, 64)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        model.infer(left, right, iters=1, precision="bf16")
    with pytest.raises(ValueError, match="precision"):
        model.infer(left, right, iters=1, precision="int8")


def test_mismatched_inputs_are_rejected(model):
    left, _ = _pair(1, 64, 64)
    with pytest.raises(ValueError, match="left and right"):
        model.infer(left, left[..., :32], iters=1)


@pytest.mark.gpu  # needs a CUDA GPU (autocast fp16/bf16)
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_close_to_fp32_on_cuda(vits_checkpoint, precision):
    model = load_model(vits_checkpoint, device="cuda")
    left, right = _pair(1, 96, 128)
    ref = model.infer(left.cuda(), right.cuda(), iters=4)
    got = model.infer(left.cuda(), right.cuda(), iters=4, precision=precision)
    from foundation_stereo_ros.runtime.fastpath import PARITY_TOLERANCE_PX

    diff = (got - ref).abs()
    mean_bound, max_bound = PARITY_TOLERANCE_PX[precision]  # the one table of reduced-precision bounds
    print(f"CUDA {precision} autocast vs fp32: mean {diff.mean():.4f} px, max {diff.max():.4f} px")
    assert diff.mean() < mean_bound and diff.max() < max_bound


def test_mixed_precision_regions_on_the_cpu(model, monkeypatch):
    """The model's autocast regions, run with the CPU's bf16 autocast in place of CUDA's: the
    pass completes without dtype clashes, convolutions really run in bf16, the disparity and
    its updates stay float32, and the result is within the bf16 bound of the fp32 path.
    (CPU autocast casts a similar but not identical op list; the CUDA run is in test_fastpath.)"""
    from foundation_stereo_ros.runtime.fastpath import PARITY_TOLERANCE_PX

    def cpu_bf16(self, device, precision):
        assert precision == "bf16"
        return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)

    left, right = _pair(1, 64, 96)
    with torch.no_grad():
        ref = model(left, right, iters=ITERS, all_iterations=True)
    dtypes = []
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    monkeypatch.setattr(FoundationStereo, "_autocast", cpu_bf16)
    try:
        with torch.no_grad():
            got = model(left, right, iters=ITERS, all_iterations=True, precision="bf16")
    finally:
        for h in hooks:
            h.remove()
    assert dtypes.count(torch.bfloat16) > len(dtypes) // 2  # most convolutions ran in bf16
    assert got.disparity.dtype == torch.float32 and got.init_disparity.dtype == torch.float32
    assert all(d.dtype == torch.float32 for d in got.iterations)
    diff = (got.disparity - ref.disparity).abs()
    mean_bound, max_bound = PARITY_TOLERANCE_PX["bf16"]
    print(f"CPU bf16 autocast vs fp32: mean {diff.mean():.4f} px, max {diff.max():.4f} px")
    assert diff.mean() < mean_bound and diff.max() < max_bound
    assert diff.max() > 0  # it really ran another precision
