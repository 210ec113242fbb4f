"""Split the labelled set once into a part to learn from and a part to evaluate on (``activessf split``).

    activessf split --labelled DIR|CSV --out SPLIT [--share 0.3] [--seed 0]

Supervised features (``activessf features``) and a selection sweep's probe (``activessf sweep``) learn
from labelled cells; what fine-tuning and the ablation evaluate must not include them. The split gives
``SPLIT/tune.csv`` for the former and ``SPLIT/eval.csv`` for the latter. Per class, a seeded random
``share`` of the cells goes to tune; a class whose evaluation part would keep fewer than
``min_per_class`` cells (so that every fold can hold one out) goes wholly to eval. The unit is the cell
(:func:`~activessf.data.labelled.cell_id`, the image's content): copies of one image land on one side.

Output: ``tune.csv`` and ``eval.csv`` (``path,label``, absolute paths) and ``split.json`` (the settings,
each part's cells, digest and class counts, the classes kept for evaluation only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .labelled import cell_id, write_labelled_csv

log = logging.getLogger(__name__)

PARTS = {"tune": "tune.csv", "eval": "eval.csv"}


@dataclass(frozen=True)
class LabelledSplit:
    """Both parts as (path, label) pairs, and the classes too small to split (class -> cells, all in eval)."""

    tune: list[tuple[Path, str]]
    eval: list[tuple[Path, str]]
    eval_only: dict[str, int] = field(default_factory=dict)


def ids_digest(ids: Sequence[str]) -> str:
    """Digest of a set of cell ids (order and repeats do not matter)."""
    return hashlib.sha256(json.dumps(sorted(set(ids))).encode()).hexdigest()[:16]


def tune_count(n: int, share: float, min_eval: int) -> int:
    """Cells of a class of ``n`` that go to tune: ``share`` of them, rounded, or none when the rest would be
    fewer than ``min_eval``."""
    take = math.floor(share * n + 0.5)
    return take if take >= 1 and n - take >= min_eval else 0


def split_labelled(pairs: Sequence[tuple[Path, str]], share: float = 0.3, seed: int = 0,
                   min_per_class: int = 5, ids: Optional[Sequence[str]] = None) -> LabelledSplit:
    """Stratified, seeded split of the labelled ``pairs`` into tune (``share`` of each class) and eval.

    Deterministic for the same cells, whatever their order; each class's draw depends on ``seed`` and its
    own name only. ``ids`` (one cell id per pair) default to the files' content digests.
    """
    if not 0 < share < 1:
        raise ValueError(f"share must be between 0 and 1 (the part to tune on), got {share}")
    ids = list(ids) if ids is not None else [cell_id(p) for p, _ in pairs]
    label_of: dict[str, str] = {}
    for i, (_, label) in zip(ids, pairs):
        label_of.setdefault(i, label)  # copies of one image: one cell, with its first label
    members: dict[str, list[str]] = {}
    for i in sorted(label_of):
        members.setdefault(label_of[i], []).append(i)
    tune, eval_only = set(), {}
    for label, cells in sorted(members.items()):
        take = tune_count(len(cells), share, min_per_class)
        if not take:
            eval_only[label] = len(cells)
            continue
        rng = np.random.default_rng([seed, int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)])
        tune.update(rng.permutation(cells)[:take].tolist())
    if not tune:
        raise ValueError(f"no class has enough cells to give {share:.0%} to tuning and keep {min_per_class} for "
                         "evaluation: label more cells, or lower --min-per-class")
    return LabelledSplit([pr for i, pr in zip(ids, pairs) if i in tune],
                         [pr for i, pr in zip(ids, pairs) if i not in tune], eval_only)


def part_record(pairs: Sequence[tuple[Path, str]], ids: Sequence[str], name: str) -> dict:
    labels = [label for _, label in pairs]
    return {"file": name, "cells": len(set(ids)), "rows": len(pairs), "digest": ids_digest(ids),
            "classes": {c: labels.count(c) for c in sorted(set(labels))}}


def write_split(split: LabelledSplit, out: str | Path, meta: dict) -> dict:
    """``tune.csv``, ``eval.csv`` and ``split.json`` (``meta``, each part's record) in ``out``; returns the record."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {**meta, "eval_only_classes": split.eval_only}
    for part, name in PARTS.items():
        pairs = getattr(split, part)
        write_labelled_csv(pairs, out / name)
        record[part] = part_record(pairs, [cell_id(p) for p, _ in pairs], name)
    (out / "split.json").write_text(json.dumps(record, indent=2))
    if split.eval_only:
        log.warning("too few cells to split, evaluated only (never tuned on): %s",
                    ", ".join(f"{c} ({n})" for c, n in split.eval_only.items()))
    return record


def split_part(labelled: str | Path) -> Optional[tuple[str, Path]]:
    """(``"tune"`` or ``"eval"``, the split's directory) when ``labelled`` is a part written by
    :func:`write_split` (a ``split.json`` beside it names it), else None."""
    path = Path(labelled)
    record = path.parent / "split.json"
    if not (path.is_file() and record.is_file()):
        return None
    files = {json.loads(record.read_text()).get(part, {}).get("file"): part for part in PARTS}
    return (files[path.name], path.parent) if path.name in files else None
