"""Stratified k-fold assignments, repeated with different seeds, written once and reused so that compared
runs see identical splits (NOTES 11).

Repeat r of ``evaluate.repeats`` is the stratified k-fold assignment with seed ``evaluate.seed + r``: repeat 0
is the single assignment of a plain k-fold run, so ``repeats: 1`` gives the folds and the digest that run
always had. A class with fewer than k members is held out in fewer than k folds of each repeat; which
splits lack it is recorded (:func:`fold_coverage`) rather than refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence, Union

import numpy as np

Assignment = dict[str, int]  # sample id -> held-out fold (0..k-1)
Folds = Union[Assignment, Sequence[Assignment]]  # one assignment, or one per repeat


def stratified_test_folds(y: np.ndarray, k: int, rng: np.random.RandomState) -> np.ndarray:
    """The held-out fold (N,) of every sample of labels ``y`` (N,).

    scikit-learn's ``StratifiedKFold(k, shuffle=True)`` allocation (round robin over the samples sorted
    by class, classes numbered by first appearance, then each class's folds shuffled), which gives the
    same folds for the same ``rng``; unlike it, this also takes sets where every class has fewer than k
    members. A class of n < k members lands in n folds.
    """
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    code = np.unique(first, return_inverse=True)[1][inverse]  # (N,) class index by first appearance
    n_classes = len(first)
    ordered = np.sort(code)
    allocation = np.array([np.bincount(ordered[i::k], minlength=n_classes) for i in range(k)])  # (k, C)
    folds = np.empty(len(y), int)
    for c in range(n_classes):
        per_class = np.arange(k).repeat(allocation[:, c])
        rng.shuffle(per_class)
        folds[code == c] = per_class
    return folds


def assign_folds(ids: Sequence[str], labels: Sequence[str], k: int, seed: int) -> Assignment:
    """id -> fold (0..k-1), stratified by label, deterministic for (ids, labels, k, seed) whatever the order
    the samples are listed in. Classes with fewer than ``k`` members are allowed (see the module docstring)."""
    ids, labels = list(ids), list(labels)
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids must be unique")
    if len(ids) < k:
        raise ValueError(f"{len(ids)} samples cannot fill {k} folds: label more samples or lower evaluate.folds "
                         f"(at most {len(ids)})")
    order = np.argsort(ids, kind="stable")  # independent of the order the samples were listed in
    test = stratified_test_folds(np.array(labels)[order], k, np.random.RandomState(seed))
    return {ids[i]: int(f) for i, f in zip(order, test)}


def repeated_folds(ids: Sequence[str], labels: Sequence[str], k: int, repeats: int, seed: int) -> list[Assignment]:
    """``repeats`` stratified k-fold assignments, repeat r with seed ``seed + r``."""
    return [assign_folds(ids, labels, k, seed + r) for r in range(repeats)]


def as_repeats(folds: Folds) -> list[Assignment]:
    return [folds] if isinstance(folds, dict) else list(folds)


def folds_digest(folds: Folds) -> str:
    """Digest of every repeat's assignment; one repeat digests as a single assignment always did."""
    repeats = as_repeats(folds)
    body = sorted(repeats[0].items()) if len(repeats) == 1 else [sorted(f.items()) for f in repeats]
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]


def fold_coverage(folds: Folds, ids: Sequence[str], labels: Sequence[str], k: int) -> dict:
    """``small_classes`` (class -> members, for classes with fewer than ``k``) and ``absent_classes``
    (class -> the ``[repeat, fold]`` splits whose held-out part has none of it)."""
    repeats = as_repeats(folds)
    held = {(r, f): set() for r in range(len(repeats)) for f in range(k)}
    for r, assignment in enumerate(repeats):
        for i, label in zip(ids, labels):
            held[r, assignment[i]].add(label)
    counts = {c: list(labels).count(c) for c in sorted(set(labels))}
    absent = {c: [[r, f] for (r, f), present in sorted(held.items()) if c not in present] for c in counts}
    return {"small_classes": {c: n for c, n in counts.items() if n < k},
            "absent_classes": {c: splits for c, splits in absent.items() if splits}}


def save_folds(folds: Folds, path: str | Path, meta: dict) -> Path:
    """``folds.json``: ``meta``, ``repeats``, the digest and ``folds`` (id -> fold for one repeat, as ever;
    a list of those, one per repeat, for more)."""
    path, repeats = Path(path), as_repeats(folds)
    body = dict(sorted(repeats[0].items())) if len(repeats) == 1 else [dict(sorted(f.items())) for f in repeats]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "repeats": len(repeats), "digest": folds_digest(repeats), "folds": body},
                               indent=1))
    return path


def load_folds(path: str | Path) -> tuple[list[Assignment], dict]:
    """(one assignment per repeat, the file's other fields) of a ``folds.json``, also one written before
    repeats existed (a single assignment)."""
    data = json.loads(Path(path).read_text())
    folds = [{i: int(f) for i, f in a.items()} for a in as_repeats(data.pop("folds"))]
    if folds_digest(folds) != data["digest"]:
        raise ValueError(f"{path}: fold file damaged (digest mismatch)")
    return folds, data
