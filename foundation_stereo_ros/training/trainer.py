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

Under torchrun (:mod:`.distributed`) every process runs this trainer on its shard of the data,
with the model wrapped in ``DistributedDataParallel``: the frozen monocular branch has no
gradients, so DDP neither registers nor reduces it. One optimizer step takes ``accumulate``
batches of ``batch_size`` samples on each process; the loss is averaged over the valid pixels of
the whole global batch. Only rank 0 logs, validates and writes files; ``state.pt`` also holds
every rank's RNG state and the sampler's position.

Known difference from the reference: its GRU loop detaches the disparity at the start of each
iteration (RAFT-style), so each iteration's loss trains only that iteration's update; this
package's ``FoundationStereo.forward`` does not, so gradients also flow back through earlier
iterations' updates and lookups.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml

from ..model import save_checkpoint
from ..vocabulary import PRECISIONS
from .augment import AugmentConfig, StereoAugmentor
from .batches import AugmentedDataset, ShardedBatches, collate
from .data import StereoDataset
from .distributed import SINGLE, DistributedContext, all_sum, gather_objects
from .inference import evaluate
from .logs import TRAIN_FIELDS, VAL_FIELDS, CsvLog
from .loss import loss_mask, sequence_loss

MONOCULAR_BRANCH = "feature.dino"
STATE_NAME = "state.pt"
STATE_FORMAT = 1  # format 1 states without "rank_rng" or "sampler" (single-process runs) still resume
#: Training precisions: "auto" (bf16 where the GPU has it, else fp16 with loss scaling) or a network precision.
TRAINING_PRECISIONS = ("auto",) + PRECISIONS


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses; the last good state is on disk."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. The defaults are conservative fine-tuning values (small learning
    rate, short warm-up); the paper's pre-training used far larger batches and more steps."""

    steps: int = 10000
    batch_size: int = 2  # per process; the global batch is batch_size x processes x accumulate
    accumulate: int = 1  # batches whose gradients add up before one optimizer step
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
        for name in ("steps", "batch_size", "accumulate", "train_iters", "valid_iters", "val_every", "save_every",
                     "log_every", "max_bad_steps"):
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


# ------------------------------------------------------------------------- the trainer

class FineTuner:
    """Trains ``model`` on ``train_set`` (validating on ``val_set``) into ``output_dir``."""

    def __init__(self, model: torch.nn.Module, train_set: StereoDataset, val_set: Optional[StereoDataset],
                 config: TrainConfig, output_dir: Union[str, os.PathLike],
                 augment: AugmentConfig = AugmentConfig(),
                 log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
                 run_info: Optional[Dict[str, object]] = None, distributed: DistributedContext = SINGLE):
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        self.model, self.train_set, self.val_set, self.config = model, train_set, val_set, config
        self.output_dir = Path(output_dir)
        self.dist = distributed
        self.log = log if distributed.is_main else (lambda _msg: None)
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(config.precision, self.device)
        self.augment = augment
        self.max_disp = float(model.cfg.max_disp)
        trainable = set(freeze_modules(model, config.freeze))
        self.params = [p for n, p in model.named_parameters() if n in trainable]
        # The network the steps run: DDP averages the gradients of what requires them (never the
        # frozen monocular branch); validation and checkpoints use the bare model.
        self.net: torch.nn.Module = model
        if distributed.world_size > 1:
            # find_unused_parameters: the published architecture has trainable modules that a forward
            # pass does not reach (e.g. cnet.down, context_zqr_convs); DDP must not wait for them
            self.net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None, find_unused_parameters=True)
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
                 f"{self.device}" + (f"; {distributed.world_size} processes" if distributed.world_size > 1 else "")
                 + f"; global batch {config.batch_size * distributed.world_size * config.accumulate}")

    # -------------------------------------------------------------- state
    @property
    def state_path(self) -> Path:
        return self.output_dir / STATE_NAME

    def _rng_state(self) -> Dict[str, torch.Tensor]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def save_state(self, gather: bool = True) -> None:
        """Write state.pt and last/ (rank 0). Under torchrun every rank calls it (it gathers their
        RNG states) unless ``gather`` is False, as after an interrupt, when rank 0 saves alone."""
        ranks = gather_objects(self._rng_state(), self.dist) if gather else [self._rng_state()]
        if not self.dist.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        epoch, batch = self._sampler_position(self.step)
        state = {"format": STATE_FORMAT, "step": self.step, "best_epe": self.best_epe,
                 "skipped_steps": self.skipped_steps,
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "config": dataclasses.asdict(self.config), "train_size": len(self.train_set),
                 "torch_rng": torch.get_rng_state(), "rank_rng": ranks,
                 "sampler": {"epoch": epoch, "batch": batch, "world_size": self.dist.world_size,
                             "per_step": self.config.batch_size * self.config.accumulate}}
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
        ranks = state.get("rank_rng") or [{"torch": state["torch_rng"], **(
            {"cuda": state["cuda_rng"]} if "cuda_rng" in state else {})}]
        if self.dist.rank < len(ranks):
            torch.set_rng_state(ranks[self.dist.rank]["torch"].cpu())
            if "cuda" in ranks[self.dist.rank] and self.device.type == "cuda":
                torch.cuda.set_rng_state(ranks[self.dist.rank]["cuda"].cpu(), self.device)
        else:
            self.log(f"note: {path} holds the RNG states of {len(ranks)} processes, not {self.dist.world_size}")
        sampler = state.get("sampler", {})
        if sampler and (sampler.get("world_size"), sampler.get("per_step")) != (
                self.dist.world_size, self.config.batch_size * self.config.accumulate):
            self.log(f"note: the run had {sampler.get('world_size')} processes x {sampler.get('per_step')} samples "
                     f"per step, now {self.dist.world_size} x {self.config.batch_size * self.config.accumulate}: the "
                     f"batches after step {self.step} differ from the interrupted run")
        if state.get("train_size") != len(self.train_set):
            self.log(f"note: the training set had {state.get('train_size')} samples, now {len(self.train_set)}: "
                     f"the batches after step {self.step} differ from the interrupted run")
        self.log(f"resumed from {path} at step {self.step}")

    def _sampler(self, start: int = 0) -> ShardedBatches:
        return ShardedBatches(len(self.train_set), self.config.batch_size * self.config.accumulate, self.config.seed,
                              start, self.config.steps, self.dist)

    def _sampler_position(self, step: int) -> Tuple[int, int]:
        """(epoch, batch within the epoch) of the next step."""
        return self._sampler().position(step)

    @property
    def steps_per_epoch(self) -> int:
        return self._sampler().per_epoch

    @property
    def epoch(self) -> int:
        """The epoch of the last batch trained on (0 before any step)."""
        return max(0, self.step - 1) // self.steps_per_epoch

    # -------------------------------------------------------------- steps
    def train_step(self, batch: Dict[str, object]) -> Dict[str, float]:
        """One optimizer step on this process's share of the global batch, in ``accumulate``
        parts of ``batch_size``; every term is a mean over the global batch's valid pixels."""
        cfg = self.config
        parts = [{k: v.to(self.device) for k, v in part.items() if k != "name"}
                 for part in _split(batch, cfg.batch_size)]
        local = sum(float(loss_mask(p["disparity"], p["valid"], self.max_disp).sum()) for p in parts)
        pixels = all_sum([local], self.dist, self.device)[0]
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(4, dtype=torch.float64)
        for i, p in enumerate(parts):
            # DDP reduces the gradients once, in the backward pass of the last part
            sync = i == len(parts) - 1 or not isinstance(self.net, torch.nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.net.no_sync():
                out = self.net(p["left"], p["right"], iters=cfg.train_iters, all_iterations=True,
                               precision=self.precision)
                terms = sequence_loss(out.init_disparity, out.iterations, p["disparity"], p["valid"], cfg.gamma,
                                      self.max_disp, pixels=max(pixels, 1.0))
                # DDP averages the processes' gradients; their losses are shares of one mean, so sum them
                self.scaler.scale(terms.total * self.dist.world_size).backward()
            sums += torch.tensor([float(terms.total.detach()), float(terms.init), float(terms.sequence),
                                  float(terms.final_epe)], dtype=torch.float64)
        loss, init, seq, epe = all_sum(sums.tolist(), self.dist, self.device)
        row: Dict[str, float] = {"loss": loss, "loss_init": init, "loss_sequence": seq, "train_epe": epe,
                                 "valid_pixels": pixels, "grad_norm": float("nan")}
        if not math.isfinite(row["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            return row  # skipped on every process alike: the caller counts it
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
        main = self.dist.is_main
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        # Randomness drawn per process (not the augmentation: that is seeded per sample) differs per rank.
        torch.manual_seed(cfg.seed + self.dist.rank)
        if resume:
            self.load_state()
        elif self.state_path.exists():
            raise ValueError(f"{self.output_dir} already holds a run ({STATE_NAME}); resume it or choose a new folder")
        if main:
            self._write_run_info()
            self.train_log = CsvLog(self.output_dir / "train_log.csv", TRAIN_FIELDS, self.step if resume else None)
            self.val_log = CsvLog(self.output_dir / "val_log.csv", VAL_FIELDS, self.step if resume else None)
        data = AugmentedDataset(self.train_set, StereoAugmentor(self.augment), cfg.seed)
        sampler = self._sampler(self.step)
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
                if main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    now = time.perf_counter()
                    self.train_log.append({"step": self.step, "epoch": self.epoch, "lr": lr, **row,
                                           "skipped_steps": self.skipped_steps,
                                           "sec_per_step": (now - t_last) / steps_since_log})
                    self.log(f"step {self.step}/{cfg.steps} loss {row['loss']:.4g} (init {row['loss_init']:.3g}, "
                             f"seq {row['loss_sequence']:.3g}) train EPE {row['train_epe']:.3g} lr {lr:.3g} "
                             f"{(now - t_last) / steps_since_log:.2f} s/step")
                    t_last, steps_since_log = now, 0
                if main and self.step % cfg.val_every == 0 and self.step < cfg.steps:
                    self.validate()  # the other processes wait for it in the next step
                if self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save_state()
        except KeyboardInterrupt:
            self.log(f"interrupted at step {self.step}: saving the state; continue with --resume")
            self.save_state(gather=self.dist.world_size == 1)  # other processes may be gone
            raise
        metrics = self.validate() if main else None
        self.save_state()
        self.log(f"done: {self.output_dir / 'last'}" + (f", best EPE {self.best_epe:.4g} px in "
                                                          f"{self.output_dir / 'best'}" if metrics else ""))
        return {"step": self.step, "last_train": last, "validation": metrics,
                "last_checkpoint": self.output_dir / "last", "best_checkpoint": self.output_dir / "best"}


def _split(batch: Dict[str, object], size: int) -> List[Dict[str, object]]:
    """A collated batch in parts of ``size`` samples (the last possibly smaller)."""
    n = len(batch["name"])
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]
