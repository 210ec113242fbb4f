"""Stratified k-fold assignments, written once and reused so compared runs see identical folds (NOTES 11)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np


def assign_folds(ids: Sequence[str], labels: Sequence[str], k: int, seed: int) -> dict[str, int]:
    """id -> fold (0..k-1), stratified by label, deterministic for (ids, labels, k, seed).

    Raises if a class has fewer than ``k`` samples (stratified k-fold cannot hold it out k times).
    """
    from sklearn.model_selection import StratifiedKFold

    ids, labels = list(ids), list(labels)
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids must be unique")
    counts = {c: labels.count(c) for c in set(labels)}
    small = {c: n for c, n in counts.items() if n < k}
    if small:
        raise ValueError(f"stratified {k}-fold needs >= {k} samples per class; too few: {small}")
    order = np.argsort(ids, kind="stable")  # independent of the order the samples were listed in
    y = np.array(labels)[order]
    folds = {}
    for f, (_, test) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)):
        for i in test:
            folds[ids[order[i]]] = f
    return folds


def folds_digest(folds: dict[str, int]) -> str:
    return hashlib.sha256(json.dumps(sorted(folds.items())).encode()).hexdigest()[:16]


def save_folds(folds: dict[str, int], path: str | Path, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "digest": folds_digest(folds), "folds": dict(sorted(folds.items()))},
                               indent=1))
    return path


def load_folds(path: str | Path) -> dict[str, int]:
    data = json.loads(Path(path).read_text())
    folds = {k: int(v) for k, v in data["folds"].items()}
    if folds_digest(folds) != data["digest"]:
        raise ValueError(f"{path}: fold file damaged (digest mismatch)")
    return folds
