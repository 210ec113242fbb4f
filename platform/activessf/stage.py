"""The stage contract: how every stage writes its output, opens its MLflow run and reports.

Every stage is one function of the same shape,

    run_<stage>(cfg, <inputs>, out, *, overwrite=False, <options>) -> StageResult

and the CLI, the jobs, the pipeline, the demo and the sweep consume its
:class:`StageResult` the same way. A stage

- writes into a staging directory that replaces ``out`` in one rename at the end
  (:func:`staged_output`): a failed run leaves nothing half-written, and a rerun
  never silently appends to the last one;
- records itself in one MLflow run opened by :func:`stage_run` (nested under the
  active run when there is one, e.g. the pipeline's), with its configuration as
  parameters, its numeric summary as metrics and its files as artifacts;
- finds its resources through :func:`activessf.resources.plan`, nothing else.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Optional, Sequence

from .config import Config
from .tracking import ensure_mlflow


@dataclass(frozen=True)
class StageResult:
    """What a stage returns: its output directory, its MLflow run and the summary it wrote there.

    ``summary`` is the stage's JSON record (counts, figures, the paths it wrote), read-only;
    ``result["key"]`` reads it.
    """

    stage: str
    out: Path
    summary: Mapping[str, Any]
    run_id: Optional[str] = None
    files: tuple = field(default=())  # what it wrote under ``out`` (names; ``(name, folder)`` entries allowed)

    def __post_init__(self) -> None:
        object.__setattr__(self, "summary", MappingProxyType(dict(self.summary)))
        object.__setattr__(self, "files", tuple(f[0] if isinstance(f, tuple) else f for f in self.files))

    def __getitem__(self, key: str) -> Any:
        return self.summary[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.summary.get(key, default)

    def to_json(self) -> dict:
        """Plain JSON-able form (for pipeline.json and the jobs' logs)."""
        return {"stage": self.stage, "output": str(self.out), "mlflow_run_id": self.run_id,
                "summary": _plain(self.summary)}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------ outputs


class OutputExists(FileExistsError):
    pass


def check_output(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a Path; an error that says what to do when it already holds outputs."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExists(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = ", ".join(sorted(p.name for p in out.iterdir())[:6])
        raise OutputExists(
            f"{out} already holds outputs ({held}); pass --overwrite to replace them atomically "
            "or choose another --out"
        )
    return out


@contextmanager
def staged_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory; on success it replaces ``out`` in one rename."""
    out = check_output(out, overwrite).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train_storage(cfg: Config, storage: Optional[str] = None) -> str:
    """Where Ray Train and Ray Tune keep runs and checkpoints: ``storage`` (a shared path or URI on a
    cluster) or ``<run.work_dir>/ray_results``."""
    return storage or str((Path(cfg.run.work_dir) / "ray_results").resolve())


# ------------------------------------------------------------------ MLflow


@contextmanager
def stage_run(cfg: Config, stage: str, params: Mapping[str, Any], run_name: Optional[str] = None):
    """The one place a run is opened: ``stage``'s MLflow run, nested under the active run if any,
    with ``params`` logged and the tag ``activessf.stage``. Yields the ``mlflow.ActiveRun``.

    When this process has not chosen an MLflow store yet, it uses ``cfg.run``'s (``init_mlflow``).
    """
    import mlflow

    ensure_mlflow(cfg.run.work_dir, cfg.run.experiment)
    with mlflow.start_run(run_name=run_name or stage, nested=mlflow.active_run() is not None,
                          tags={"activessf.stage": stage, **code_version_tags()}) as run:
        if params:
            mlflow.log_params({k: _param(v) for k, v in params.items()})
        yield run


def child_runs(names: Sequence[str]) -> dict[str, str]:
    """Empty runs nested under the active one (e.g. one per fold, filled in by the Ray Train workers);
    returns name -> run id."""
    import mlflow

    ids = {}
    for name in names:
        with mlflow.start_run(run_name=name, nested=True, tags=code_version_tags()) as run:
            ids[name] = run.info.run_id
    return ids


PACKAGE_ROOT = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The code this process runs: ``version`` (the installed ``activessf`` distribution), and when the
    package is imported from a git checkout, ``git_commit`` and ``git_dirty`` ("true" when tracked files
    differ from the commit). Computed once per process; never raises (no git, no checkout: no commit)."""
    from importlib import metadata

    try:
        out = {"version": metadata.version("activessf")}
    except metadata.PackageNotFoundError:
        out = {"version": "unknown"}
    root = PACKAGE_ROOT.parents[1]  # <checkout>/platform/activessf

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() == root.resolve():  # not a checkout around a venv
            out["git_commit"] = git("rev-parse", "HEAD")
            out["git_dirty"] = str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return out


def code_version_tags() -> dict[str, str]:
    """:func:`code_version` as run tags: ``activessf.version``, ``activessf.git_commit``,
    ``activessf.git_dirty``, and MLflow's own ``mlflow.source.git.commit`` (shown in its UI)."""
    version = code_version()
    tags = {f"activessf.{k}": v for k, v in version.items()}
    if "git_commit" in version:
        tags["mlflow.source.git.commit"] = version["git_commit"]
    return tags


def log_dataset(name: str, path: str | Path, digest: str, context: str = "training", **tags: Any) -> None:
    """Record ``path`` (a labelled set, a regions table) as an input of the active run: an MLflow dataset
    named ``name`` with the platform's ``digest`` of its content, its location as the source, ``context``
    (training, selection...) and ``tags`` (e.g. ``cells=120``). The run page lists it under its inputs."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    location = str(path) if "://" in str(path) else str(Path(path).resolve())
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": two local sources, the same class
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(location)
    mlflow.log_input(MetaDataset(source, name=name, digest=digest), context=context,
                     tags={k: str(v) for k, v in tags.items()})


def log_labelled_input(labelled: str | Path, context: str = "training") -> dict:
    """The labelled set (ImageFolder or CSV) as the active run's input ``labelled``; returns its digest record."""
    from .data.labelled import labelled_digest

    record = labelled_digest(labelled)
    log_dataset("labelled", labelled, record["digest"], context, cells=record["cells"])
    return record


def log_regions_input(regions: str | Path, context: str = "training") -> dict:
    """A filter output's regions table as the active run's input ``regions``; returns its digest record."""
    from .regions.records import regions_digest

    record = regions_digest(regions)
    log_dataset("regions", Path(regions) / "regions", record["digest"], context, regions=record["regions"])
    return record


def log_results(out: Path, metrics: Mapping[str, Any], artifacts: Sequence[str | tuple[str, str]] = (),
                run_id: Optional[str] = None, params: Optional[Mapping[str, Any]] = None) -> None:
    """Numeric ``metrics`` (others are skipped), ``params`` known only at the end, and the files or
    directories ``artifacts`` (relative to ``out``, skipped when absent; ``(name, folder)`` puts one
    under an artifact folder) to the active run, or to ``run_id``."""
    import mlflow
    from mlflow.entities import Metric, Param

    client = mlflow.MlflowClient()
    run_id = run_id or mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    numbers = [Metric(k, float(v), now, 0) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    strings = [Param(k, str(_param(v))) for k, v in (params or {}).items()]
    if numbers or strings:
        client.log_batch(run_id, metrics=numbers, params=strings)
    for entry in artifacts:
        name, folder = entry if isinstance(entry, tuple) else (entry, None)
        path = Path(out) / name
        if path.is_dir():
            client.log_artifacts(run_id, str(path), folder or path.name)
        elif path.exists():
            client.log_artifact(run_id, str(path), folder)


def _param(value: Any) -> Any:
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."
