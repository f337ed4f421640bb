"""The network reproduces the published ViT-S forward pass (../shared/parity fixture)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import parity_dir
from foundation_stereo_ros.model import load_model

# Agreement the fixture's README asks for, fp32 on the CPU.
MAX_TOL, MEAN_TOL = 1e-2, 1e-3


@pytest.fixture(scope="module")
def fixture():
    return np.load(parity_dir() / "fixture_vits_96x128_iters4.npz")


@pytest.fixture(scope="module")
def model(vits_checkpoint):
    torch.set_num_threads(2)
    return load_model(vits_checkpoint)


def test_fixture_configuration_is_what_the_checkpoint_builds(fixture, model):
    meta = json.loads(str(fixture["meta_json"]))
    cfg = model.cfg
    assert (meta["vit_size"], meta["max_disp"], meta["hidden_dims"], meta["n_gru_layers"]) == \
        (cfg.vit_size, cfg.max_disp, list(cfg.hidden_dims), cfg.n_gru_layers)
    assert (meta["corr_radius"], meta["corr_levels"], meta["n_downsample"]) == \
        (cfg.corr_radius, cfg.corr_levels, cfg.n_downsample)


def test_python_api_reproduces_every_stage(fixture, model):
    left, right = torch.from_numpy(fixture["left"]), torch.from_numpy(fixture["right"])
    with torch.no_grad():
        mono = model.feature.dino.vit_resolution_features(model.normalize(left))
        np.testing.assert_allclose(mono.numpy(), fixture["dino_out_left"], atol=1e-3)
        features, _ = model.feature(torch.cat([model.normalize(left), model.normalize(right)]))
        for f, key in zip(features, ["feature4_left", "feature8_left", "feature16_left", "feature32_left"]):
            np.testing.assert_allclose(f[:1].numpy(), fixture[key], atol=1e-3, err_msg=key)
        out = model(left, right, iters=4, all_iterations=True)
    np.testing.assert_allclose(out.init_disparity.numpy(), fixture["init_disp_quarter"], atol=1e-3)
    for i, step in enumerate(out.iterations):
        np.testing.assert_allclose(step.numpy(), fixture["disp_per_iter_padded"][i], atol=MAX_TOL,
                                   err_msg=f"iteration {i}")
    diff = np.abs(out.disparity.numpy() - fixture["disparity"])
    assert diff.max() <= MAX_TOL and diff.mean() <= MEAN_TOL, (diff.max(), diff.mean())


def test_infer_matches_fixture(fixture, model):
    disp = model.infer(torch.from_numpy(fixture["left"]), torch.from_numpy(fixture["right"]), iters=4)
    diff = np.abs(disp.numpy() - fixture["disparity"])
    assert diff.max() <= MAX_TOL and diff.mean() <= MEAN_TOL


def _save_png(path: Path, chw: np.ndarray) -> None:
    import cv2

    rgb = chw[0].transpose(1, 2, 0)
    assert np.array_equal(rgb, np.round(rgb)), "fixture images hold whole 0..255 values"
    cv2.imwrite(str(path), rgb.astype(np.uint8)[:, :, ::-1])


@pytest.mark.slow
def test_cli_reproduces_fixture(fixture, vits_checkpoint, tmp_path):
    """The installed console script, end to end, from PNG files to disparity.npy."""
    _save_png(tmp_path / "left.png", fixture["left"])
    _save_png(tmp_path / "right.png", fixture["right"])
    exe = Path(sys.executable).with_name("foundation-stereo-infer")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "foundation_stereo_ros.tools.infer"]
    proc = subprocess.run(cmd + [str(tmp_path / "left.png"), str(tmp_path / "right.png"),
                                 "--checkpoint", str(vits_checkpoint.parent), "--iters", "4",
                                 "--out-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "inference" in proc.stderr  # a timing line per stage
    disp = np.load(tmp_path / "out" / "disparity.npy")
    assert disp.dtype == np.float32 and disp.shape == (96, 128)
    diff = np.abs(disp - fixture["disparity"][0, 0])
    assert diff.max() <= MAX_TOL and diff.mean() <= MEAN_TOL
