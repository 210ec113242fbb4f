"""Runtime defaults: local Ray when no RAY_ADDRESS, join when set; sqlite MLflow by default."""

import json
import os
import subprocess
import sys

import pytest

from activessf.runtime import apply_train_env, init_ray, select_device
from activessf.tracking import init_mlflow, tracking_uri


def test_tracking_uri_defaults_to_sqlite_under_work_dir(tmp_path):
    assert tracking_uri(tmp_path / "w") == f"sqlite:///{(tmp_path / 'w').resolve()}/mlflow.db"


def test_tracking_uri_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5999"


def test_a_second_work_dir_in_one_process_gets_its_own_store(tmp_path):
    """mlflow.set_tracking_uri exports the URI as MLFLOW_TRACKING_URI; that is not the user's choice, so a
    later work dir in the same process gets its own store, not the first one's."""
    import mlflow

    init_mlflow(tmp_path / "a", "unit")
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("/a/mlflow.db")  # what MLflow itself exports
    init_mlflow(tmp_path / "b", "unit")
    assert mlflow.get_tracking_uri() == tracking_uri(tmp_path / "b") == f"sqlite:///{(tmp_path / 'b').resolve()}/mlflow.db"


def test_init_mlflow_writes_sqlite_and_artifacts_under_work_dir(tmp_path):
    import mlflow

    work = tmp_path / "work"
    init_mlflow(work, "unit")
    with mlflow.start_run() as run:
        mlflow.log_param("p", 1)
        mlflow.log_metric("m", 0.5)
        (tmp_path / "note.txt").write_text("hi")
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    assert (work / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists() and not (work / "mlruns").exists()
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params == {"p": "1"} and got.data.metrics == {"m": 0.5}
    assert got.info.artifact_uri.startswith((work / "mlartifacts").resolve().as_uri())
    assert list((work / "mlartifacts").rglob("note.txt"))
    # the experiment is found again, not duplicated
    assert init_mlflow(work, "unit") == got.info.experiment_id


def test_device_is_cpu_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert select_device().type == "cpu"
    with pytest.raises(RuntimeError, match="torch sees no GPU"):
        select_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        select_device("tpu")


JOIN = """
import json, os
from activessf.runtime import init_ray
rt = init_ray()
import ray
print(json.dumps({"address": rt.address, "local": rt.started_local, "cpus": rt.cpus,
                  "nodes": len(ray.nodes())}))
"""


@pytest.mark.ray
def test_local_ray_then_join_it(ray_cluster):
    """The session's local Ray was started by init_ray; a second process joins it through RAY_ADDRESS."""
    import ray

    rt = ray_cluster
    assert rt.started_local and rt.address is None and rt.cpus == 2
    assert init_ray() == rt  # idempotent
    gcs = ray.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": gcs}
    out = subprocess.run([sys.executable, "-c", JOIN], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    joined = json.loads(out.stdout.strip().splitlines()[-1])
    assert joined == {"address": gcs, "local": False, "cpus": 2.0, "nodes": 1}


def test_ray_train_settings_are_defaults_a_user_can_override(monkeypatch):
    for key in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"):
        monkeypatch.setenv(key, "")  # recorded, so that the values set below are undone after the test
        monkeypatch.delenv(key)
    assert apply_train_env(local=False) == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}  # a cluster keeps its watcher
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    assert apply_train_env(local=True) == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5",  # the user's value wins
                                           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}  # nothing to drain locally
