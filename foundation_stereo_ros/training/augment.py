"""Augmentation that keeps stereo ground truth consistent (the usual RAFT-Stereo-style recipe).

Spatial (applied to both views and the ground truth together):

* Scaling by ``sx``, ``sy`` (optionally different, "stretch"): disparities are horizontal
  distances, so they are multiplied by the exact width ratio the images were resized with; the
  vertical factor leaves them unchanged. Ground truth is resampled with nearest-neighbour so no
  disparity is invented between a foreground and a background surface, and invalid pixels stay
  invalid.
* Random crop to ``crop_size`` (multiples of 32, as the network's forward needs).
* Vertical flip of both views (rows stay epipolar lines). A horizontal flip would need the right
  view's disparity, so there is none.

Photometric (on the crop): brightness, contrast, saturation, hue and gamma. By default both
views get the same random parameters; with probability ``asymmetric_prob`` the right view's
parameters deviate from the left's by at most ``asymmetric_strength`` of each range's half-width
(a slightly different exposure or white balance of the second camera, as real rigs show, but
never two unrelated looks of the scene).
Optional grey conversion of both views (IR cameras) and "eraser" patches on the right view only
(an occlusion the left view does not have; the left ground truth stays right).

All randomness comes from the ``numpy.random.Generator`` passed in, so a sample's augmentation
is reproducible from (seed, epoch, index) whatever the number of loader workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

from .data import StereoSample


@dataclass(frozen=True)
class AugmentConfig:
    crop_size: Tuple[int, int] = (320, 736)  # (H, W), multiples of 32
    min_log2_scale: float = -0.2  # overall scale 2**U(min, max)
    max_log2_scale: float = 0.4
    stretch_prob: float = 0.8  # probability that x and y scale differ
    max_log2_stretch: float = 0.2  # each axis additionally scaled by 2**U(-s, s)
    vflip_prob: float = 0.0
    brightness: float = 0.4  # factor in [1 - b, 1 + b]
    contrast: float = 0.4  # factor in [1 - c, 1 + c]
    saturation: Tuple[float, float] = (0.6, 1.4)
    hue: float = 0.05  # shift in [-h, h] turns of the colour circle
    gamma: Tuple[float, float] = (0.9, 1.1)
    asymmetric_prob: float = 0.2
    asymmetric_strength: float = 0.25  # right-view deviation, as a share of each range's half-width
    grayscale_prob: float = 0.0
    eraser_prob: float = 0.5
    eraser_size: Tuple[float, float] = (0.1, 0.3)  # patch side as a fraction of the crop side

    def __post_init__(self) -> None:
        h, w = self.crop_size
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise ValueError(f"crop size must be positive multiples of 32 (the network's stride), got {h}x{w}")
        if self.min_log2_scale > self.max_log2_scale:
            raise ValueError(f"scale range is empty: [{self.min_log2_scale}, {self.max_log2_scale}]")
        for name in ("stretch_prob", "vflip_prob", "asymmetric_prob", "grayscale_prob", "eraser_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
        if not (0 <= self.brightness < 1 and 0 <= self.contrast < 1 and 0 <= self.hue <= 0.5
                and 0 <= self.saturation[0] <= self.saturation[1] and 0 < self.gamma[0] <= self.gamma[1]
                and self.max_log2_stretch >= 0 and 0 < self.eraser_size[0] <= self.eraser_size[1] <= 1
                and 0 <= self.asymmetric_strength <= 1):
            raise ValueError(f"invalid photometric ranges in {self}")

    @classmethod
    def crop_only(cls, crop_size: Tuple[int, int]) -> "AugmentConfig":
        """Random crops at the original scale and colours, nothing else."""
        return cls(crop_size=tuple(crop_size), min_log2_scale=0.0, max_log2_scale=0.0, stretch_prob=0.0,
                   brightness=0.0, contrast=0.0, saturation=(1.0, 1.0), hue=0.0, gamma=(1.0, 1.0),
                   asymmetric_prob=0.0, eraser_prob=0.0)


def resize_sample(sample: StereoSample, width: int, height: int) -> StereoSample:
    """Both views resized to ``width`` x ``height`` (bilinear) and the ground truth resampled
    (nearest, pixel-centre aligned) with disparities scaled by the width ratio."""
    h, w = sample.left.shape[:2]
    if (width, height) == (w, h):
        return sample
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    interp = cv2.INTER_AREA if width < w and height < h else cv2.INTER_LINEAR
    sx = width / w
    left = cv2.resize(sample.left, (width, height), interpolation=interp)
    right = cv2.resize(sample.right, (width, height), interpolation=interp)
    # INTER_NEAREST_EXACT samples at pixel centres; plain INTER_NEAREST is shifted by half a pixel.
    disp = cv2.resize(sample.disparity, (width, height), interpolation=cv2.INTER_NEAREST_EXACT) * np.float32(sx)
    valid = cv2.resize(sample.valid.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST_EXACT) > 0
    return StereoSample(left, right, np.where(valid, disp, 0.0).astype(np.float32), valid, sample.name)


def crop_sample(sample: StereoSample, x0: int, y0: int, width: int, height: int) -> StereoSample:
    h, w = sample.left.shape[:2]
    if x0 < 0 or y0 < 0 or x0 + width > w or y0 + height > h:
        raise ValueError(f"crop {width}x{height}+{x0}+{y0} exceeds the {w}x{h} image")
    sl = (slice(y0, y0 + height), slice(x0, x0 + width))
    return StereoSample(sample.left[sl].copy(), sample.right[sl].copy(), sample.disparity[sl].copy(),
                        sample.valid[sl].copy(), sample.name)


@dataclass(frozen=True)
class PhotometricParams:
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0  # turns
    gamma: float = 1.0


_GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma of RGB


def apply_photometric(image: np.ndarray, p: PhotometricParams) -> np.ndarray:
    """uint8 RGB -> uint8 RGB with the given colour changes."""
    x = image.astype(np.float32) * p.brightness
    mean = float((x @ _GREY_WEIGHTS).mean())
    x = (x - mean) * p.contrast + mean
    grey = (x @ _GREY_WEIGHTS)[:, :, None]
    x = (x - grey) * p.saturation + grey
    x = np.clip(x, 0.0, 255.0)
    if p.hue:
        hsv = cv2.cvtColor(x / 255.0, cv2.COLOR_RGB2HSV)  # float input: H in degrees [0, 360)
        hsv[:, :, 0] = np.mod(hsv[:, :, 0] + 360.0 * p.hue, 360.0)
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    if p.gamma != 1.0:
        x = 255.0 * np.power(np.clip(x, 0.0, 255.0) / 255.0, p.gamma)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


class StereoAugmentor:
    """Callable ``(sample, rng) -> sample`` implementing the recipe in the module docstring."""

    def __init__(self, config: AugmentConfig = AugmentConfig()):
        self.config = config

    def _photometric(self, rng: np.random.Generator) -> PhotometricParams:
        c = self.config
        return PhotometricParams(brightness=rng.uniform(1 - c.brightness, 1 + c.brightness),
                                 contrast=rng.uniform(1 - c.contrast, 1 + c.contrast),
                                 saturation=rng.uniform(*c.saturation), hue=rng.uniform(-c.hue, c.hue),
                                 gamma=rng.uniform(*c.gamma))

    def spatial(self, sample: StereoSample, rng: np.random.Generator) -> StereoSample:
        c = self.config
        ch, cw = c.crop_size
        h, w = sample.left.shape[:2]
        scale = 2.0 ** rng.uniform(c.min_log2_scale, c.max_log2_scale)
        sx = sy = scale
        if rng.random() < c.stretch_prob:
            sx *= 2.0 ** rng.uniform(-c.max_log2_stretch, c.max_log2_stretch)
            sy *= 2.0 ** rng.uniform(-c.max_log2_stretch, c.max_log2_stretch)
        # Never smaller than the crop (a small image is scaled up to fit it).
        sx, sy = max(sx, cw / w), max(sy, ch / h)
        new_w, new_h = max(cw, int(round(w * sx))), max(ch, int(round(h * sy)))
        sample = resize_sample(sample, new_w, new_h)
        y0 = int(rng.integers(0, new_h - ch + 1))
        x0 = int(rng.integers(0, new_w - cw + 1))
        sample = crop_sample(sample, x0, y0, cw, ch)
        if rng.random() < c.vflip_prob:
            sample = StereoSample(sample.left[::-1].copy(), sample.right[::-1].copy(), sample.disparity[::-1].copy(),
                                  sample.valid[::-1].copy(), sample.name)
        return sample

    def _deviate(self, p: PhotometricParams, rng: np.random.Generator) -> PhotometricParams:
        c = self.config
        k = c.asymmetric_strength

        def dev(v: float, lo: float, hi: float) -> float:
            return float(np.clip(v + k * (hi - lo) / 2 * rng.uniform(-1, 1), lo, hi))

        return PhotometricParams(brightness=dev(p.brightness, 1 - c.brightness, 1 + c.brightness),
                                 contrast=dev(p.contrast, 1 - c.contrast, 1 + c.contrast),
                                 saturation=dev(p.saturation, *c.saturation), hue=dev(p.hue, -c.hue, c.hue),
                                 gamma=dev(p.gamma, *c.gamma))

    def photometric(self, sample: StereoSample, rng: np.random.Generator) -> StereoSample:
        c = self.config
        p_left = self._photometric(rng)
        p_right = self._deviate(p_left, rng) if rng.random() < c.asymmetric_prob else p_left
        left, right = apply_photometric(sample.left, p_left), apply_photometric(sample.right, p_right)
        if rng.random() < c.grayscale_prob:
            left, right = (np.repeat(np.round(im.astype(np.float32) @ _GREY_WEIGHTS).astype(np.uint8)[:, :, None],
                                     3, axis=2) for im in (left, right))
        if rng.random() < c.eraser_prob:
            right = right.copy()
            h, w = right.shape[:2]
            fill = right.reshape(-1, 3).mean(axis=0).astype(np.uint8)
            for _ in range(int(rng.integers(1, 3))):
                ph = max(1, int(h * rng.uniform(*c.eraser_size)))
                pw = max(1, int(w * rng.uniform(*c.eraser_size)))
                y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
                right[y:y + ph, x:x + pw] = fill
        return StereoSample(left, right, sample.disparity, sample.valid, sample.name)

    def __call__(self, sample: StereoSample, rng: np.random.Generator) -> StereoSample:
        return self.photometric(self.spatial(sample, rng), rng)
