"""Generic training loop utilities shared by Stage I and Stage II.

``fit`` runs epochs of ``train_step`` over batches with a tqdm progress bar, a cosine learning rate
with linear warm-up, validation after each epoch, a CSV log (one row per epoch), ``last.pt`` (with
optimizer state, for ``--resume``) and ``best.pt`` (lowest validation ``monitor``). A wall-clock
``time_budget_s`` ends training cleanly (validation and checkpoints written) and the learning rate
decays over whichever ends first, the steps or the budget. With ``ema_decay`` > 0 the model that is
validated, saved and left in ``model`` at the end is an exponential moving average of the trained weights
(the trained weights travel in ``last.pt`` too, for ``--resume``).

Under torchrun (``ranks`` distributed) every rank runs the same steps in lockstep: rank 0's clock decides
the learning rate and the deadline, the epoch's training scalars are averaged over the ranks, and only
rank 0 logs, shows progress and writes the CSV and the checkpoints; every rank restores ``last.pt``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from kp3d_ros.model.checkpoint import load_payload, save_checkpoint
from kp3d_ros.train.distributed import SINGLE, Ranks


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, min_ratio: float = 0.02,
              time_fraction: float = 0.0) -> float:
    """Linear warm-up to base_lr, then cosine decay to min_ratio * base_lr at the end of training: the
    later of total_steps and the wall-clock budget (time_fraction = share of it used)."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = max((step - warmup_steps) / max(1, total_steps - warmup_steps), time_fraction)
    progress = min(1.0, progress)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class CsvLog:
    """Appends dict rows to a CSV file; the header is the first row's keys (later keys must match)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields: list[str] | None = None
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open() as f:
                self.fields = next(csv.reader(f), None)

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


@dataclass
class FitConfig:
    epochs: int
    steps_per_epoch: int
    lr: float
    warmup_steps: int = 200
    out_dir: str = "runs/train"
    monitor: str = "val_loss"  # lower is better
    time_budget_s: float | None = None  # total wall-clock budget (resumed runs included); the lr decays over it
    grad_clip: float | None = 1.0
    resume: bool = False
    ema_decay: float = 0.0  # > 0: validate and save a moving average of the weights (WeightAverage)


@dataclass
class FitResult:
    epochs_done: int
    steps_done: int
    best: float
    wall_s: float
    stopped_by_deadline: bool


class WeightAverage:
    """An exponential moving average of a model's floating-point weights. The decay ramps up as
    min(decay, (1 + n) / (10 + n)) over the first updates, so early weights do not dominate."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        state = model.state_dict()
        for k, average in self.shadow.items():
            average.lerp_(state[k].detach(), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[dict]:
        """The average in `model` for the block; yields the trained weights, which are put back after."""
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield trained
        finally:
            model.load_state_dict(trained)


def _restore(path: Path, model, optimizer, average: WeightAverage | None) -> tuple[int, int, float, float]:
    payload = load_payload(path)
    trained = payload.get("trained_state_dict")
    if average is not None and trained is not None:
        average.shadow = {k: v.clone() for k, v in payload["state_dict"].items() if k in average.shadow}
        average.updates = int(payload.get("ema_updates", 0))
    model.load_state_dict(trained if trained is not None else payload["state_dict"])
    if "optimizer" in payload:
        optimizer.load_state_dict(payload["optimizer"])
    return (int(payload.get("epoch", 0)), int(payload.get("step", 0)), float(payload.get("best", math.inf)),
            float(payload.get("wall_s", 0.0)))


def _mean_over_ranks(sums: dict[str, float], ranks: Ranks) -> dict[str, float]:
    if not ranks.distributed:
        return sums
    keys = sorted(sums)
    return {k: v / ranks.world_size for k, v in zip(keys, ranks.summed([sums[k] for k in keys]), strict=True)}


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: FitConfig,
        train_batches: Callable[[int], Iterable], train_step: Callable[[object], dict[str, float]],
        validate: Callable[[], dict[str, float]], meta: dict | None = None,
        log: Callable[[str], None] = print, ranks: Ranks = SINGLE) -> FitResult:
    """Train `model`; `train_batches(epoch)` yields batches for `train_step(batch) -> {name: float}`
    (it runs forward, backward and returns scalars; fit zeroes grads, clips and steps the optimizer);
    `validate()` returns validation scalars including `config.monitor`. Distributed, `train_step` runs its
    forward passes through `ranks.wrap(model)` and every rank's `validate()` returns the same values."""
    out = Path(config.out_dir)
    last, best_path = out / "last.pt", out / "best.pt"
    log = ranks.log(log)
    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        csv_log = CsvLog(out / "log.csv")
    epoch, step, best, wall_before = 0, 0, math.inf, 0.0
    average = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    if config.resume and ranks.from_main([float(last.is_file())])[0]:
        epoch, step, best, wall_before = _restore(last, model, optimizer, average)
        log(f"resumed from {last}: epoch {epoch}, step {step}, best {config.monitor} {best:.4f}")
    total_steps = config.epochs * config.steps_per_epoch
    start = time.time()
    # The budget counts the wall time of earlier (resumed) runs too, so the schedule continues.
    deadline = start + config.time_budget_s - wall_before if config.time_budget_s else None
    stopped = False
    while epoch < config.epochs and not stopped:
        model.train()
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(train_batches(epoch), total=config.steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   mininterval=5.0, leave=False, disable=not ranks.is_main)
        for batch in bar:
            used = (wall_before + time.time() - start) / config.time_budget_s if config.time_budget_s else 0.0
            used = ranks.from_main([used])[0]
            lr = cosine_lr(step, total_steps, config.lr, config.warmup_steps, time_fraction=used)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            scalars = train_step(batch)
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if average is not None:
                average.update(model)
            step, n = step + 1, n + 1
            for k, v in scalars.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix({k: f"{v / n:.4f}" for k, v in sums.items()} | {"lr": f"{lr:.2e}"}, refresh=False)
            if deadline is not None and ranks.from_main([float(time.time() > deadline)])[0]:
                stopped = True
                break
        bar.close()
        sums = _mean_over_ranks(sums, ranks)
        epoch += 1
        model.eval()
        with average.applied(model) if average is not None else contextlib.nullcontext() as trained:
            with torch.no_grad():
                val = validate()
            wall = wall_before + time.time() - start
            improved = val.get(config.monitor, math.inf) < best
            best = float(val[config.monitor]) if improved else best
            if not ranks.is_main:
                continue
            row = {"epoch": epoch, "step": step, "wall_s": round(wall, 1), "lr": optimizer.param_groups[0]["lr"]}
            row |= {f"train_{k}": v / max(n, 1) for k, v in sums.items()}
            row |= val
            csv_log.write(row)
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            extra = {"optimizer": optimizer.state_dict(), "epoch": epoch, "step": step, "wall_s": wall}
            if trained is not None:
                extra |= {"trained_state_dict": trained, "ema_updates": average.updates}
            if improved:
                save_checkpoint(best_path, model, (meta or {}) | {"epoch": epoch, config.monitor: best})
            save_checkpoint(last, model, meta, best=best, **extra)
    if average is not None:  # the caller (and a following round) gets the averaged model
        model.load_state_dict(average.shadow, strict=False)
    return FitResult(epoch, step, best, wall_before + time.time() - start, stopped)
