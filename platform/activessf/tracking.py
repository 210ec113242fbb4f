"""MLflow wiring: the tracking URI default and experiment setup.

No ``MLFLOW_TRACKING_URI`` means an embedded sqlite store at
``<work_dir>/mlflow.db`` with artifacts in ``<work_dir>/mlartifacts``; never
the deprecated file store (MLflow 3.17 refuses it, and the default URI would
silently fall back to ``./mlruns`` if that directory existed).

Several commands may share one sqlite store at once (two terminals, a sweep
beside a pipeline). MLflow creates a fresh store by running its schema
migrations, which are neither transactional nor locked across processes: two
processes creating the same store at once break it for good ("table
_alembic_tmp_experiments already exists"). :func:`init_mlflow` therefore opens
a local sqlite store under an exclusive lock on ``.<db>.lock`` beside it, and
creates the experiment under the same lock. Once created, concurrent writers
are MLflow's own business: every session sets a 20 s sqlite busy timeout.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock (MLflow's own behaviour)
    fcntl = None

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
_store: dict[str, str] = {}  # what init_mlflow last chose in this process: uri, experiment id
# Stores this process chose from a work dir. ``mlflow.set_tracking_uri`` exports the URI as
# MLFLOW_TRACKING_URI (for subprocesses); that value is not the user's choice and must not pin every
# later work dir of the process to the first one.
_chosen_here: set[str] = set()


def tracking_uri(work_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if the user set it, else ``sqlite:///<abs work_dir>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri not in _chosen_here:
        return uri
    return f"sqlite:///{(Path(work_dir).resolve() / DB_NAME)}"


def init_mlflow(work_dir: str | Path, experiment: str) -> str:
    """Point MLflow at the store and make ``experiment`` current; returns its id.

    With a local sqlite store the experiment's artifacts go to
    ``<work_dir>/mlartifacts`` (not ``./mlruns`` in whatever the cwd is).
    """
    import mlflow

    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(work_dir)
    if uri != os.environ.get("MLFLOW_TRACKING_URI"):
        _chosen_here.add(uri)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):  # the store's tables and the experiment are created by one process at a time
        mlflow.MlflowClient(uri)  # opening a new store creates its tables
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            location = (work_dir / ARTIFACTS_DIR).as_uri() if uri.startswith("sqlite:") else None
            exp_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = found.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    _store.update(uri=uri, experiment_id=exp_id)
    log.info("MLflow: %s, experiment %r (%s)", uri, experiment, exp_id)
    return exp_id


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI (absolute, or relative to the cwd); None for other
    stores and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock, across processes, on the local sqlite store ``uri`` (a ``.<db>.lock`` file
    beside it); nothing for other stores."""
    path = sqlite_path(uri)
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_mlflow(work_dir: str | Path, experiment: str) -> None:
    """``init_mlflow`` unless this process has already chosen a store and an experiment."""
    if not _store:
        init_mlflow(work_dir, experiment)


def store_uri(work_dir: str | Path) -> str:
    """The store this process logs to (what ``init_mlflow`` chose), else ``work_dir``'s: what Ray Train
    workers and Tune trials must log to, so that the runs they fill are the driver's."""
    return _store.get("uri") or tracking_uri(work_dir)


def ui_command(work_dir: str | Path) -> str:
    """The command that opens the MLflow UI on this store, on loopback."""
    return f"mlflow ui --backend-store-uri {tracking_uri(work_dir)} --host 127.0.0.1 --port 5000"
