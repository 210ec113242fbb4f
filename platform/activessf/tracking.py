"""MLflow wiring: the tracking URI default and experiment setup.

No ``MLFLOW_TRACKING_URI`` means an embedded sqlite store at
``<work_dir>/mlflow.db`` with artifacts in ``<work_dir>/mlartifacts``; never
the deprecated file store (MLflow 3.17 refuses it, and the default URI would
silently fall back to ``./mlruns`` if that directory existed).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
_store: dict[str, str] = {}  # what init_mlflow last chose in this process: uri, experiment id


def tracking_uri(work_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs work_dir>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
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
    mlflow.set_tracking_uri(uri)
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
