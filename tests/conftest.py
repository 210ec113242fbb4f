"""Shared test fixtures: paths, small synthetic data, the real BCCD data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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
