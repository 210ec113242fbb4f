"""Fault injection for tests, through the training loop's hooks (never special cases inside the loop).

:func:`engine.train_one_epoch` calls two hooks, and nothing else test-specific:

    hooks.on_epoch_start(epoch)      before the epoch's first batch
    hooks.corrupt_loss(loss, step)   on each step's loss (``step``: global step), before the non-finite guard

:class:`TrainHooks` does nothing: production runs use it. :class:`FaultInjector`
is built from the ``test_hooks`` a test passes to ``run_pretrain``, which arrive
as keys of the pretraining loop's config (:class:`loop_config.PretrainLoopConfig`):

    inject_nan_steps: [0, 2, 3]   the loss at these global steps becomes NaN (on every worker alike)
    fail_at_epoch: 2              the last worker dies (``os._exit(1)``) 3 s into epoch 2, once per run
                                  name: a marker file (``marker``, under the run's storage) remembers it
    pause_at_epoch: 1             every worker waits ``pause_seconds`` at the start of epoch 1, once per run
                                  name (the file ``<marker>-paused-1`` says the pause has begun): a window
                                  in which a test takes a node away
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch


class TrainHooks:
    """The training loop's hooks; the defaults do nothing."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch's first batch."""

    def corrupt_loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """Called on each step's scalar loss (``step``: the global step); returns the loss to use."""
        return loss


NO_HOOKS = TrainHooks()


@dataclass(frozen=True)
class FaultInjector(TrainHooks):
    """NaN losses at ``nan_steps``; this worker dies at ``fail_at_epoch`` if it is ``the_one_to_fail``."""

    nan_steps: frozenset[int] = frozenset()
    fail_at_epoch: int | None = None
    marker: str | None = None  # path prefix of the "failed once" file
    the_one_to_fail: bool = False
    pause_at_epoch: int | None = None
    pause_seconds: float = 0.0
    rank: int = 0

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == self.pause_at_epoch and not Path(f"{self.marker}-paused-{epoch}-{self.rank}").exists():
            Path(f"{self.marker}-paused-{epoch}-{self.rank}").write_text("paused")
            if self.rank == 0:
                Path(f"{self.marker}-paused-{epoch}").write_text("paused")
            time.sleep(self.pause_seconds)
        if self.the_one_to_fail and epoch == self.fail_at_epoch and first_time(f"{self.marker}-{epoch}"):
            time.sleep(3)  # a worker dies mid-run, once, a while after the last checkpoint
            os._exit(1)

    def corrupt_loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        return loss * float("nan") if step in self.nan_steps else loss


def fault_hooks(nan_steps=(), fail_at_epoch: int | None = None, marker: str | None = None,
                rank: int = 0, world: int = 1, pause_at_epoch: int | None = None,
                pause_seconds: float = 0.0) -> TrainHooks:
    """The hooks for these test settings: :data:`NO_HOOKS` when none is set. The last rank is the one to fail."""
    if not nan_steps and fail_at_epoch is None and pause_at_epoch is None:
        return NO_HOOKS
    return FaultInjector(frozenset(nan_steps), fail_at_epoch, marker, the_one_to_fail=rank == world - 1,
                         pause_at_epoch=pause_at_epoch, pause_seconds=pause_seconds, rank=rank)


def first_time(marker: str) -> bool:
    """True the first time it is asked for ``marker`` (a file it then writes), False afterwards."""
    path = Path(marker)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("failed once")
    return True
