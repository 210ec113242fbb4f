"""A cluster's tracking server: ``mlflow server`` on PostgreSQL, with a sweep's concurrent trials logging to it.

The test starts its own PostgreSQL (on 127.0.0.1, in a temporary directory, a password-protected role) and
``mlflow server`` on it, points ``MLFLOW_TRACKING_URI`` at the server the way a job on a cluster does, and
runs a filter sweep on the session's Ray with two trials at once: every trial's run must arrive whole. Then
two Ray workers log epochs into runs of their own at once, as the rank-0 workers of parallel fine-tuning folds do.
Skipped when the PostgreSQL binaries (``initdb``, ``pg_ctl``) or the driver (``psycopg``) are missing.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent
MIN_BOXES = [30, 50, 80, 300]  # one trial each, two at a time


def postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: on the PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: as root the server runs as the user ``postgres``."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    if not shutil.which("runuser"):
        pytest.skip("running as root without `runuser` to start PostgreSQL as the `postgres` user")
    return ["runuser", "-u", "postgres", "--"]


def start_postgres(root: Path, pg: Path, port: int, password: str) -> None:
    """A database cluster in ``root/data`` whose superuser ``mlflow`` logs in over TCP with ``password``,
    listening on 127.0.0.1:``port`` only, with the database ``mlflow``."""
    import psycopg

    prefix = as_postgres()
    if prefix:  # the postgres user must own the directory it writes (pytest's own temp dirs are root's, 0700)
        shutil.chown(root, "postgres")
    (root / "pwfile").write_text(password)
    if prefix:
        shutil.chown(root / "pwfile", "postgres")
    run = dict(cwd=root, capture_output=True, text=True, timeout=120)
    made = subprocess.run([*prefix, str(pg / "initdb"), "-D", str(root / "data"), "-U", "mlflow", "-E", "UTF8",
                           f"--pwfile={root / 'pwfile'}", "--auth-host=scram-sha-256", "--auth-local=peer",
                           "--no-sync"], **run)
    assert made.returncode == 0, made.stderr
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"  # the Unix socket too, in the temp dir
    started = subprocess.run([*prefix, str(pg / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "postgres.log"),
                              "-o", options, "-w", "start"], **run)
    assert started.returncode == 0, started.stderr + (root / "postgres.log").read_text()
    with psycopg.connect(host="127.0.0.1", port=port, user="mlflow", password=password, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute("CREATE DATABASE mlflow")


def stop_postgres(root: Path, pg: Path) -> None:
    if (root / "data" / "postmaster.pid").exists():
        subprocess.run([*as_postgres(), str(pg / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop"],
                       cwd=root, capture_output=True, timeout=60)


def start_mlflow_server(root: Path, pg_port: int, password: str, port: int) -> subprocess.Popen:
    """``mlflow server`` on the database, artifacts proxied into ``root/artifacts``; in a session of its own,
    so that it ends with every process it starts. Waits until it answers /health."""
    import requests

    env = {**os.environ, "PGPASSWORD": password,  # libpq reads it: the URI, visible in `ps`, holds no password
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runners: 4 fewer processes
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"postgresql://mlflow@127.0.0.1:{pg_port}/mlflow",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    server = subprocess.Popen(command, env=env, cwd=root, stdout=open(root / "server.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        assert server.poll() is None, (root / "server.log").read_text()[-3000:]
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    stop_group(server)
    pytest.fail("mlflow server did not answer /health within 120 s: " + (root / "server.log").read_text()[-3000:])


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process's session (the server, its uvicorn workers), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def tracking_server():
    """PostgreSQL and ``mlflow server`` on it, both on 127.0.0.1; stopped and removed at the end, always."""
    pg = postgres_bin()
    if pg is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl not found (apt-get install postgresql)")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("the PostgreSQL driver psycopg is not installed (pip install -r requirements-dev.txt)")
    root = Path(tempfile.mkdtemp(prefix="activessf-pg-"))  # not under pytest's root-only temp dirs
    root.chmod(0o755)
    password, pg_port, port = secrets.token_hex(12), free_port(), free_port()
    server = None
    try:
        start_postgres(root, pg, pg_port, password)
        started = time.time()
        server = start_mlflow_server(root, pg_port, password, port)
        yield {"uri": f"http://127.0.0.1:{port}", "artifacts": root / "artifacts", "ready_s": time.time() - started,
               "db": {"host": "127.0.0.1", "port": pg_port, "user": "mlflow", "password": password,
                      "dbname": "mlflow"}}
    finally:
        if server is not None:
            stop_group(server)
        stop_postgres(root, pg)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def logs_to_server(tracking_server, monkeypatch, tmp_path):
    """This process logs to the server for one test (``MLFLOW_TRACKING_URI``, as a job on a cluster sets it);
    afterwards MLflow's process-wide URI and experiment, and the store the platform chose, are what they were."""
    import mlflow
    from mlflow.tracking import fluent

    from activessf import tracking

    uri, experiment_env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_EXPERIMENT_ID")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server["uri"])
    monkeypatch.setattr(tracking, "_store", {})  # the session's choice comes back at the end
    monkeypatch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
    try:
        yield tracking_server
    finally:
        mlflow.set_tracking_uri(uri)
        if experiment_env is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_env


def test_a_sweeps_concurrent_trials_all_arrive_whole_in_the_postgres_backed_server(ray_cluster, synthetic,
                                                                                   logs_to_server, tmp_path):
    import mlflow
    import pandas as pd
    import psycopg

    from activessf.config import load_config
    from activessf.stages.sweep import run_sweep
    from activessf.tracking import init_mlflow, tracking_uri

    server = logs_to_server
    work = tmp_path / "w"
    assert tracking_uri(work) == server["uri"]  # the environment wins over the work dir's sqlite store
    init_mlflow(work, "sweep-on-postgres")
    space = tmp_path / "space.yaml"
    space.write_text(f"kind: filter\nspace:\n  filter.min_box: {{grid: {MIN_BOXES}}}\n"
                     "  filter.fill_rate: {uniform: [0.5, 0.7]}\n")
    cfg = load_config(overrides=[f"run.work_dir={work}", "sweep.num_samples=1", "sweep.max_concurrent_trials=2"])
    started = time.time()
    best = run_sweep(cfg, space, tmp_path / "out", images=str(synthetic / "smears"), boxes=synthetic, name="pg")
    seconds = time.time() - started

    trials = pd.read_csv(tmp_path / "out" / "trials.csv").set_index("filter.min_box")
    assert sorted(trials.index) == MIN_BOXES and (trials.status == "OK").all()
    client = mlflow.MlflowClient(server["uri"])
    parent = client.get_run(best.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials"] == len(MIN_BOXES)
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{best.run_id}'")
    assert len(kids) == len(MIN_BOXES) and {k.info.status for k in kids} == {"FINISHED"}
    by_box = {int(k.data.params["filter.min_box"]): k for k in kids}
    assert sorted(by_box) == MIN_BOXES  # one run per trial, none lost, none twice
    for box, run in by_box.items():  # each run holds its own trial's results
        assert run.data.metrics["f1"] == pytest.approx(trials.loc[box, "f1"])
        assert run.data.metrics["regions"] == trials.loc[box, "regions"]
    spans = sorted((k.info.start_time, k.info.end_time) for k in kids)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans  # trials did run side by side
    # the records are in PostgreSQL, the files under the server's artifacts destination, nothing in sqlite
    with psycopg.connect(**server["db"]) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0] == len(kids) + 1
    assert {"trials.csv", "best.json"} <= {a.path for a in client.list_artifacts(best.run_id)}
    assert list(server["artifacts"].rglob("trials.csv")) and not (work / "mlflow.db").exists()
    print(f"\n{len(kids)} trials, 2 at a time, on mlflow server + PostgreSQL: sweep {seconds:.1f} s, "
          f"server ready in {server['ready_s']:.1f} s")


def test_ray_workers_logging_at_once_lose_no_epoch(ray_cluster, logs_to_server, tmp_path):
    """Two Ray tasks (the folds a 2-CPU cluster fine-tunes side by side), each the platform's rank-0 ``Tracker``
    of a training run: a batch of metrics per epoch and a picture, both at once into the server; every epoch
    and every file arrives."""
    import mlflow
    import ray

    from activessf.tracking import init_mlflow

    server, writers, epochs = logs_to_server, 2, 20
    experiment = init_mlflow(tmp_path / "w", "workers-on-postgres")
    client = mlflow.MlflowClient(server["uri"])
    run_ids = [client.create_run(experiment, run_name=f"writer{i}").info.run_id for i in range(writers)]

    def train(uri: str, run_id: str, epochs: int, gate: str, writers: int) -> None:  # Ray sends it by value
        import tempfile
        import time
        from pathlib import Path

        from activessf.training.worker import Tracker

        tracker = Tracker(uri, run_id, rank=0)
        tracker.client  # noqa: B018  (mlflow imported, the client made: ready to write)
        (Path(gate) / run_id).touch()
        while len(list(Path(gate).iterdir())) < writers:  # every writer starts at once (one machine: a directory)
            time.sleep(0.01)
        for epoch in range(1, epochs + 1):
            tracker.metrics({"loss": 1.0 / epoch, "images_per_s": 100.0 * epoch}, epoch)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "picture.png").write_bytes(b"not a picture, a file")
            tracker.artifact(Path(tmp) / "picture.png", "pictures")

    task = ray.remote(num_cpus=2 / writers)(train)
    (tmp_path / "gate").mkdir()
    ray.get([task.remote(server["uri"], run_id, epochs, str(tmp_path / "gate"), writers) for run_id in run_ids])
    spans = []
    for run_id in run_ids:
        history = client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        spans.append((min(m.timestamp for m in history), max(m.timestamp for m in history)))
        assert [a.path for a in client.list_artifacts(run_id, "pictures")] == ["pictures/picture.png"]
        client.set_terminated(run_id)
    assert max(a for a, _ in spans) <= min(b for _, b in spans), spans  # the writers' epochs interleaved
