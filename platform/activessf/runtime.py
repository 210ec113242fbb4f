"""Runtime defaults that make the platform run anywhere (DESIGN.md).

- No ``RAY_ADDRESS``: start a local Ray sized to this machine. With one: join it.
- No ``MLFLOW_TRACKING_URI``: see :mod:`activessf.tracking` (sqlite under the work dir).
- Device: CUDA when torch sees a GPU, else CPU; chosen at run time, never assumed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayRuntime:
    """How this process is attached to Ray."""

    address: Optional[str]  # the cluster joined, or None when a local Ray was started
    started_local: bool
    cpus: float
    gpus: float


# Ray Train's control loop, set through the environment variables Ray Train reads (a user's own values win).
# The controller polls its workers every 2 s by default, so a finished run is noticed up to seconds late and
# every run pays that at its end; a poll is one small actor call per worker. On a single machine started by
# the platform there is no node to be drained, so Ray Train's preemption watcher (one more process per run)
# has nothing to watch. See docs/startup.md for the measured effect.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def apply_train_env(local: bool) -> dict[str, str]:
    """Set Ray Train's settings above unless already set; returns the values in effect.

    Called before a local Ray starts, so that its worker processes (Tune trials that fit their own
    trainers among them) inherit them; a driver joining a cluster passes them to each run it starts.
    """
    for key, value in {**TRAIN_ENV, **(LOCAL_TRAIN_ENV if local else {})}.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in {**TRAIN_ENV, **LOCAL_TRAIN_ENV} if k in os.environ}


def ray_address() -> Optional[str]:
    """The cluster to join (``RAY_ADDRESS``), or None for a local Ray."""
    return os.environ.get("RAY_ADDRESS") or None


def init_ray(num_cpus: Optional[int] = None, quiet: bool = False) -> RayRuntime:
    """Join the cluster in ``RAY_ADDRESS`` or start a local Ray sized to the machine.

    Idempotent: when Ray is already initialised in this process, reports on it.
    ``num_cpus`` limits a *local* Ray only; a joined cluster has its own size.
    ``quiet`` (``run.quiet``): Ray's own logs at warning level, no Ray Data progress bars.
    """
    import ray

    address = ray_address()
    if quiet:
        hide_progress_bars()
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    if not ray.is_initialized():
        apply_train_env(local=not address)
        level = logging.WARNING if quiet else logging.INFO
        if address:
            log.info("joining the Ray cluster at %s", address)
            ray.init(address=address, log_to_driver=True, logging_level=level)
        else:
            cpus = num_cpus or os.cpu_count() or 1
            log.info("no RAY_ADDRESS: starting a local Ray with %d CPUs", cpus)
            # the dashboard serves the state API that Ray Train's placement-group cleaner polls: without
            # it a Train run whose controller is killed (a Tune trial stopped early) never frees its CPUs
            ray.init(num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True,
                     logging_level=level)
    res = ray.cluster_resources()
    return RayRuntime(address, address is None, float(res.get("CPU", 0)), float(res.get("GPU", 0)))


def hide_progress_bars() -> None:
    """No Ray Data progress bars from this process (the driver draws them)."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    DataContext.get_current().enable_progress_bars = False
    log_once("ray_data_progress_manager_disabled")  # spends Ray Data's one warning that the bars are off


def node_id() -> str:
    """The Ray node this process runs on (its hex id), or "" outside Ray: recorded with the rows a task
    writes, so that an output says where its parts were made."""
    import sys

    ray = sys.modules.get("ray")  # not imported: not on Ray
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id()


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def select_device(prefer: str = "auto"):
    """``torch.device`` to run on: ``auto`` picks CUDA only if torch sees a GPU."""
    import torch

    if prefer not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {prefer!r}")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no GPU; use 'auto' or 'cpu'")
    if prefer == "cpu" or (prefer == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")
