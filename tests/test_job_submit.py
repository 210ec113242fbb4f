"""`ray job submit` against a real head started with `ray start --head` on loopback, token auth on.

The head is the only Ray on the machine while these tests run (no module-scoped local Ray here).
"""

import json
import os
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent
JOB_API = "http://127.0.0.1:8265"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray(*args, env, timeout=120, cwd=None):
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head with token auth, its own token file (never the user's ~/.ray), stopped afterwards."""
    home = tmp_path_factory.mktemp("head")
    token = home / "auth_token"
    token.write_text(secrets.token_hex(16))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    # `python` in a job's entrypoint is the head's: the venv that holds torch, ray and mlflow
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "PATH": f"{BIN}:{env['PATH']}"}
    started = ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
                  "--dashboard-host=127.0.0.1", "--dashboard-port=8265", "--num-cpus=2",
                  "--disable-usage-stats", env=env)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield env, home
    finally:
        ray("stop", "--force", env=env)


def test_a_submit_without_the_token_is_refused(head, repo, tmp_path):
    env, _ = head
    anonymous = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path)}
    out = ray("job", "submit", "--address", JOB_API, "--no-wait", "--", "python", "-c", "print(1)",
              env=anonymous, cwd=repo)
    assert out.returncode != 0
    assert "authentication" in (out.stdout + out.stderr).lower()


def test_the_pipeline_job_runs_the_whole_method_on_the_head(head, repo):
    import mlflow

    env, home = head
    work = home / "job-work"
    submit = ["job", "submit", "--address", JOB_API, "--working-dir", ".",
              "--runtime-env-json", json.dumps({"py_modules": ["platform/activessf"]}), "--",
              "python", "jobs/pipeline.py", "--synthetic", "3", "--preset", "demo", "--work-dir", str(work),
              "--no-progress", "--set", "synth.labelled=55", "--set", "synth.width=512", "--set", "synth.height=384",
              "--set", "pretrain.epochs=2", "--set", "finetune.epochs=1", "--set", "register.model_name=jobtest"]
    out = ray(*submit, env=env, cwd=repo, timeout=1200)  # waits for the job and streams its logs
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    job_id = re.search(r"raysubmit_\w+", out.stdout).group(0)
    assert "succeeded" in ray("job", "status", "--address", JOB_API, job_id, env=env).stdout.lower()

    record = json.loads((work / "pipeline" / "pipeline.json").read_text())
    assert set(record["stages"]) == {"filter", "select", "pretrain", "finetune", "register"}
    assert record["ray"]["started_local"] is False  # the job joined the head, it did not start its own Ray
    # py_modules carried the library: workers import it from the job's runtime resources, not the checkout
    assert "runtime_resources" in record["worker_package"] and not record["worker_package"].startswith(str(repo))
    assert record["stages"]["filter"]["summary"]["images_read"] == 3
    assert record["stages"]["select"]["report"]["totals"]["selected"] > 0
    assert (work / "encoder" / "encoder.pt").is_file()
    assert (work / "finetune" / "activessf" / "model" / "model.pt").is_file()
    reg = record["stages"]["register"]
    assert reg["model"] == "jobtest" and reg["promoted"]

    mlflow.set_tracking_uri(record["mlflow"]["tracking_uri"])
    run = mlflow.get_run(record["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "pipeline"
    nested = mlflow.search_runs(experiment_ids=[run.info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    names = set(nested["tags.mlflow.runName"])
    assert {"filter", "select", "register-jobtest"} <= names and len(names) >= 5
    assert str(mlflow.MlflowClient().get_model_version_by_alias("jobtest", "champion").version) == reg["version"]
