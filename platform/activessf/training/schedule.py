"""Learning-rate schedule: linear warm-up, then half-cosine to ``min_lr`` (MAE recipe), per step."""

from __future__ import annotations

import math


def lr_at(epoch: float, base_lr: float, warmup_epochs: float, epochs: float, min_lr: float = 0.0) -> float:
    """Learning rate at fractional ``epoch``."""
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min((epoch - warmup_epochs) / span, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The paper's rule: lr = base_lr * batch / 256."""
    return base_lr * batch_size / 256


def set_lr(optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def steps_per_epoch(rows: int, batch_size: int, workers: int, accum_steps: int = 1) -> int:
    """Optimiser steps in one epoch over ``rows`` images: each of ``workers`` takes batches of
    ``batch_size // (workers * accum_steps)`` and steps every ``accum_steps`` of them."""
    per_worker = max(batch_size // (workers * accum_steps), 1)
    return max(max(rows // (per_worker * workers), 1) // accum_steps, 1)


def budget(rows: int, batch_size: int, workers: int, accum_steps: int, epochs: int, steps: int | None) -> dict:
    """What a run trains for: ``epochs``, or with ``steps`` set, the whole epochs that reach at least that
    many optimiser steps on this pool; returns epochs, optimiser steps and images seen."""
    per_epoch = steps_per_epoch(rows, batch_size, workers, accum_steps)
    epochs = math.ceil(steps / per_epoch) if steps else epochs
    return {"epochs": epochs, "steps": epochs * per_epoch, "steps_per_epoch": per_epoch,
            "images_seen": epochs * per_epoch * max(batch_size // (workers * accum_steps), 1) * workers * accum_steps}

