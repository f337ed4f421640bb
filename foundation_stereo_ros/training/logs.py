"""The fine-tuning run's CSV logs (train_log.csv, val_log.csv)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Optional, Sequence

from .metrics import BAD_THRESHOLDS, bad_key


class CsvLog:
    """Append-only CSV with a fixed header; on resume, rows after the resumed step are dropped
    (they belong to work that was not checkpointed)."""

    def __init__(self, path: Path, fields: Sequence[str], resume_step: Optional[int] = None):
        self.path, self.fields = path, list(fields)
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
            self._write(rows, "w")
        else:
            self._write([], "w")

    def _write(self, rows: Sequence[Dict[str, object]], mode: str) -> None:
        with open(self.path, mode, newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if mode == "w":
                w.writeheader()
            w.writerows(rows)

    def append(self, row: Dict[str, object]) -> None:
        self._write([{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}], "a")


TRAIN_FIELDS = ("step", "epoch", "lr", "loss", "loss_init", "loss_sequence", "train_epe", "grad_norm",
                "valid_pixels", "skipped_steps", "sec_per_step")
VAL_FIELDS = ("step", "epoch", "epe", *(bad_key(t) for t in BAD_THRESHOLDS), "d1", "samples")
