"""One training epoch: the step every trainer in the platform runs (pretraining, fine-tuning, supervised features).

Per step (as in MAE's ``engine_pretrain.py``): the learning rate from the warm-up +
cosine schedule at the fractional epoch (times the non-finite guard's back-off),
the inputs made from the batch, the model's forward under autocast, the loss in
fp32 outside it, the non-finite guard (skip the step; after ``max_bad_steps`` in
a row roll back to the last good state with a lower lr; give up after
``max_rollbacks``), backward through the GradScaler and an optimiser step every
``accum_steps`` batches. Pure PyTorch: no Ray, no MLflow, so it runs the same in
a Ray Train worker, a benchmark or a unit test.

    stats = train_one_epoch(model, opt, scaler, batches, epoch, schedule, prepare, loss_fn)
    stats["loss"], stats["images"], stats["epoch_seconds"]
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .faults import NO_HOOKS, TrainHooks
from .guard import NonFiniteGuard
from .schedule import lr_at, set_lr

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]  # columns of equal length, e.g. uint8 ``image`` (B, H, W, 3), ``label`` (B,)
Prepare = Callable[[Batch], tuple[Any, Any]]  # batch -> (model inputs, targets), on the device
LossFn = Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor | None]]  # -> (loss, correct predictions)


@dataclass(frozen=True)
class Schedule:
    """Per-step learning rate: linear warm-up then half-cosine (:func:`schedule.lr_at`) at fractional epochs."""

    lr: float  # the peak, already scaled by the batch size
    warmup_epochs: float
    epochs: int
    steps_per_epoch: int

    def at(self, epoch: int, step: int) -> float:
        return lr_at(epoch + step / self.steps_per_epoch, self.lr, self.warmup_epochs, self.epochs)

    def progress(self, epoch: int, step: int) -> float:
        """Training progress in [0, 1] after ``step`` of ``epoch``."""
        return min((epoch * self.steps_per_epoch + step + 1) / (self.steps_per_epoch * self.epochs), 1.0)


@dataclass(frozen=True)
class Amp:
    """Autocast settings: on or off, its dtype, and the device type it applies to."""

    enabled: bool = False
    dtype: torch.dtype = torch.bfloat16
    device_type: str = "cpu"

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


def amp_settings(precision: str, device: torch.device) -> tuple[bool, torch.dtype, bool]:
    """(autocast on?, its dtype, use a GradScaler?) for the configured precision on this device."""
    if device.type != "cuda":
        return precision == "bf16", torch.bfloat16, False
    if precision in ("auto", "bf16"):
        bf16 = torch.cuda.is_bf16_supported()
        return True, torch.bfloat16 if bf16 else torch.float16, not bf16
    if precision == "fp16":
        return True, torch.float16, True
    return False, torch.float32, False


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batches: Iterable[Batch],
    epoch: int, schedule: Schedule, prepare: Prepare, loss_fn: LossFn, *, amp: Amp = Amp(), accum_steps: int = 1,
    guard: NonFiniteGuard | None = None, last_good: dict | None = None,
    after_step: Callable[[float], None] | None = None, hooks: TrainHooks = NO_HOOKS,
    timeline: dict | None = None,
) -> dict:
    """Train ``model`` on ``batches``; returns ``loss`` (mean over the steps taken), ``images`` (trained on
    by this process), ``epoch_seconds`` and, when ``loss_fn`` counts correct predictions, ``train_accuracy``.

    ``guard``: non-finite losses skip the step (every DDP worker alike); a rollback restores ``last_good``
    (from :func:`snapshot`). ``after_step(progress)`` runs after every optimiser step (e.g. MoCo's EMA).
    ``hooks``: fault injection for tests (:mod:`.faults`). ``timeline`` gets ``first_batch``/``first_step``.
    """
    hooks.on_epoch_start(epoch)
    model.train()
    started, seen, correct, losses = time.time(), 0, None, []
    for step, batch in enumerate(batches):
        if timeline is not None:
            timeline.setdefault("first_batch", time.time())
        inputs, targets = prepare(batch)
        global_step = epoch * schedule.steps_per_epoch + step
        set_lr(optimizer, schedule.at(epoch, step) * (guard.lr_factor if guard is not None else 1.0))
        with amp.autocast():
            outputs = model(inputs)
        loss, right = loss_fn(outputs, targets)
        loss = hooks.corrupt_loss(loss, global_step)
        if guard is not None and not guarded_step(loss, global_step, guard, last_good, model, optimizer, scaler):
            continue
        scaler.scale(loss / accum_steps).backward()
        if (step + 1) % accum_steps == 0:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step(schedule.progress(epoch, step))
        losses.append(loss.item())
        seen += len(next(iter(batch.values())))
        if right is not None:
            correct = (correct or 0) + int(right)
        if timeline is not None:
            timeline.setdefault("first_step", time.time())
    stats = {"loss": float(np.mean(losses)) if losses else float("nan"), "images": seen,
             "epoch_seconds": time.time() - started}
    if correct is not None:
        stats["train_accuracy"] = correct / max(seen, 1)
    return stats


def guarded_step(loss: torch.Tensor, global_step: int, guard: NonFiniteGuard, last_good: dict | None,
                 model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
    """True when the step goes ahead. Otherwise the gradients are dropped, and on the guard's rollback
    the model, optimiser and scaler return to ``last_good``."""
    action = guard.check(loss.item() if all_finite(loss) else float("nan"), global_step)
    if action == "rollback" and last_good is not None:
        restore(last_good, model, optimizer, scaler)
        log.warning("rank %d: non-finite losses; rolled back, lr x%g", _rank(), guard.lr_factor)
    if action != "step":
        optimizer.zero_grad(set_to_none=True)
    return action == "step"


def all_finite(value: torch.Tensor) -> bool:
    """True only if the loss is finite on every worker (so all workers skip or step together)."""
    import torch.distributed as dist

    flag = torch.tensor([1.0 if torch.isfinite(value).all() else 0.0], device=value.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:  # one worker agrees with itself
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (its state dict has no ``module.`` prefix)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> dict:
    """A copy of the training state, for :func:`restore` (the state a rollback returns to)."""
    return {"model": copy.deepcopy(_unwrap(model).state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scaler": scaler.state_dict()}


def restore(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])


# ------------------------------------------------------------------ what a step trains on, and its loss


def ssl_inputs(views_of: Callable[[torch.Tensor], list], device: torch.device) -> Prepare:
    """Pretraining: uint8 ``image`` (B, H, W, 3) -> the SSL method's augmented views (each (B, 3, S, S))."""

    def prepare(batch: Batch) -> tuple[list, None]:
        return views_of(batch["image"].to(device).permute(0, 3, 1, 2).contiguous()), None

    return prepare


def ssl_loss(out, _targets=None) -> tuple[torch.Tensor, None]:
    """Pretraining: the SSL method computes its own loss in its forward (an ``SSLOutput``)."""
    return out.loss.float(), None


def classifier_inputs(view: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> Prepare:
    """Fine-tuning: uint8 ``image`` (B, H, W, 3), ``label`` (B,) -> (``view`` of each image (B, 3, S, S), labels)."""

    def prepare(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([view(img) for img in batch["image"].permute(0, 3, 1, 2)]).to(device)
        return x, batch["label"].long().to(device)

    return prepare


def classification_loss(weight: torch.Tensor | None = None) -> LossFn:
    """Cross-entropy in fp32 (optionally class-weighted) on logits (B, C); also counts correct predictions."""

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.cross_entropy(logits.float(), y, weight=weight), (logits.argmax(1) == y).sum()

    return loss_fn


def inverse_frequency(counts: torch.Tensor) -> torch.Tensor:
    """Class weights (C,) from class counts (C,): ``N / (C * count)``, so every class weighs the same in total."""
    counts = counts.float()
    return counts.sum() / (len(counts) * counts.clamp(min=1))
