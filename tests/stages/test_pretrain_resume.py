"""Ctrl-C during ``activessf pretrain``, then the same command again: it resumes from the last checkpoint.

The interrupted command runs as a process of its own that joins the session's Ray (``RAY_ADDRESS``), as a
user's terminal joins a running cluster: no second Ray starts. The rerun runs in this process. Each run
pays Ray Train's start-up (~10 s here).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ray

# a ViT-micro at 32 px on 512 crops of 128 noise fields (64 steps an epoch, ~0.6 s on 2 cores), one worker,
# a checkpoint every epoch; Ctrl-C comes at the first checkpoint, so the later epochs leave the abort time
EPOCHS, FIELDS = 6, 128
TINY = ["pretrain.source=fields", "pretrain.model=micro", "pretrain.image_size=32", "pretrain.patch_size=8",
        "pretrain.batch_size=8", f"pretrain.epochs={EPOCHS}", "pretrain.warmup_epochs=1",
        "pretrain.checkpoint_every=1", "pretrain.num_workers=1"]


@pytest.fixture
def fields(tmp_path):
    """Noise images of 64x64 px, 4 crops each (the `fields` source)."""
    import cv2
    import numpy as np

    root = tmp_path / "fields"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(FIELDS):
        cv2.imwrite(str(root / f"field_{i:03d}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return root


def pretrain_command(fields, tmp_path) -> list[str]:
    sets = [a for o in TINY for a in ("--set", o)]
    return [sys.executable, "-m", "activessf.cli", "pretrain", "--fields", str(fields), "--out", str(tmp_path / "out"),
            "--work-dir", str(tmp_path / "work"), "--name", "ctrlc", "--json", "--no-progress", *sets]


def checkpointed_epoch(work) -> int:
    """The epoch of the last checkpoint Ray Train has registered for the run, the one a rerun resumes
    from (0: none yet)."""
    snapshots = list((work / "ray_results").glob("ctrlc-*/checkpoint_manager_snapshot.json"))
    if not snapshots:
        return 0
    try:
        latest = json.loads(snapshots[0].read_text()).get("latest_checkpoint_result")
    except (OSError, ValueError):  # being written
        return 0
    return int(latest["metrics"]["epoch"]) if latest else 0


def interrupt_at_first_checkpoint(command, env, tmp_path) -> tuple[subprocess.Popen, int, str, str, float]:
    """Start ``command``, send SIGINT (what Ctrl-C sends) once a checkpoint is registered; the process,
    that checkpoint's epoch, stdout, stderr and the seconds from the signal to the exit."""
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 150
        while (epoch := checkpointed_epoch(tmp_path / "work")) == 0:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "no checkpoint within 150 s"
            time.sleep(0.1)
        sent = time.time()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        return proc, epoch, out, err, time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()


def cpus_free(ray, timeout: float) -> float:
    """Seconds until every CPU of the cluster is free again (fails after ``timeout``)."""
    start, total = time.time(), ray.cluster_resources()["CPU"]
    while ray.available_resources().get("CPU", 0) < total:
        assert time.time() - start < timeout, f"CPUs still held: {ray.available_resources()} of {total}"
        time.sleep(0.1)
    return time.time() - start


@pytest.mark.timeout(240)
def test_ctrl_c_exits_130_frees_the_cluster_and_the_same_command_resumes(ray_cluster, fields, tmp_path):
    import mlflow
    import ray
    import torch
    from ray.util.state import list_actors

    from activessf.cli import main

    def train_actors() -> set[str]:  # Ray Train actors alive on the shared cluster (earlier tests' too)
        alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        return {a.actor_id for a in alive if a.class_name in ("TrainController", "RayTrainWorker")}

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    command = pretrain_command(fields, tmp_path)
    before = train_actors()
    first, epoch, out, err, took = interrupt_at_first_checkpoint(command, env, tmp_path)
    assert first.returncode == 130, err[-3000:]
    assert "activessf pretrain: interrupted" in err and "run the same command again to resume" in err
    assert json.loads(out)["exit_code"] == 130 and took < 20, took
    cpus_free(ray, 30)  # the run's worker and placement group are gone, its controller too
    assert not train_actors() - before  # none of the interrupted run's actors is left
    assert not (tmp_path / "out").exists()  # nothing half-written: the same command needs no --overwrite

    handler = signal.getsignal(signal.SIGINT)
    assert main(command[3:]) == 0  # the same command again, in this process (it is already on the cluster)
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C after the run is this process's own again
    summary = json.loads((tmp_path / "out" / "encoder.json").read_text())  # the result's summary
    assert epoch <= summary["resumed"]["epoch"] < EPOCHS and summary["resumed"]["optimizer_digest"]
    assert summary["epochs"] == EPOCHS and summary["rows"] == FIELDS * 4
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))  # the interrupted run's epochs, then the rest
    weights = torch.load(tmp_path / "out" / "encoder.pt", weights_only=True)
    assert weights and all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    runs = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}").search_runs(["1"])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]  # the interrupted run is not left RUNNING
    cpus_free(ray, 30)
