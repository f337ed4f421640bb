"""Building blocks of the network against naive references."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from foundation_stereo_ros.model.attention import attention_over_tokens, reference_attention
from foundation_stereo_ros.model.config import FoundationStereoConfig
from foundation_stereo_ros.model.cost_volume import concat_volume, group_correlation_volume, soft_argmin
from foundation_stereo_ros.model.geometry import GeometryEncodingVolume, linear_sample_1d
from foundation_stereo_ros.model.layers import ResidualBlock
from foundation_stereo_ros.model.monocular import monocular_input_size
from foundation_stereo_ros.model.padding import InputPadder
from foundation_stereo_ros.model.upsample import convex_upsample

g = torch.Generator().manual_seed(1234)


def randn(*shape):
    return torch.randn(*shape, generator=g)


def naive_group_correlation(left, right, max_disp, groups):
    b, c, h, w = left.shape
    out = torch.zeros(b, groups, max_disp, h, w)
    for d in range(max_disp):
        for x in range(d, w):
            lf = left[:, :, :, x].reshape(b, groups, c // groups, h)
            rf = right[:, :, :, x - d].reshape(b, groups, c // groups, h)
            out[:, :, d, :, x] = (lf / lf.norm(dim=2, keepdim=True).clamp_min(1e-12)
                                  * rf / rf.norm(dim=2, keepdim=True).clamp_min(1e-12)).sum(2)
    return out


def naive_concat(left, right, max_disp):
    b, c, h, w = left.shape
    out = torch.zeros(b, 2 * c, max_disp, h, w)
    for d in range(max_disp):
        out[:, :c, d] = left
        for x in range(d, w):
            out[:, c:, d, :, x] = right[:, :, :, x - d]
    return out


def test_group_correlation_volume_matches_loops():
    left, right = randn(2, 16, 3, 11), randn(2, 16, 3, 11)
    # More disparities than columns, fewer, and exactly as many.
    for max_disp in (7, 11, 15):
        got = group_correlation_volume(left, right, max_disp, 8)
        assert got.shape == (2, 8, max_disp, 3, 11)
        torch.testing.assert_close(got, naive_group_correlation(left, right, max_disp, 8), atol=1e-5, rtol=1e-5)


def test_group_correlation_stays_float32_under_autocast():
    left, right = randn(1, 16, 2, 9), randn(1, 16, 2, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = group_correlation_volume(left, right, 5, 8)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, naive_group_correlation(left, right, 5, 8), atol=1e-5, rtol=1e-5)


def test_group_correlation_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        group_correlation_volume(randn(1, 10, 2, 4), randn(1, 10, 2, 4), 3, 8)


def test_concat_volume_matches_loops():
    left, right = randn(1, 5, 4, 9), randn(1, 5, 4, 9)
    torch.testing.assert_close(concat_volume(left, right, 6), naive_concat(left, right, 6))


def test_soft_argmin_is_the_expectation():
    logits = randn(2, 10, 3, 4)
    prob = logits.softmax(dim=1)
    expected = torch.zeros(2, 1, 3, 4)
    for d in range(10):
        expected += d * prob[:, d:d + 1]
    torch.testing.assert_close(soft_argmin(prob), expected)
    one_hot = F.one_hot(torch.full((1, 2, 2), 6), 10).permute(0, 3, 1, 2).float()
    assert torch.all(soft_argmin(one_hot) == 6)


def test_attention_over_tokens_matches_plain_softmax():
    q, k, v = randn(3, 26, 4, 7), randn(3, 26, 4, 7), randn(3, 26, 4, 7)
    torch.testing.assert_close(attention_over_tokens(q, k, v), reference_attention(q, k, v), atol=1e-5, rtol=1e-5)
    # The layout quirk (heads taken as the sequence) is a different function: this test can fail.
    quirk = F.scaled_dot_product_attention(q, k, v)
    assert (quirk - reference_attention(q, k, v)).abs().max() > 1e-2


@pytest.mark.parametrize("h,w", [(96, 128), (70, 100), (1, 1), (33, 65)])
def test_padding_round_trip(h, w):
    x = randn(2, 3, h, w)
    padder = InputPadder(h, w)
    padded = padder.pad(x)
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    assert padded.shape[-2:] == padder.padded_size
    assert padder.left <= padder.right <= padder.left + 1 and padder.top <= padder.bottom <= padder.top + 1
    torch.testing.assert_close(padder.unpad(padded), x)
    # replicate padding: the border columns repeat the image's edge
    if padder.left:
        torch.testing.assert_close(padded[..., padder.top:padder.top + h, 0], x[..., 0])


def test_padding_rejects_empty_images():
    with pytest.raises(ValueError):
        InputPadder(0, 10)


def test_linear_sample_matches_grid_sample():
    values = randn(5, 3, 12)
    x = torch.rand(5, 9, generator=g) * 16 - 2  # includes positions outside [0, 11]
    grid = torch.stack([2 * x / (12 - 1) - 1, torch.zeros_like(x)], dim=-1).unsqueeze(1)  # (N, 1, K, 2)
    expected = F.grid_sample(values.unsqueeze(2), grid, align_corners=True).squeeze(2)
    torch.testing.assert_close(linear_sample_1d(values, x), expected, atol=1e-5, rtol=1e-5)


def test_geometry_lookup_matches_naive_per_pixel_sampling():
    b, c, d, h, w, radius = 1, 3, 8, 2, 6, 2
    left, right, volume = randn(b, 4, h, w), randn(b, 4, h, w), randn(b, c, d, h, w)
    disp = torch.rand(b, 1, h, w, generator=g) * 5
    got = GeometryEncodingVolume(left, right, volume, levels=2, radius=radius)(disp)
    ln, rn = F.normalize(left, dim=1), F.normalize(right, dim=1)

    def interp(row, pos):  # 1-D linear interpolation with zeros outside
        lo = math.floor(pos)
        total = 0.0
        for i, wt in ((lo, 1 - (pos - lo)), (lo + 1, pos - lo)):
            if 0 <= i < len(row):
                total += wt * row[i]
        return total

    for y in range(h):
        for x in range(w):
            dv = disp[0, 0, y, x].item()
            feats = []
            for level in range(2):
                s = 2 ** level
                vol = volume[0, :, :, y, x]
                corr = (ln[0, :, y, x, None] * rn[0, :, y, :]).sum(0)
                if level:
                    vol = F.avg_pool1d(vol[None], 2, 2)[0]
                    corr = F.avg_pool1d(corr[None, None], 2, 2)[0, 0]
                for ch in range(c):
                    feats += [interp(vol[ch], dv / s + o) for o in range(-radius, radius + 1)]
                feats += [interp(corr, (x - dv) / s + o) for o in range(-radius, radius + 1)]
            torch.testing.assert_close(got[0, :, y, x], torch.tensor(feats, dtype=torch.float32), atol=1e-5, rtol=1e-5)


def test_convex_upsample_matches_naive():
    disp = randn(1, 1, 3, 4)
    weights = randn(1, 9, 12, 16).softmax(dim=1)
    got = convex_upsample(disp, weights)
    padded = F.pad(disp, (1, 1, 1, 1))
    for y in range(12):
        for x in range(16):
            py, px = y // 4, x // 4
            patch = padded[0, 0, py:py + 3, px:px + 3].reshape(9)
            assert abs(got[0, 0, y, x] - (patch * weights[0, :, y, x]).sum()) < 1e-5


def test_monocular_input_size():
    assert monocular_input_size(96, 128, 112, 1344) == (112, 224)
    assert monocular_input_size(480, 640, 112, 1344) == (560, 672)
    # 1080x1920 -> 1120x2016 is too wide: width becomes 1344, height 1120*1344/2016=746.7 -> 784
    assert monocular_input_size(1080, 1920, 112, 1344) == (784, 1344)


def test_shared_norm_takes_the_downsample_values():
    """The checkpoints store the strided block's norm as norm3 and downsample.1; the reference
    ends up with the downsample.1 values, and so must we."""
    block = ResidualBlock(4, 8, "batch", stride=2)
    state = {k: v.clone() for k, v in block.state_dict().items()}
    state["norm3.weight"] = torch.full((8,), 3.0)
    state["downsample.1.weight"] = torch.full((8,), 5.0)
    block.load_state_dict(state)
    assert torch.all(block.norm3.weight == 5.0) and block.norm3 is block.downsample[1]


def test_config_validation_and_yaml_keys(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        FoundationStereoConfig(vit_size="vits", max_disp=100)
    with pytest.raises(ValueError, match="vit_size"):
        FoundationStereoConfig(vit_size="vitx")
    with pytest.raises(ValueError, match="n_downsample"):
        FoundationStereoConfig(n_downsample=3)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("max_disp: 192\nhidden_dims: [128, 128, 128]\nlr: 0.0001\nbatch_size: 4\n")
    cfg = FoundationStereoConfig.from_yaml(cfg_file)
    assert cfg.vit_size == "vitl" and cfg.max_disp == 192  # the ViT-L release has no vit_size key


@pytest.mark.parametrize("size_in,mid,out", [
    ((7, 9), (13, 20), (5, 6)),  # up, then down: the monocular prior's case
    ((56, 96), (98, 168), (24, 40)),
    ((10, 8), (6, 5), (4, 3)),  # down twice
    ((5, 6), (11, 13), (11, 13)),  # the second step changes nothing
    ((4, 4), (9, 9), (1, 2)),  # a single output row
])
def test_resize_bilinear_twice_matches_two_interpolations(size_in, mid, out):
    from foundation_stereo_ros.model.monocular import resize_bilinear_twice

    x = randn(2, 3, *size_in)
    expected = F.interpolate(F.interpolate(x, size=mid, mode="bilinear", align_corners=True), size=out,
                             mode="bilinear", align_corners=True)
    got = resize_bilinear_twice(x, mid, out)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # From reduced precision it still returns float32, as F.interpolate does under autocast.
    assert resize_bilinear_twice(x.bfloat16(), mid, out).dtype == torch.float32


def test_monocular_prior_resamples_in_one_step_as_in_two():
    """The prior's 1/4 features equal the published two steps: features at the ViT input size,
    then bilinear (aligned corners) to 1/4, for sizes whose ViT input is rounded up and capped."""
    from foundation_stereo_ros.model import FoundationStereo, FoundationStereoConfig

    torch.manual_seed(0)
    prior = FoundationStereo(FoundationStereoConfig(vit_size="vits")).eval().feature.dino
    for h, w in ((64, 96), (96, 160)):
        images = randn(1, 3, h, w)
        with torch.no_grad():
            two_steps = F.interpolate(prior.vit_resolution_features(images), size=(h // 4, w // 4),
                                      mode="bilinear", align_corners=True)
            torch.testing.assert_close(prior(images), two_steps, atol=1e-5, rtol=1e-4)
