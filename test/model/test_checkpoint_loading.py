"""Loading published-format checkpoints: accepted forms and one clear error for each problem."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from foundation_stereo_ros.model import CheckpointError, FoundationStereo, load_model, save_checkpoint


@pytest.fixture(scope="module")
def state(vits_checkpoint):
    return torch.load(vits_checkpoint, map_location="cpu", weights_only=True)["model"]


def _write(folder, state_dict, cfg_src, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state_dict, "global_step": 1, "epoch": 1, **extra}, folder / "model_best_bp2.pth")
    shutil.copy(cfg_src, folder / "cfg.yaml")
    return folder / "model_best_bp2.pth"


def test_loads_file_or_folder(vits_checkpoint):
    by_file = load_model(vits_checkpoint)
    by_folder = load_model(vits_checkpoint.parent)
    assert isinstance(by_file, FoundationStereo) and not by_file.training
    a, b = by_file.state_dict(), by_folder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weights_are_the_files_weights(vits_checkpoint, state):
    model = load_model(vits_checkpoint)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state if ".norm3." not in k)


def test_data_parallel_prefix_is_accepted(tmp_path, vits_checkpoint, state):
    path = _write(tmp_path / "dp", {f"module.{k}": v for k, v in state.items()}, vits_checkpoint.parent / "cfg.yaml")
    assert isinstance(load_model(path), FoundationStereo)


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="no model_best_bp2.pth"):
        load_model(tmp_path)


def test_missing_cfg(tmp_path, vits_checkpoint):
    shutil.copy(vits_checkpoint, tmp_path / "model_best_bp2.pth")
    with pytest.raises(CheckpointError, match=r"cfg\.yaml is missing") as e:
        load_model(tmp_path)
    assert str(tmp_path / "model_best_bp2.pth") in str(e.value)


def test_truncated_file(tmp_path, vits_checkpoint):
    folder = tmp_path / "t"
    folder.mkdir()
    data = vits_checkpoint.read_bytes()
    (folder / "model_best_bp2.pth").write_bytes(data[: len(data) // 3])
    shutil.copy(vits_checkpoint.parent / "cfg.yaml", folder / "cfg.yaml")
    with pytest.raises(CheckpointError, match="cannot read the checkpoint") as e:
        load_model(folder)
    assert "model_best_bp2.pth" in str(e.value)


def test_not_a_checkpoint(tmp_path, vits_checkpoint):
    (tmp_path / "model_best_bp2.pth").write_text("this is not a checkpoint\n")
    shutil.copy(vits_checkpoint.parent / "cfg.yaml", tmp_path / "cfg.yaml")
    with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
        load_model(tmp_path)


def test_missing_key_is_named(tmp_path, vits_checkpoint, state):
    broken = dict(state)
    del broken["update_block.mask.0.weight"]
    path = _write(tmp_path / "m", broken, vits_checkpoint.parent / "cfg.yaml")
    with pytest.raises(CheckpointError, match=r"1 missing keys: update_block\.mask\.0\.weight") as e:
        load_model(path)
    assert str(path) in str(e.value)


def test_unexpected_key_is_named(tmp_path, vits_checkpoint, state):
    broken = dict(state, **{"extra.head.weight": torch.zeros(3)})
    path = _write(tmp_path / "u", broken, vits_checkpoint.parent / "cfg.yaml")
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: extra\.head\.weight"):
        load_model(path)


def test_mis_shaped_key_is_named(tmp_path, vits_checkpoint, state):
    broken = dict(state, **{"proj_cmb.weight": torch.zeros(12, 64, 1, 1)})
    path = _write(tmp_path / "s", broken, vits_checkpoint.parent / "cfg.yaml")
    with pytest.raises(CheckpointError, match=r"wrong shape: proj_cmb\.weight \(12, 64, 1, 1\) != \(12, 128, 1, 1\)"):
        load_model(path)


def test_wrong_architecture_in_cfg(tmp_path, vits_checkpoint, state):
    path = _write(tmp_path / "w", state, vits_checkpoint.parent / "cfg.yaml")
    cfg = yaml.safe_load((path.parent / "cfg.yaml").read_text())
    (path.parent / "cfg.yaml").write_text(yaml.safe_dump(dict(cfg, vit_size="vitl")))
    with pytest.raises(CheckpointError, match="vitl FoundationStereo architecture") as e:
        load_model(path)
    assert "missing keys" in str(e.value) and "wrong shape" in str(e.value)


def test_bad_cfg_values(tmp_path, vits_checkpoint, state):
    path = _write(tmp_path / "c", state, vits_checkpoint.parent / "cfg.yaml")
    (path.parent / "cfg.yaml").write_text(yaml.safe_dump({"vit_size": "vits", "max_disp": 100}))
    with pytest.raises(CheckpointError, match="max_disp must be a positive multiple of 32"):
        load_model(path)
    (path.parent / "cfg.yaml").write_text(":\n  - [unclosed")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        load_model(path)


def test_other_max_disp_loads_same_weights(tmp_path, vits_checkpoint, state):
    path = _write(tmp_path / "d", state, vits_checkpoint.parent / "cfg.yaml")
    cfg = yaml.safe_load((path.parent / "cfg.yaml").read_text())
    (path.parent / "cfg.yaml").write_text(yaml.safe_dump(dict(cfg, max_disp=192)))
    assert load_model(path).cfg.max_disp == 192


def test_save_checkpoint_round_trip(tmp_path, vits_checkpoint):
    model = load_model(vits_checkpoint)
    path = save_checkpoint(model, tmp_path / "saved", global_step=7, epoch=2)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["global_step"] == 7 and blob["epoch"] == 2
    again = load_model(path)
    assert again.cfg == model.cfg
    a, b = model.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ one copy of the weights
def test_network_is_built_without_parameter_storage(monkeypatch, vits_checkpoint):
    """The network is built with its parameters on the meta device (no second copy of the
    weights, no initialisation work); the loaded model has real parameters, and the
    non-persistent buffers (not in the file) their computed values."""
    from foundation_stereo_ros.model import checkpoint
    from foundation_stereo_ros.model.aggregation import sinusoidal_positions

    built = []
    real_class = checkpoint.FoundationStereo

    def spy(cfg):
        model = real_class(cfg)
        built.append({p.device.type for p in model.parameters()})
        return model

    monkeypatch.setattr(checkpoint, "FoundationStereo", spy)
    model = load_model(vits_checkpoint)
    assert built == [{"meta"}]
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())
    assert torch.equal(model.rgb_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    positions = dict(model.named_buffers())["cost_agg.atts.4.positions"]
    assert torch.equal(positions, sinusoidal_positions(*positions.shape))
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # the patch ends with the build


def test_parameters_keep_their_dtype_and_grad_flag(tmp_path, vits_checkpoint, state):
    """An fp16 file loads into the fp32 network (as load_state_dict's copy did); integer buffers
    stay integers; each parameter requires grad as in a network built the plain way (fine-tuning
    trains some parts and freezes the ViT)."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    model = load_model(_write(tmp_path / "h", half, vits_checkpoint.parent / "cfg.yaml"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    plain = FoundationStereo(model.cfg)
    assert ({n: p.requires_grad for n, p in model.named_parameters()}
            == {n: p.requires_grad for n, p in plain.named_parameters()})
    tracked = [b for n, b in model.named_buffers() if n.endswith("num_batches_tracked")]
    assert tracked and all(b.dtype == torch.int64 for b in tracked)
    k = "proj_cmb.weight"
    assert torch.equal(model.state_dict()[k], state[k].half().float())


def test_the_legacy_file_format_still_loads(tmp_path, vits_checkpoint, state):
    """Files from before PyTorch 1.6 cannot be memory-mapped; they are read instead."""
    folder = tmp_path / "legacy"
    folder.mkdir()
    torch.save({"model": state}, folder / "model_best_bp2.pth", _use_new_zipfile_serialization=False)
    shutil.copy(vits_checkpoint.parent / "cfg.yaml", folder / "cfg.yaml")
    loaded = load_model(folder).state_dict()
    assert torch.equal(loaded["proj_cmb.weight"], state["proj_cmb.weight"])
