"""Augmentation keeps the ground truth consistent with the images."""
import dataclasses

import cv2
import numpy as np
import pytest

from _training_helpers import photometric_error, synthetic_pair
from foundation_stereo_ros.training import AugmentConfig, StereoAugmentor, StereoSample
from foundation_stereo_ros.training.augment import PhotometricParams, apply_photometric, crop_sample, resize_sample

NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=(1.0, 1.0), hue=0.0, gamma=(1.0, 1.0),
                 asymmetric_prob=0.0, eraser_prob=0.0)


@pytest.fixture(scope="module")
def aloe(opencv_data):
    """The real Aloe pair at 1/4 size, ground truth downscaled by the test itself."""
    left = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeL.jpg")), cv2.COLOR_BGR2RGB)
    right = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeR.jpg")), cv2.COLOR_BGR2RGB)
    gt = cv2.imread(str(opencv_data / "aloeGT.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
    h, w = gt.shape
    size = (w // 4, h // 4)
    small = [cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in (left, right)]
    # Sample the ground truth at the small pixels' centres (4x + 1.5) and scale it by the width ratio.
    ys = (np.arange(size[1]) * h / size[1] + 1.5).astype(int)
    xs = (np.arange(size[0]) * w / size[0] + 1.5).astype(int)
    d = gt[np.ix_(ys, xs)] * (size[0] / w)
    return StereoSample(small[0], small[1], d, d > 0, "aloe")


def test_scaling_and_cropping_keep_aloe_ground_truth_consistent(aloe):
    base = photometric_error(aloe.left, aloe.right, aloe.disparity, aloe.valid)
    aug = StereoAugmentor(AugmentConfig(crop_size=(192, 256), min_log2_scale=-0.3, max_log2_scale=0.5,
                                        stretch_prob=1.0, max_log2_stretch=0.25, **NO_COLOUR))
    widths = set()
    for seed in range(4):
        s = aug(aloe, np.random.default_rng(seed))
        assert s.left.shape == (192, 256, 3) and s.disparity.shape == (192, 256)
        err = photometric_error(s.left, s.right, s.disparity, s.valid)
        wrong = photometric_error(s.left, s.right, s.disparity * 0.85, s.valid)
        # The augmented ground truth explains the augmented pair about as well as the original
        # explains the original, and clearly better than a 15 % wrong scale.
        assert err < 1.5 * base + 1.0, (seed, err, base)
        assert err < 0.6 * wrong, (seed, err, wrong)
        assert s.valid.mean() > 0.5
        widths.add(round(float(s.disparity[s.valid].max()), 3))
    assert len(widths) > 1  # the scale really varied


def test_resize_scales_disparity_by_the_width_ratio_only():
    left, right, disp = synthetic_pair(np.random.default_rng(0), 40, 60, 2, 6)
    valid = np.ones(disp.shape, bool)
    valid[:, :3] = False
    s = resize_sample(StereoSample(left, right, np.where(valid, disp, 0), valid, "x"), 90, 20)  # x1.5, y0.5
    assert s.left.shape == (20, 90, 3)
    assert set(np.unique(s.disparity[s.valid]).round(4)) <= {3.0, 9.0}  # 2 and 6 px times 1.5
    assert not s.valid[:, :4].any() and s.valid[:, 5:].all()  # invalid columns 0..2 -> 0..4.5
    assert (s.disparity[~s.valid] == 0).all()
    c = crop_sample(s, 10, 5, 32, 8)
    np.testing.assert_array_equal(c.disparity, s.disparity[5:13, 10:42])
    with pytest.raises(ValueError, match="exceeds"):
        crop_sample(s, 70, 0, 32, 8)


def test_vertical_flip_keeps_rows_epipolar():
    pair = synthetic_pair(np.random.default_rng(1), 64, 96, 3, 8)
    s = StereoSample(*pair, np.ones((64, 96), bool), "x")
    cfg = AugmentConfig(crop_size=(64, 96), min_log2_scale=0, max_log2_scale=0, stretch_prob=0, vflip_prob=1.0,
                        **NO_COLOUR)
    out = StereoAugmentor(cfg)(s, np.random.default_rng(0))
    np.testing.assert_array_equal(out.left, s.left[::-1])
    np.testing.assert_array_equal(out.disparity, s.disparity[::-1])
    assert photometric_error(out.left, out.right, out.disparity, out.valid) == pytest.approx(
        photometric_error(s.left, s.right, s.disparity, s.valid), abs=1e-4)


def test_colour_changes_are_shared_unless_asymmetric_and_eraser_hits_only_the_right_view():
    img = synthetic_pair(np.random.default_rng(2), 64, 96, 2, 5)[0]
    s = StereoSample(img, img.copy(), np.full((64, 96), 2.0, np.float32), np.ones((64, 96), bool), "x")
    base = dict(crop_size=(64, 96), min_log2_scale=0, max_log2_scale=0, stretch_prob=0, eraser_prob=0.0)
    same = StereoAugmentor(AugmentConfig(**base, asymmetric_prob=0.0))
    diff = StereoAugmentor(AugmentConfig(**base, asymmetric_prob=1.0))
    for seed in range(3):
        a = same(s, np.random.default_rng(seed))
        assert np.array_equal(a.left, a.right) and not np.array_equal(a.left, img)
        b = diff(s, np.random.default_rng(seed))
        assert not np.array_equal(b.left, b.right)
        # "plausible": the views differ a little (exposure, white balance), not like unrelated images
        assert 0 < np.abs(b.left.astype(int) - b.right.astype(int)).mean() < 25
    # Same generator seed, same augmentation (reproducibility across loader workers and resumes).
    np.testing.assert_array_equal(diff(s, np.random.default_rng(7)).right, diff(s, np.random.default_rng(7)).right)
    eraser = StereoAugmentor(AugmentConfig(crop_size=(64, 96), min_log2_scale=0, max_log2_scale=0, stretch_prob=0,
                                           **{**NO_COLOUR, "eraser_prob": 1.0}))
    e = eraser(s, np.random.default_rng(0))
    np.testing.assert_array_equal(e.left, img)
    changed = (e.right != img).any(axis=2)
    assert 0 < changed.mean() < 0.5
    np.testing.assert_array_equal(e.disparity, s.disparity)


def test_photometric_parameters_by_hand():
    img = np.full((2, 2, 3), 100, np.uint8)
    assert (apply_photometric(img, PhotometricParams(brightness=1.2)) == 120).all()
    grad = np.array([[[50, 50, 50], [150, 150, 150]]], np.uint8)
    out = apply_photometric(grad, PhotometricParams(contrast=0.5))
    np.testing.assert_array_equal(out[0, :, 0], [75, 125])  # towards the mean grey 100
    g = apply_photometric(np.full((1, 1, 3), 64, np.uint8), PhotometricParams(gamma=2.0))
    assert g[0, 0, 0] == round(255 * (64 / 255) ** 2)


def test_config_validation():
    with pytest.raises(ValueError, match="multiples of 32"):
        AugmentConfig(crop_size=(100, 96))
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(vflip_prob=1.5)
    with pytest.raises(ValueError, match="scale range"):
        AugmentConfig(min_log2_scale=0.5, max_log2_scale=0.1)
    assert dataclasses.asdict(AugmentConfig.crop_only((64, 64)))["eraser_prob"] == 0.0
