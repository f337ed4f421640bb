"""Running the network on stereo samples: one pair's disparity and a dataset's mean metrics.

Used by the trainer's validation and by self-curation.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from .data import StereoDataset
from .metrics import disparity_errors, mean_metrics


@torch.no_grad()
def predict(model: torch.nn.Module, left: np.ndarray, right: np.ndarray, iters: int, precision: str = "fp32",
            hierarchical: bool = False) -> np.ndarray:
    """(H, W) float32 disparity for uint8 RGB images of any size (padded inside ``infer``)."""
    device = next(model.parameters()).device

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float().to(device)

    out = model.infer(t(left), t(right), iters=iters, hierarchical=hierarchical, precision=precision)
    return out[0, 0].float().cpu().numpy()


def evaluate(model: torch.nn.Module, dataset: StereoDataset, iters: int, precision: str = "fp32",
             max_samples: Optional[int] = None) -> Dict[str, float]:
    """Mean per-sample metrics of ``model`` on ``dataset`` at full resolution. Leaves the
    model in eval mode; the caller restores training mode."""
    model.eval()
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    rows = []
    for i in range(n):
        s = dataset[i]
        rows.append(disparity_errors(predict(model, s.left, s.right, iters, precision), s.disparity, s.valid))
    return mean_metrics(rows)
