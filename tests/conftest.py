"""Shared test fixtures: paths, small synthetic data, the real BCCD data when present."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never join a user's cluster or write to a user's MLflow store, even from
# module-scoped fixtures that run before the per-test isolation below.
for _var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
    os.environ.pop(_var, None)
BCCD = Path(os.environ.get("ACTIVESSF_BCCD", REPO.parent / "shared" / "data" / "bccd"))
WBC_SEG1 = Path(os.environ.get("ACTIVESSF_WBC_SEG1", REPO.parent / "shared" / "data" / "wbc_seg1"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test joins a user's cluster or writes to a user's MLflow store by accident."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def bccd() -> Path:
    if not (BCCD / "JPEGImages").is_dir():
        pytest.skip(f"BCCD data not found at {BCCD} (set ACTIVESSF_BCCD to its path)")
    return BCCD


@pytest.fixture
def wbc_seg1() -> Path:
    if not (WBC_SEG1 / "images").is_dir():
        pytest.skip(f"wbc_seg1 data not found at {WBC_SEG1} (set ACTIVESSF_WBC_SEG1 to its path)")
    return WBC_SEG1


def write_cells(root: Path, counts: dict[str, int], size: int = 12, seed: int = 0) -> Path:
    """An ImageFolder of small noise PNGs under ``root``, ``counts[label]`` per class, every image distinct."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    for label, n in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / label / f"{i:03d}.png"), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    return root


# ------------------------------------------------------------------ Ray: one local cluster per session

# Order of the session: tests that need no Ray, then those on the token-auth head (`head`: the demo job and
# what checks its outputs), then those sharing the session's local Ray, then those that start a Ray of their
# own: the multi-node cluster (stopped at the end of its module), then a subprocess's local Ray. The head is
# stopped before the first test of a later group starts (`pytest_runtest_setup`), the shared Ray before a
# test starts its own (`own_ray`): two Ray clusters never run at once. The demo job, when the session has
# it, is submitted as the session starts and runs on the head beside the tests that need no Ray
# (`_demo_job_beside_the_tests_without_ray`).
GROUPS = ("no Ray", "token-auth head", "shared local Ray", "multi-node Ray", "own Ray")
HEAD_GROUP = GROUPS.index("token-auth head")


def group_of(item) -> int:
    if "head" in getattr(item, "fixturenames", ()):
        return HEAD_GROUP
    if item.get_closest_marker("own_ray"):
        return 3 if item.get_closest_marker("multinode") else 4
    return 2 if item.get_closest_marker("ray") else 0


# Session fixtures that take minutes: the first test that uses one pays for it within its time limit.
SLOW_FIXTURES = {"demo_job": 900}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("own_ray"):
            item.add_marker(pytest.mark.ray)
    items.sort(key=group_of)  # stable: modules stay together within a group
    for name, seconds in SLOW_FIXTURES.items():
        first = next((i for i in items if name in getattr(i, "fixturenames", ())), None)
        if first is not None:
            first.add_marker(pytest.mark.timeout(seconds))


_SHARED_STOPPED: list = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if group_of(item) > HEAD_GROUP:
        stop_head()  # before this test's fixtures start a Ray: the head's tests have all run
    if group_of(item) >= GROUPS.index("multi-node Ray") and not _SHARED_STOPPED:
        from activessf.runtime import shutdown_ray

        shutdown_ray()  # once: the shared local Ray's tests have all run, later tests start a Ray of their own
        _SHARED_STOPPED.append(True)


@pytest.fixture(scope="session")
def _shared_ray(tmp_path_factory):
    """The session's local Ray (2 CPUs), started by the first test that asks and stopped at the end, and
    the MLflow store its stages log to unless a test chooses its own (``init_mlflow``)."""
    from activessf.runtime import init_ray, shutdown_ray
    from activessf.tracking import ensure_mlflow

    def start():
        ensure_mlflow(tmp_path_factory.getbasetemp() / "mlflow", "tests")
        return init_ray(num_cpus=2)

    yield start
    shutdown_ray()


@pytest.fixture(scope="module")
def ray_cluster(_shared_ray):
    """A real local Ray shared by every test of the session (named actors carry unique names; each test's
    outputs, Train runs and MLflow store live in its own temporary directory)."""
    return _shared_ray()


@pytest.fixture(scope="session")
def own_ray():
    """For tests that start a Ray of their own: the shared local Ray stops first (they run last)."""
    from activessf.runtime import shutdown_ray

    shutdown_ray()


@pytest.fixture(autouse=True)
def _ray_marked_honestly(request):
    """A test that leaves a Ray running in this process must be marked `ray` (`make test-fast` skips those)."""
    import sys

    before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    yield
    after = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if after and not before and not request.node.get_closest_marker("ray"):
        pytest.fail("this test started Ray but is not marked `ray`: mark it (pytestmark = pytest.mark.ray)")


# ------------------------------------------------------------------ data shared by the session's Ray tests

# The small encoder every embedding test uses (a random-init ResNet at 48 px) and the filter setting that
# finds enough regions on 512x384 synthetic fields to pretrain on.
EMBED_TINY = ["embed.backbone=test_resnet", "embed.image_size=48", "embed.batch_size=16", "filter.min_box=40"]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    """6 synthetic smear fields (512x384) with ground truth and 55 labelled crops (5 per subtype)."""
    from activessf.config import SynthConfig
    from activessf.data import synth

    root = tmp_path_factory.mktemp("synthetic")
    synth.generate(SynthConfig(images=6, labelled=55, width=512, height=384, workers=1), root, progress=False)
    return root


@pytest.fixture(scope="session")
def embedded(_shared_ray, synthetic, tmp_path_factory) -> dict:
    """The fields filtered (Ray Data) and the regions and labelled crops embedded (EMBED_TINY): the regions
    by Ray Data's actor pool (``run.inline_data_mb=0``), the labelled crops in this process (a small set)."""
    from activessf.config import load_config
    from activessf.stages.embed import run_embed
    from activessf.stages.filter import run_filter

    _shared_ray()
    root = tmp_path_factory.mktemp("embedded")
    cfg = load_config(overrides=EMBED_TINY)
    run_filter(cfg, str(synthetic / "smears"), root / "regions")
    streamed = load_config(overrides=EMBED_TINY + ["run.inline_data_mb=0"])
    run_embed(streamed, "regions", root / "regions", root / "emb_regions")
    run_embed(cfg, "labelled", synthetic / "labelled", root / "emb_labelled")
    return {"data": synthetic, "regions": root / "regions", "emb_regions": root / "emb_regions",
            "emb_labelled": root / "emb_labelled"}


# ------------------------------------------------------------------ own Ray: a token-auth head and the demo job

BIN = Path(sys.executable).parent
JOB_API = "http://127.0.0.1:8265"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args, env, timeout=120, cwd=None):
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# The head and its worker node listen on a loopback address that Ray does not rewrite (given 127.0.0.1, a
# joining node connects to the machine's outward address instead); the job API is on 127.0.0.1.
NODE_IP = "127.0.0.2"


_HEAD: dict = {}  # the running head's environment, for stop_head()


def stop_head() -> None:
    """Stop the session's head (`head`) if it runs."""
    env = _HEAD.pop("env", None)
    if env is not None:
        ray_cli("stop", "--force", env=env)
    shutil.rmtree(_HEAD.pop("tmp", "/nonexistent"), ignore_errors=True)


@pytest.fixture(scope="session")
def head(tmp_path_factory, own_ray):
    """A two-node cluster with token auth and its own token file (never the user's ~/.ray): `ray start
    --head` (2 CPUs, node-type=gpu: it takes the training) and a worker node joined with `ray start
    --address` (1 CPU, node-type=cpu: it takes the filtering and embedding), both on loopback; stopped
    when the first test of a later group starts (its tests all come together, `group_of`), or at the end
    of the session."""
    home = tmp_path_factory.mktemp("head")
    token = home / "auth_token"
    token.write_text(secrets.token_hex(16))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    # `python` in a job's entrypoint is the head's: the venv that holds torch, ray and mlflow
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "PATH": f"{BIN}:{env['PATH']}"}
    # Ray Train's preemption watcher (one more process per Train run, ~1.5 CPU-s each: 10.6 of the demo
    # job's 224 CPU-s on 2026-12-03) watches for nodes being drained; no test drains one
    env |= {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    _HEAD["env"] = env
    port = free_port()
    started = ray_cli("start", "--head", f"--node-ip-address={NODE_IP}", f"--port={port}",
                      "--dashboard-host=127.0.0.1", "--dashboard-port=8265", "--num-cpus=2", "--labels=node-type=gpu",
                      "--disable-usage-stats", env=env)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        # a temp dir of its own, as another machine's local disk: two raylets sharing one session directory
        # share its runtime_resources, and the worker node's clean-up deleted the job's working directory
        # (the driver's cwd on the head) once its own tasks were done
        _HEAD["tmp"] = tempfile.mkdtemp(prefix="ray-node-")  # short: Ray's socket paths live under it
        joined = ray_cli("start", f"--address={NODE_IP}:{port}", f"--node-ip-address={NODE_IP}", "--num-cpus=1",
                         "--labels=node-type=cpu", f"--temp-dir={_HEAD['tmp']}", "--disable-usage-stats", env=env)
        assert joined.returncode == 0, joined.stderr[-3000:]
        yield env, home
    finally:
        stop_head()


# The demo as the job: 3 fields, 55 labelled crops; small budgets. Its outputs (a 2-fold fine-tuning run
# with a final fit, registered as `jobtest`; the ablation's ViT row on the same folds) are what the
# fine-tuning, registry and serving tests check. One fine-tuning lane (finetune.parallel_folds=1): each
# fine-tuning is one Ray Train run fitting its splits in turn (2 runs where there were 5); the plugin-method
# test runs lanes side by side.
DEMO_JOB = ["synth.images=3", "synth.labelled=55", "synth.width=512", "synth.height=384", "pretrain.epochs=2",
            "select.bootstrap_epochs=1",
            "pretrain.batch_size=2", "pretrain.num_workers=1", "finetune.epochs=1", "finetune.warmup_epochs=0",
            "finetune.parallel_folds=1", "register.model_name=jobtest", "register.max_image_pixels=600000"]


@pytest.fixture(scope="session")
def _demo_submission(head) -> dict:
    """`ray job submit` of jobs/demo.py (the library shipped with py_modules) to the head, running in the
    background: it waits for the job and streams its logs into files that `demo_job` reads."""
    env, home = head
    work = home / "job-work"
    submit = ["job", "submit", "--address", JOB_API, "--working-dir", ".",
              "--runtime-env-json", json.dumps({"py_modules": ["platform/activessf"]}), "--",
              "python", "jobs/demo.py", "--work-dir", str(work), "--no-progress",
              *[a for o in DEMO_JOB for a in ("--set", o)]]
    out, err = home / "submit.out", home / "submit.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([str(BIN / "ray"), *submit], env=env, cwd=REPO, stdout=o, stderr=e, text=True)
    try:
        yield {"proc": proc, "out": out, "err": err, "env": env, "work": work, "deadline": time.time() + 840}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="session", autouse=True)
def _demo_job_beside_the_tests_without_ray(request):
    """When the session runs the demo job after tests that need no Ray (`make test`), submit it as the
    session starts: the job's Ray processes then use the core those tests leave idle instead of running
    alone after them."""
    items = request.session.items
    if items and group_of(items[0]) == 0 and any("demo_job" in i.fixturenames for i in items):
        request.getfixturevalue("_demo_submission")


@pytest.fixture(scope="session")
def demo_job(_demo_submission) -> dict:
    """The demo job's outcome (waits for `_demo_submission`): its environment, work dir, logs, config, id."""
    job = _demo_submission
    job["proc"].wait(timeout=max(job["deadline"] - time.time(), 1))
    stdout, stderr = job["out"].read_text(), job["err"].read_text()
    assert job["proc"].returncode == 0, (stdout + stderr)[-4000:]
    from activessf.config import load_config

    work = job["work"]
    return {"env": job["env"], "work": work, "stdout": stdout, "cfg": load_config(work / "demo" / "config.yaml"),
            "job_id": re.search(r"raysubmit_\w+", stdout).group(0)}


@pytest.fixture(scope="session")
def served(demo_job, tmp_path_factory) -> dict:
    """The demo job's final fit registered as ``served`` (its first version: champion) and served by
    ``mlflow models serve`` on 127.0.0.1 from the first test that asks until the end of the session
    (started once, about 8 s; the serving and load tests in tests/serving share it). ``server`` is a
    ``bench_serving.Server`` (``url``, ``process``, ``log_tail()``); ``record`` the registration's."""
    from activessf.serving.registry import register
    from activessf.tracking import init_mlflow, tracking_uri

    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_serving  # the served model's load and fuzz, shared with its benchmark

    work, cfg = demo_job["work"], demo_job["cfg"]
    cfg = cfg.model_copy(update={"register": cfg.register.model_copy(update={"model_name": "served"})})
    init_mlflow(work, "registry")
    record = register(work / "finetune" / "activessf", cfg).summary
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(work)}
    with bench_serving.serve(f"models:/served@{cfg.register.alias}", env,
                             tmp_path_factory.mktemp("served") / "server.log") as server:
        yield {"server": server, "record": record, "cfg": cfg, "data": work / "data"}
