"""The stage contract: how every stage writes its output, opens its MLflow run and reports.

Every stage is one function of the same shape,

    run_<stage>(cfg, <inputs>, out, *, overwrite=False, <options>) -> StageResult

and the CLI, the jobs, the pipeline, the demo and the sweep consume its
:class:`StageResult` the same way. A stage

- writes into a staging directory that replaces ``out`` in one atomic exchange at
  the end (:func:`staged_output`): a failed or killed run leaves nothing
  half-written, and a rerun never silently appends to the last one;
- records itself in one MLflow run opened by :func:`stage_run` (nested under the
  active run when there is one, e.g. the pipeline's), with its configuration as
  parameters, its numeric summary as metrics and its files as artifacts;
- finds its resources through :func:`activessf.resources.plan`, nothing else.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import shutil
import socket
import subprocess
import sys
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
#
# How an output replaces the last one. The stage writes into ``.NAME.staging-*`` beside ``out``; at the
# end, on Linux, one renameat2(RENAME_EXCHANGE) swaps the staging directory and ``out``, so that ``out``
# is at every instant either the complete previous output or the complete new one, even under SIGKILL;
# then the previous output (now at the staging name) is removed. Where the exchange is not available
# (another OS, a filesystem without it) ``out`` moves aside to ``.NAME.old-*`` and the staging directory
# takes its place: a kill between those two renames leaves no ``out``, only ``.NAME.old-*``.
#
# Leftovers are named ``.NAME.<kind>-<pid>@<host>-<random>``. The next :func:`check_output` of the same
# ``out`` removes those whose writer is gone (this host, no process with that pid), and puts a
# ``.NAME.old-*`` back as ``out`` when ``out`` is missing. Leftovers of live writers, of other hosts
# (shared filesystems) and of unknown names are left alone: a reused pid keeps a leftover, never loses one.

log = logging.getLogger(__name__)

LEFTOVER_KINDS = ("staging", "old", "probe")
AT_FDCWD = -100
RENAME_EXCHANGE = 2  # linux/fs.h


class OutputExists(FileExistsError):
    pass


class OutputNotWritable(PermissionError, ValueError):
    """``--out`` lies in a directory this process cannot write (read-only mount, immutable, no permission).
    A ``ValueError`` too: the command line reports it as a usage error (exit 2), found before any work."""


def check_output(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a Path; an error that says what to do when it already holds outputs or cannot be written.

    Called before any work (the CLI calls it before Ray starts). It also makes what killed writers of
    ``out`` left beside it harmless (:func:`clear_leftovers`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExists(f"--out {out} is a file, not a directory")
    clear_leftovers(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = ", ".join(sorted(p.name for p in out.iterdir())[:6])
        raise OutputExists(
            f"{out} already holds outputs ({held}); pass --overwrite to replace them atomically "
            "or choose another --out"
        )
    check_writable(out)
    return out


def check_writable(out: Path) -> None:
    """Create and remove a directory in the nearest existing folder above ``out``, where the staging
    directory will go (a real write: root passes permission bits, not a read-only mount or an immutable
    folder), and ask the kernel whether ``out`` itself, when it exists, may be written (``access(2)``
    honours both; a probe inside ``out`` would be a stray file in the output if this process were killed)."""
    parent = out.resolve().parent
    while not parent.is_dir():
        parent = parent.parent
    try:
        probe = parent / leftover_name(out, "probe")
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise OutputNotWritable(f"--out {out}: cannot write in {parent} ({e.strerror}); choose another --out "
                                "or make that directory writable") from None
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"--out {out}: cannot write in it; choose another --out or make it writable")


def leftover_name(out: Path, kind: str) -> str:
    """``.NAME.<kind>-<pid>@<host>-<random>``: who made it, so that a later run knows when it is stale."""
    return f".{out.name}.{kind}-{os.getpid()}@{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def leftover_writer(path: Path, out: Path) -> Optional[tuple[str, int, str]]:
    """``(kind, pid, host)`` of a leftover of ``out``; None for any other name."""
    prefix = f".{out.name}."
    if not path.name.startswith(prefix):
        return None
    kind, _, rest = path.name[len(prefix):].partition("-")
    writer, _, _ = rest.rpartition("-")
    pid, _, host = writer.partition("@")
    return (kind, int(pid), host) if kind in LEFTOVER_KINDS and pid.isdigit() and host else None


def writer_alive(pid: int, host: str) -> bool:
    """True unless ``pid`` is known gone: on this host, no such process (another host's: assumed alive)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clear_leftovers(out: str | Path) -> list[Path]:
    """Remove the staging, old and probe directories of ``out`` whose writer is gone; a writer killed
    between the fallback's two renames left ``out`` missing and its previous output at ``.NAME.old-*``:
    that goes back to ``out``. Returns what was removed or put back."""
    out = Path(out).resolve()
    if not out.parent.is_dir():
        return []
    done = []
    for path in sorted(out.parent.iterdir()):
        writer = leftover_writer(path, out)
        if writer is None or writer_alive(*writer[1:]):
            continue
        if writer[0] == "old" and not os.path.lexists(out):
            os.rename(path, out)
            log.warning("%s was missing (a writer was killed while replacing it): its previous output %s "
                        "is back", out, path.name)
        else:
            shutil.rmtree(path, ignore_errors=True)
        done.append(path)
    return done


@contextmanager
def staged_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory; on success it replaces ``out`` atomically (see above)."""
    out = check_output(out, overwrite).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / leftover_name(out, "staging")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, out)


def replace_dir(new: Path, out: Path) -> None:
    """Put the directory ``new`` at ``out`` and remove what ``out`` held: one exchange where the OS and
    filesystem have one (``out`` is never missing nor mixed), else two renames."""
    if not os.path.lexists(out):
        os.rename(new, out)  # nothing to replace: one rename
    elif exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now names the previous output
    else:
        old = out.parent / leftover_name(out, "old")
        os.rename(out, old)
        os.rename(new, out)
        shutil.rmtree(old, ignore_errors=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``, kernel
    3.15+, glibc 2.28+); False where the OS, libc or filesystem has no such call."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # not supported here
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@functools.lru_cache(maxsize=1)
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


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
