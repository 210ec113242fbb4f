"""Non-finite loss guard: skip bad steps, roll back after too many in a row, then give up clearly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class NonFiniteGuard:
    """Decides what a training step does with its loss: ``step``, ``skip`` or ``rollback``.

    ``max_bad_steps`` non-finite losses in a row trigger a rollback to the last
    good checkpoint with the learning rate times ``lr_backoff``; more than
    ``max_rollbacks`` rollbacks raise :class:`NonFiniteLoss`.
    """

    max_bad_steps: int = 5
    max_rollbacks: int = 3
    lr_backoff: float = 0.5
    skipped: int = 0  # total skipped steps
    in_a_row: int = 0
    rollbacks: int = 0
    lr_factor: float = 1.0
    events: list = field(default_factory=list)

    def check(self, loss: float, step: int) -> str:
        if math.isfinite(loss):
            self.in_a_row = 0
            return "step"
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row < self.max_bad_steps:
            return "skip"
        self.rollbacks += 1
        self.in_a_row = 0
        if self.rollbacks > self.max_rollbacks:
            raise NonFiniteLoss(
                f"the loss was not finite {self.max_bad_steps} steps in a row, {self.rollbacks} times "
                f"(step {step}), even after {self.max_rollbacks} rollbacks with the lr lowered to "
                f"{self.lr_factor:g}x; check the data (constant crops?), lower pretrain.base_lr or use fp32"
            )
        self.lr_factor *= self.lr_backoff
        self.events.append({"step": step, "rollback": self.rollbacks, "lr_factor": self.lr_factor})
        return "rollback"

    def state(self) -> dict:
        return {"skipped": self.skipped, "rollbacks": self.rollbacks, "lr_factor": self.lr_factor}

    def load(self, state: dict) -> None:
        self.skipped, self.rollbacks, self.lr_factor = state["skipped"], state["rollbacks"], state["lr_factor"]
