"""Ctrl-C during a Ray Train run: abort the run, then ``KeyboardInterrupt`` (the CLI's exit code 130).

Ray Train (2.60) installs its own SIGINT handler in ``fit()``: it aborts the run and then calls
``sys.exit(0)`` from inside the driver's wait, so the command ends with exit code 1 and no word of why,
and the handler stays installed after ``fit()`` returns (a later Ctrl-C would abort a finished run and
exit). :func:`interruptible` keeps Ray Train's abort (its workers stop, its placement group is freed, the
checkpoints already reported stay) and replaces the rest: the interrupt reaches the caller as
``KeyboardInterrupt``, a second Ctrl-C interrupts the abort itself, and the handler that was there
before ``fit()`` is put back afterwards. Rerunning the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from functools import partial

log = logging.getLogger(__name__)

ABORT_TIMEOUT_S = 30.0  # the abort stops the workers; past this the driver stops waiting for it


def interruptible(trainer_cls: type) -> type:
    """A subclass of the Ray Train trainer class ``trainer_cls`` (e.g. ``TorchTrainer``) whose ``fit()``
    turns Ctrl-C into an aborted run and ``KeyboardInterrupt``."""

    class Interruptible(trainer_cls):
        def _register_sigint_handler(self, controller) -> None:  # Ray Train's hook, main thread only
            signal.signal(signal.SIGINT, partial(abort_then_interrupt, controller))

        def fit(self):
            if threading.current_thread() is not threading.main_thread():  # e.g. in a Tune trial: no handler
                return super().fit()
            before = signal.getsignal(signal.SIGINT)
            try:
                return super().fit()
            finally:
                signal.signal(signal.SIGINT, before)

    Interruptible.__name__ = Interruptible.__qualname__ = f"Interruptible{trainer_cls.__name__}"
    return Interruptible


def abort_then_interrupt(controller, signum: int, frame) -> None:
    """SIGINT during ``fit()``: abort the Ray Train run through its controller, then raise KeyboardInterrupt."""
    import ray

    signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts the abort
    log.warning("interrupted: aborting the Ray Train run (its checkpoints stay: run the same command again "
                "to resume from the last one)")
    try:
        ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
    except ray.exceptions.RayActorError:
        pass  # the controller exits as it aborts: the expected end of the call
    except ray.exceptions.GetTimeoutError:
        log.warning("the Ray Train run did not abort within %.0f s; its controller ends with this driver",
                    ABORT_TIMEOUT_S)
    raise KeyboardInterrupt
