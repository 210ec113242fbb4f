"""One line per training epoch, for the person watching (the terminal, ``ray job logs``).

    pretrain mae  epoch 3/50  loss 0.4213  lr 1.2e-04  212 img/s  elapsed 1m12s  eta 19m40s

Every trainer (pretraining, fine-tuning, supervised features) prints the same
line through :class:`EpochProgress`: on rank 0 only, to stdout and flushed at
once (a Ray Train worker's stdout reaches the driver and the job's logs line by
line), and not at all under ``run.quiet``. The formatting is pure (:func:`epoch_line`).
"""

from __future__ import annotations

import math
import sys
import time


def format_duration(seconds: float) -> str:
    """``42s``, ``1m12s``, ``2h05m``; ``?`` when unknown (not finite or negative)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def epoch_line(epoch: int, total: int, loss: float, lr: float, images_per_s: float, elapsed: float,
               eta: float, label: str = "") -> str:
    """The progress line of ``epoch`` (1-based) of ``total``; ``elapsed`` and ``eta`` in seconds."""
    parts = [label] if label else []
    parts += [f"epoch {epoch}/{total}", f"loss {loss:.4f}", f"lr {lr:.1e}", f"{images_per_s:.0f} img/s",
              f"elapsed {format_duration(elapsed)}", f"eta {format_duration(eta)}"]
    return "  ".join(parts)


class EpochProgress:
    """Prints :func:`epoch_line` after each epoch, when ``enabled`` (rank 0 and not quiet).

    ``first_epoch`` (0-based) is where this process started (a resumed run starts later): the time
    left is extrapolated from the epochs this process trained, at their mean duration.
    """

    def __init__(self, total: int, first_epoch: int = 0, label: str = "", enabled: bool = True):
        self.total, self.first, self.label, self.enabled = total, first_epoch, label, enabled
        self.started = time.time()

    def update(self, epoch: int, loss: float, lr: float, images_per_s: float) -> str:
        """After 0-based ``epoch``: the line (printed when enabled)."""
        elapsed = time.time() - self.started
        done = epoch + 1 - self.first
        eta = elapsed / done * (self.total - epoch - 1) if done > 0 else float("nan")
        line = epoch_line(epoch + 1, self.total, loss, lr, images_per_s, elapsed, eta, self.label)
        if self.enabled:
            # not print(): in a Ray Train worker print() goes to Train's logger as well, and the line would
            # reach the driver twice
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        return line
