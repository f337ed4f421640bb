"""Loading the published FoundationStereo checkpoints.

A published checkpoint is ``model_best_bp2.pth`` (a ``torch.save`` dict whose ``'model'``
entry is the state dict, plus ``global_step``/``epoch``) with ``cfg.yaml`` beside it. Module
names in this package match the published keys, so loading is strict and needs no renaming;
every problem is reported as one :class:`CheckpointError` that names the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, Tuple, Union

import torch
import yaml

from .config import FoundationStereoConfig
from .foundation_stereo import FoundationStereo

CHECKPOINT_NAME = "model_best_bp2.pth"
CONFIG_NAME = "cfg.yaml"
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file and the offending keys named."""


def resolve_checkpoint(path: PathLike) -> Tuple[Path, Path]:
    """(weights file, cfg.yaml) for a path to the ``.pth`` file or to its folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        candidates = [p / CHECKPOINT_NAME] + sorted(p.glob("*.pth"))
        weights = next((c for c in candidates if c.is_file()), None)
        if weights is None:
            raise CheckpointError(f"{p}: no {CHECKPOINT_NAME} (or other .pth file) in this folder")
    elif p.is_file():
        weights = p
    else:
        raise CheckpointError(f"{p}: checkpoint not found")
    cfg = weights.parent / CONFIG_NAME
    if not cfg.is_file():
        raise CheckpointError(f"{weights}: {CONFIG_NAME} is missing beside it (the published checkpoints ship "
                              f"one with the architecture: vit_size, max_disp, hidden_dims, ...)")
    return weights, cfg


def read_state_dict(weights: PathLike) -> Dict[str, torch.Tensor]:
    """The ``'model'`` state dict of a published-format file (plain state dicts accepted too)."""
    try:
        blob = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt file fails in many ways (IndexError, EOFError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{weights}: cannot read the checkpoint (truncated or not a PyTorch file?): "
                              f"{first}") from None
    if isinstance(blob, Mapping) and "model" in blob and isinstance(blob["model"], Mapping):
        blob = blob["model"]
    if not isinstance(blob, Mapping) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise CheckpointError(f"{weights}: expected a dict with a 'model' state dict of tensors")
    # Checkpoints saved from DataParallel carry a 'module.' prefix.
    return {k[7:] if k.startswith("module.") else k: v for k, v in blob.items()}


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    if missing or unexpected or mis_shaped:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {show(unexpected)}")
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} keys with the wrong shape: {show(mis_shaped)}")
        raise CheckpointError(f"{source}: does not match the {getattr(model, 'cfg', None) and model.cfg.vit_size} "
                              f"FoundationStereo architecture in its cfg.yaml; " + "; ".join(parts))


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> FoundationStereo:
    """Build the network described by ``cfg.yaml`` and load the weights strictly, in eval mode."""
    weights, cfg_path = resolve_checkpoint(path)
    try:
        cfg = FoundationStereoConfig.from_yaml(cfg_path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    state = read_state_dict(weights)
    model = FoundationStereo(cfg)
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)


def save_checkpoint(model: FoundationStereo, folder: PathLike, global_step: int = 0, epoch: int = 0) -> Path:
    """Write ``model_best_bp2.pth`` and ``cfg.yaml`` in the published format."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_NAME
    torch.save({"model": model.state_dict(), "global_step": global_step, "epoch": epoch}, path)
    with open(folder / CONFIG_NAME, "w") as f:
        yaml.safe_dump(model.cfg.to_mapping(), f)
    return path
