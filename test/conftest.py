"""Shared test fixtures: the parity fixtures of ../shared/parity and small checkpoints built from them."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from _colcon import COLCON, colcon_build

REPO = Path(__file__).resolve().parents[1]
OPENCV_DATA = Path(os.environ.get("OPENCV_SAMPLE_DATA", "/usr/share/doc/opencv-doc/examples/data"))


def parity_dir() -> Path:
    """The published-network fixtures: $FOUNDATION_STEREO_PARITY_DIR or ../shared/parity."""
    d = Path(os.environ.get("FOUNDATION_STEREO_PARITY_DIR", REPO.parent / "shared" / "parity"))
    if not (d / "manifest_vits.tsv").is_file():
        raise RuntimeError(f"parity fixtures not found in {d}; set FOUNDATION_STEREO_PARITY_DIR")
    return d


def deterministic_weights_module():
    spec = importlib.util.spec_from_file_location("deterministic_weights", parity_dir() / "deterministic_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_deterministic_checkpoint(folder: Path, vit_size: str = "vits", **cfg) -> Path:
    """A published-format checkpoint folder (model_best_bp2.pth + cfg.yaml) with the
    deterministic weights of the parity manifests."""
    import torch

    dw = deterministic_weights_module()
    rows = dw.read_manifest(parity_dir() / f"manifest_{vit_size}.tsv")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": dw.deterministic_state_dict(rows), "global_step": 0, "epoch": 0},
               folder / "model_best_bp2.pth")
    config = dict(vit_size=vit_size, max_disp=416, hidden_dims=[128, 128, 128], n_gru_layers=3,
                  corr_radius=4, corr_levels=2, n_downsample=2, mixed_precision=False)
    config.update(cfg)
    (folder / "cfg.yaml").write_text(yaml.safe_dump(config))
    return folder / "model_best_bp2.pth"


@pytest.fixture(scope="session")
def vits_checkpoint(tmp_path_factory) -> Path:
    """Path to a ViT-S checkpoint file in the published format, deterministic weights."""
    return write_deterministic_checkpoint(tmp_path_factory.mktemp("ckpt_vits") / "11-33-40")


@pytest.fixture(scope="session")
def colcon_install(tmp_path_factory) -> Path:
    """``install/`` of a plain ``colcon build`` of a copy of this source tree, built once per session."""
    if not COLCON.is_file():
        pytest.skip(f"colcon is not installed beside the test interpreter ({COLCON}); scripts/setup_env.sh installs it")
    return colcon_build(tmp_path_factory.mktemp("colcon_install"))


@pytest.fixture(scope="session")
def opencv_data() -> Path:
    if not (OPENCV_DATA / "aloeL.jpg").is_file():
        pytest.skip(f"Debian's opencv-doc sample data is not installed ({OPENCV_DATA}); "
                    f"scripts/setup_env.sh installs it")
    return OPENCV_DATA


def pytest_collection_modifyitems(config, items) -> None:
    """Markers by place and need: every test under test/ros/ is `ros`; a `gpu` test skips with
    the reason where PyTorch sees no CUDA device."""
    ros_dir = Path(__file__).resolve().parent / "ros"
    cuda = None
    for item in items:
        if ros_dir in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.ros)
        if item.get_closest_marker("gpu") is not None:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; PyTorch sees none here "
                                                        "(./scripts/gpu_check.sh runs these on a GPU machine)"))


@pytest.fixture(scope="module")
def fp32_without_tf32():
    """fp32 parity on a GPU means fp32: PyTorch runs cuDNN convolutions in TF32 by default
    (``torch.backends.cudnn.allow_tf32``), rounding their inputs to a 10-bit mantissa. Module
    scope, so that modules using it (``pytestmark = pytest.mark.usefixtures(...)``) have TF32
    off before their own fp32 reference is made. Yields PyTorch's settings as they were."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield saved
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
