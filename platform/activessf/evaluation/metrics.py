"""The paper's metrics (NOTES 12) with scikit-learn: accuracy, macro PR-AUC, macro F1, per class, confusion."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def fold_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Metrics of one fold. ``probs`` (N, C) are class probabilities; ``y_true`` indices into ``classes``.

    PR-AUC per class is one-vs-rest average precision; macro PR-AUC is their
    unweighted mean over the classes present in the fold. F1 is macro F1.
    """
    from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, f1_score

    y = np.asarray(y_true)
    pred = probs.argmax(1)
    per_class = {}
    for c, name in enumerate(classes):
        positives = y == c
        per_class[name] = float(average_precision_score(positives, probs[:, c])) if positives.any() else None
    present = [v for v in per_class.values() if v is not None]
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "pr_auc": float(np.mean(present)) if present else float("nan"),
        "f1": float(f1_score(y, pred, average="macro", labels=np.unique(y), zero_division=0)),
        "pr_auc_per_class": per_class,
        "confusion": confusion_matrix(y, pred, labels=list(range(len(classes)))).tolist(),
        "n": int(len(y)),
    }


def summarise(folds: list[dict], classes: Sequence[str]) -> dict:
    """Mean and sample std over folds of every summary metric and every class's PR-AUC."""
    out = {}
    for key in ("accuracy", "pr_auc", "f1"):
        v = np.array([f[key] for f in folds], float)
        out[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "folds": v.tolist()}
    out["pr_auc_per_class"] = {}
    for name in classes:
        v = np.array([f["pr_auc_per_class"][name] for f in folds if f["pr_auc_per_class"][name] is not None], float)
        out["pr_auc_per_class"][name] = {"mean": float(v.mean()) if len(v) else None,
                                         "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "folds": v.tolist()}
    out["confusion"] = np.sum([np.array(f["confusion"]) for f in folds], axis=0).tolist()
    return out


def class_groups(counts: dict[str, int], rare_share: float, common_share: float) -> dict[str, str]:
    """rare / medium / common by each class's share of the labelled set."""
    total = sum(counts.values())
    return {c: "rare" if n / total < rare_share else "common" if n / total > common_share else "medium"
            for c, n in counts.items()}
