"""Shared test fixtures: paths, small synthetic data, the real BCCD data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never join a user's cluster or write to a user's MLflow store, even from
# module-scoped fixtures that run before the per-test isolation below.
for _var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
    os.environ.pop(_var, None)
BCCD = Path(os.environ.get("ACTIVESSF_BCCD", REPO.parent / "shared" / "data" / "bccd"))


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


@pytest.fixture(scope="module")
def ray_cluster():
    """One real local Ray per test module (2 CPUs), shut down afterwards."""
    from activessf.runtime import init_ray, shutdown_ray

    rt = init_ray(num_cpus=2)
    yield rt
    shutdown_ray()
