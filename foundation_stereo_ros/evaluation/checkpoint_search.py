"""Where the tools look for a FoundationStereo checkpoint when none is named.

Order: ``$FOUNDATION_STEREO_CHECKPOINT`` (a .pth file or its folder), then the cache folder
``~/.cache/foundation_stereo/<variant>/model_best_bp2.pth`` for the published variants
``23-51-11`` (ViT-L, the most accurate) and ``11-33-40`` (ViT-S, faster), in that order.
``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

ENV_VAR = "FOUNDATION_STEREO_CHECKPOINT"
VARIANTS = ("23-51-11", "11-33-40")
CHECKPOINT_FILE = "model_best_bp2.pth"
HOW_TO_GET = (
    "Download a published checkpoint (ViT-L '23-51-11' or ViT-S '11-33-40', each a folder with "
    "model_best_bp2.pth and cfg.yaml) from the links in the README of "
    "https://github.com/NVlabs/FoundationStereo (NVIDIA's licence: non-commercial use only), then put the "
    "folder at ~/.cache/foundation_stereo/<23-51-11|11-33-40>/ or set FOUNDATION_STEREO_CHECKPOINT to "
    "the .pth file.")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "foundation_stereo"


def candidates() -> List[Path]:
    """Every place looked at, in order (for messages)."""
    out: List[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        out.append(Path(env).expanduser())
    out += [cache_dir() / v / CHECKPOINT_FILE for v in VARIANTS]
    return out


def find_checkpoint() -> Optional[Path]:
    """The first existing checkpoint file (a folder resolves to its model_best_bp2.pth), or None.
    A set but missing ``$FOUNDATION_STEREO_CHECKPOINT`` raises ValueError rather than silently
    falling back to another model."""
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            p = p / CHECKPOINT_FILE
        if not p.is_file():
            raise ValueError(f"{ENV_VAR}={env} but {p} does not exist")
        return p
    for p in candidates():
        if p.is_file():
            return p
    return None
