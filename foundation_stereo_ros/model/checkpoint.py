"""Loading the published FoundationStereo checkpoints.

A published checkpoint is ``model_best_bp2.pth`` (a ``torch.save`` dict whose ``'model'``
entry is the state dict, plus ``global_step``/``epoch``) with ``cfg.yaml`` beside it. Module
names in this package match the published keys, so loading is strict and needs no renaming;
every problem is reported as one :class:`CheckpointError` that names the file.

Loading never holds more than one copy of the weights where it can help it (on a Jetson the CPU
and the GPU share one memory): the file is memory-mapped, the network is built with its
parameters on the ``meta`` device (no storage, no initialisation; only the small computed
buffers are real), each tensor moves to the target device on its own, and the network takes
those tensors as its parameters (``load_state_dict(assign=True)``) instead of copying them.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Dict, Iterator, Mapping, Tuple, Union

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
    """The ``'model'`` state dict of a published-format file (plain state dicts accepted too).

    The file is memory-mapped where its format allows (every ``torch.save`` since PyTorch 1.6),
    so the tensors are read from the page cache as they are used rather than all copied first."""
    try:
        try:
            blob = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # the legacy (pre-zip) format cannot be mapped
            if "mmap" not in str(e):
                raise
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


_META_LOCK = threading.Lock()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the ``meta`` device (shape and dtype, no
    storage; their initialisation does nothing), while buffers are built as usual: the
    non-persistent ones (ImageNet statistics, position tables) are not in a checkpoint and must
    keep their computed values. Each parameter exists in real memory only between its creation
    and its registration, one at a time."""
    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param) -> None:
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    with _META_LOCK:  # the patch is process-wide: one build at a time
        torch.nn.Module.register_parameter = register_on_meta
        try:
            yield
        finally:
            torch.nn.Module.register_parameter = register


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


def _read_checkpoint(path: PathLike) -> Tuple[Path, FoundationStereoConfig, Dict[str, torch.Tensor]]:
    weights, cfg_path = resolve_checkpoint(path)
    try:
        cfg = FoundationStereoConfig.from_yaml(cfg_path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return weights, cfg, read_state_dict(weights)


def check_checkpoint(path: PathLike) -> FoundationStereoConfig:
    """The architecture of a checkpoint, after every check :func:`load_model` makes (file, cfg.yaml,
    keys and shapes), without loading its weights anywhere: the file is mapped, the network
    built on the meta device. For deciding in one thread whether a checkpoint is usable and
    loading it later in another."""
    weights, cfg, state = _read_checkpoint(path)
    with parameters_on_meta():
        model = FoundationStereo(cfg)
    check_state_dict(model, state, str(weights))
    return cfg


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> FoundationStereo:
    """Build the network described by ``cfg.yaml`` and load the weights strictly, in eval mode.

    Peak memory is about one copy of the weights on ``device`` plus one tensor in transit (and
    the mapped file in the page cache), not the file, a CPU model and its device copy at once."""
    weights, cfg, state = _read_checkpoint(path)
    device = torch.device(device)
    with parameters_on_meta():
        model = FoundationStereo(cfg)
    check_state_dict(model, state, str(weights))
    expected = model.state_dict()  # meta tensors: the dtype each entry must have
    for key in list(state):
        tensor = state.pop(key)  # the mapped (or read) copy goes as soon as the device has it
        dtype = expected[key].dtype if tensor.is_floating_point() else tensor.dtype
        state[key] = tensor.to(device=device, dtype=dtype, copy=True)  # never backed by the mapped file
    model.load_state_dict(state, strict=True, assign=True)
    del state
    return model.to(device).eval()  # the computed buffers; the parameters are there already


def save_checkpoint(model: FoundationStereo, folder: PathLike, global_step: int = 0, epoch: int = 0) -> Path:
    """Write ``model_best_bp2.pth`` and ``cfg.yaml`` in the published format."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_NAME
    torch.save({"model": model.state_dict(), "global_step": global_step, "epoch": epoch}, path)
    with open(folder / CONFIG_NAME, "w") as f:
        yaml.safe_dump(model.cfg.to_mapping(), f)
    return path
