"""Fine-tuning a published FoundationStereo checkpoint on your own data (side-tuning, Sec. 3.1).

The DepthAnything V2 branch (``model.feature.dino``) stays frozen: no gradients, not in the
optimizer, always in eval mode. Everything else trains unless named in ``freeze``. BatchNorm
statistics are frozen by default (``freeze_batchnorm``): fine-tuning batches of 1-4 crops
would otherwise overwrite the running statistics learnt from large batches.

A run lives in one output folder::

    state.pt            everything needed to resume (weights, optimizer, schedule, step, RNG)
    last/, best/        published-format checkpoints (model_best_bp2.pth + cfg.yaml) of the
                        latest step and of the best validation EPE; the node and the CLI load them
    train_log.csv       step, epoch, lr, loss terms, training EPE, gradient norm, s/step
    val_log.csv         step, epoch and the validation metrics (EPE, bad-1/2/3, D1)
    run.yaml            the configuration and data sources of the run

Data order and augmentation are functions of (seed, epoch, sample index) (:mod:`.batches`), so a
resumed run sees the same batches as an uninterrupted one.

Known difference from the reference: its GRU loop detaches the disparity at the start of each
iteration (RAFT-style), so each iteration's loss trains only that iteration's update; this
package's ``FoundationStereo.forward`` does not, so gradients also flow back through earlier
iterations' updates and lookups.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import yaml

from ..model import save_checkpoint
from ..vocabulary import PRECISIONS
from .augment import AugmentConfig, StereoAugmentor
from .batches import AugmentedDataset, EpochBatches, collate
from .data import StereoDataset
from .loss import sequence_loss
from .metrics import BAD_THRESHOLDS, bad_key, disparity_errors, mean_metrics

MONOCULAR_BRANCH = "feature.dino"
STATE_NAME = "state.pt"
STATE_FORMAT = 1
#: Training precisions: "auto" (bf16 where the GPU has it, else fp16 with loss scaling) or a network precision.
TRAINING_PRECISIONS = ("auto",) + PRECISIONS


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses; the last good state is on disk."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. The defaults are conservative fine-tuning values (small learning
    rate, short warm-up); the paper's pre-training used far larger batches and more steps."""

    steps: int = 10000
    batch_size: int = 2
    lr: float = 2e-5  # peak learning rate (AdamW)
    weight_decay: float = 1e-5
    warmup_fraction: float = 0.05  # linear warm-up over this share of the steps, then linear decay
    final_lr_fraction: float = 0.05  # learning rate at the last step, relative to the peak
    grad_clip: float = 1.0  # max global gradient norm (0 = no clipping)
    train_iters: int = 22  # GRU iterations in training
    valid_iters: int = 32  # GRU iterations for validation (the inference default)
    gamma: float = 0.9  # sequence-loss decay
    precision: str = "auto"  # auto: bf16 (fp16 where bf16 is missing) on CUDA, fp32 on the CPU
    freeze: Tuple[str, ...] = ()  # extra module prefixes to freeze, e.g. ("feature",)
    freeze_batchnorm: bool = True
    val_every: int = 1000
    save_every: int = 1000
    log_every: int = 50
    max_val_samples: Optional[int] = None
    seed: int = 0
    num_workers: int = 2
    max_bad_steps: int = 20  # consecutive non-finite losses before giving up

    def __post_init__(self) -> None:
        object.__setattr__(self, "freeze", tuple(self.freeze))
        for name in ("steps", "batch_size", "train_iters", "valid_iters", "val_every", "save_every", "log_every",
                     "max_bad_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.num_workers < 0:
            raise ValueError("weight_decay, grad_clip and num_workers must be >= 0")
        if not 0 <= self.warmup_fraction < 1 or not 0 < self.final_lr_fraction <= 1:
            raise ValueError(f"warmup_fraction must be in [0, 1) and final_lr_fraction in (0, 1], got "
                             f"{self.warmup_fraction} and {self.final_lr_fraction}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.precision not in TRAINING_PRECISIONS:
            raise ValueError(f"precision must be one of {TRAINING_PRECISIONS}, got {self.precision!r}")
        if self.max_val_samples is not None and self.max_val_samples < 1:
            raise ValueError(f"max_val_samples must be >= 1, got {self.max_val_samples}")


# ------------------------------------------------------------------------- model preparation

def resolve_precision(precision: str, device: torch.device) -> str:
    """The autocast precision to train with; mixed precision exists only on CUDA."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device; use fp32 (or auto) on {device.type}")
    return precision


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def freeze_modules(model: torch.nn.Module, freeze: Sequence[str] = ()) -> List[str]:
    """Freeze the monocular branch and the modules under ``freeze`` prefixes; return the names
    of the parameters that still train. Unknown prefixes raise ValueError."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in freeze:
        if not any(_matches(n, prefix) for n in names):
            top = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"--freeze {prefix!r} matches no parameter; top-level modules: {', '.join(top)}")
    prefixes = (MONOCULAR_BRANCH, *freeze)
    trainable = []
    for n, p in model.named_parameters():
        frozen = any(_matches(n, pre) for pre in prefixes)
        p.requires_grad_(not frozen)
        if not frozen:
            trainable.append(n)
    if not trainable:
        raise ValueError(f"nothing left to train after freezing {list(prefixes)}")
    return trainable


def set_train_mode(model: torch.nn.Module, freeze_batchnorm: bool = True) -> None:
    """model.train(), with BatchNorm layers (optionally) and the monocular branch in eval mode."""
    model.train()
    if freeze_batchnorm:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    model.get_submodule(MONOCULAR_BRANCH).eval()


class WarmupLinearDecay:
    """LR factor: linear warm-up from ~0 to 1, then linear decay to ``final`` at ``steps``."""

    def __init__(self, steps: int, warmup_fraction: float, final: float):
        self.steps, self.final = steps, final
        self.warmup = int(round(warmup_fraction * steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(1, self.steps - self.warmup)
        return 1.0 - (1.0 - self.final) * min(1.0, (step - self.warmup) / span)


# ------------------------------------------------------------------------- evaluation

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


# ------------------------------------------------------------------------- logging

class CsvLog:
    """Append-only CSV with a fixed header; on resume, rows after the resumed step are dropped
    (they belong to work that was not checkpointed)."""

    def __init__(self, path: Path, fields: Sequence[str], resume_step: Optional[int] = None):
        self.path, self.fields = path, list(fields)
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
            self._write(rows, "w")
        elif not path.is_file() or resume_step is None:
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


# ------------------------------------------------------------------------- the trainer

class FineTuner:
    """Trains ``model`` on ``train_set`` (validating on ``val_set``) into ``output_dir``."""

    def __init__(self, model: torch.nn.Module, train_set: StereoDataset, val_set: Optional[StereoDataset],
                 config: TrainConfig, output_dir: Union[str, os.PathLike],
                 augment: AugmentConfig = AugmentConfig(),
                 log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
                 run_info: Optional[Dict[str, object]] = None):
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        self.model, self.train_set, self.val_set, self.config = model, train_set, val_set, config
        self.output_dir = Path(output_dir)
        self.log = log
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(config.precision, self.device)
        self.augment = augment
        self.max_disp = float(model.cfg.max_disp)
        trainable = set(freeze_modules(model, config.freeze))
        self.params = [p for n, p in model.named_parameters() if n in trainable]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay, eps=1e-8)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupLinearDecay(config.steps, config.warmup_fraction, config.final_lr_fraction))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.best_epe = float("inf")
        self.skipped_steps = 0
        self.run_info = run_info or {}
        n_train = sum(self.model.get_parameter(n).numel() for n in trainable)
        n_all = sum(p.numel() for p in model.parameters())
        self.log(f"training {n_train / 1e6:.1f}M of {n_all / 1e6:.1f}M parameters ({MONOCULAR_BRANCH} frozen"
                 f"{', ' + ', '.join(config.freeze) if config.freeze else ''}); precision {self.precision} on "
                 f"{self.device}")

    # -------------------------------------------------------------- state
    @property
    def state_path(self) -> Path:
        return self.output_dir / STATE_NAME

    def save_state(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        state = {"format": STATE_FORMAT, "step": self.step, "best_epe": self.best_epe,
                 "skipped_steps": self.skipped_steps,
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "config": dataclasses.asdict(self.config), "train_size": len(self.train_set),
                 "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)  # a crash while saving never leaves a half-written state
        save_checkpoint(self.model, self.output_dir / "last", global_step=self.step, epoch=self.epoch)

    def load_state(self, path: Optional[Path] = None) -> None:
        path = Path(path) if path is not None else self.state_path
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (OSError, RuntimeError, EOFError) as e:
            raise ValueError(f"{path}: cannot read the training state to resume from: {e}") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: not a training state written by this version of foundation-stereo-finetune")
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.best_epe = int(state["step"]), float(state["best_epe"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        if state.get("train_size") != len(self.train_set):
            self.log(f"note: the training set had {state.get('train_size')} samples, now {len(self.train_set)}: "
                     f"the batches after step {self.step} differ from the interrupted run")
        self.log(f"resumed from {path} at step {self.step}")

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.train_set) / self.config.batch_size))

    @property
    def epoch(self) -> int:
        """The epoch of the last batch trained on (0 before any step)."""
        return max(0, self.step - 1) // self.steps_per_epoch

    # -------------------------------------------------------------- steps
    def train_step(self, batch: Dict[str, object]) -> Dict[str, float]:
        cfg = self.config
        left, right = batch["left"].to(self.device), batch["right"].to(self.device)
        gt, valid = batch["disparity"].to(self.device), batch["valid"].to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(left, right, iters=cfg.train_iters, all_iterations=True, precision=self.precision)
        terms = sequence_loss(out.init_disparity, out.iterations, gt, valid, cfg.gamma, self.max_disp)
        row: Dict[str, float] = {"loss": float(terms.total.detach()), "loss_init": float(terms.init),
                                 "loss_sequence": float(terms.sequence), "train_epe": float(terms.final_epe),
                                 "valid_pixels": float(terms.valid_pixels), "grad_norm": float("nan")}
        if not math.isfinite(row["loss"]):
            return row  # skipped: the caller counts it
        self.scaler.scale(terms.total).backward()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        row["grad_norm"] = float(norm)
        self.scaler.step(self.optimizer)  # skips the update itself when fp16 gradients overflowed
        self.scaler.update()
        return row

    def validate(self) -> Optional[Dict[str, float]]:
        if self.val_set is None or len(self.val_set) == 0:
            return None
        t0 = time.perf_counter()
        metrics = evaluate(self.model, self.val_set, self.config.valid_iters, self.precision,
                           self.config.max_val_samples)
        set_train_mode(self.model, self.config.freeze_batchnorm)
        self.val_log.append({"step": self.step, "epoch": self.epoch, **metrics})
        epe = metrics.get("epe", float("nan"))
        self.log(f"step {self.step}: validation EPE {epe:.4g} px, bad-2 {metrics.get('bad_2', float('nan')):.3g} % "
                 f"on {int(metrics.get('samples', 0))} samples ({time.perf_counter() - t0:.1f} s)")
        if math.isfinite(epe) and epe < self.best_epe:
            self.best_epe = epe
            save_checkpoint(self.model, self.output_dir / "best", global_step=self.step, epoch=self.epoch)
        return metrics

    def _write_run_info(self) -> None:
        info = {"config": dataclasses.asdict(self.config), "augment": dataclasses.asdict(self.augment),
                "precision": self.precision, "device": str(self.device), "train_samples": len(self.train_set),
                "val_samples": len(self.val_set) if self.val_set is not None else 0, **self.run_info}
        (self.output_dir / "run.yaml").write_text(yaml.safe_dump(info, sort_keys=False))

    def run(self, resume: bool = False) -> Dict[str, object]:
        """Train to ``config.steps``; returns the final validation metrics and paths."""
        cfg = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_state()
        elif self.state_path.exists():
            raise ValueError(f"{self.output_dir} already holds a run ({STATE_NAME}); resume it or choose a new folder")
        self._write_run_info()
        self.train_log = CsvLog(self.output_dir / "train_log.csv", TRAIN_FIELDS, self.step if resume else None)
        self.val_log = CsvLog(self.output_dir / "val_log.csv", VAL_FIELDS, self.step if resume else None)
        data = AugmentedDataset(self.train_set, StereoAugmentor(self.augment), cfg.seed)
        sampler = EpochBatches(len(self.train_set), cfg.batch_size, cfg.seed, self.step, cfg.steps)
        loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=cfg.num_workers,
                                             collate_fn=collate, pin_memory=self.device.type == "cuda",
                                             persistent_workers=False)
        set_train_mode(self.model, cfg.freeze_batchnorm)
        bad_in_a_row = 0
        last: Dict[str, float] = {}
        t_last = time.perf_counter()
        steps_since_log = 0
        try:
            for batch in loader:
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                row = self.train_step(batch)
                if not math.isfinite(row["loss"]):
                    self.skipped_steps += 1
                    bad_in_a_row += 1
                    self.log(f"step {self.step}: non-finite loss, update skipped")
                    if bad_in_a_row >= cfg.max_bad_steps:
                        self.save_state()
                        raise TrainingDiverged(f"{bad_in_a_row} non-finite losses in a row at step {self.step}: lower "
                                           f"the learning rate or use --precision fp32/bf16")
                else:
                    bad_in_a_row = 0
                self.scheduler.step()
                self.step += 1
                steps_since_log += 1
                last = row
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    self.train_log.append({"step": self.step, "epoch": self.epoch, "lr": lr, **row,
                                           "skipped_steps": self.skipped_steps,
                                           "sec_per_step": (now - t_last) / steps_since_log})
                    self.log(f"step {self.step}/{cfg.steps} loss {row['loss']:.4g} (init {row['loss_init']:.3g}, "
                             f"seq {row['loss_sequence']:.3g}) train EPE {row['train_epe']:.3g} lr {lr:.3g} "
                             f"{(now - t_last) / steps_since_log:.2f} s/step")
                    t_last, steps_since_log = now, 0
                if self.step % cfg.val_every == 0 and self.step < cfg.steps:
                    self.validate()
                if self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save_state()
        except KeyboardInterrupt:
            self.log(f"interrupted at step {self.step}: saving the state; continue with --resume")
            self.save_state()
            raise
        metrics = self.validate()
        self.save_state()
        self.log(f"done: {self.output_dir / 'last'}" + (f", best EPE {self.best_epe:.4g} px in "
                                                          f"{self.output_dir / 'best'}" if metrics else ""))
        return {"step": self.step, "last_train": last, "validation": metrics,
                "last_checkpoint": self.output_dir / "last", "best_checkpoint": self.output_dir / "best"}
