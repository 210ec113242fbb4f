"""Paired t-tests over folds (NOTES 11): the same folds, method A vs method B."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> dict:
    """scipy's paired t-test of b vs a over folds: t, p, mean difference (b - a)."""
    from scipy.stats import ttest_rel

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"paired t-test needs two equal-length runs of >= 2 folds, got {len(a)} and {len(b)}")
    if np.allclose(a, b):
        return {"t": 0.0, "p": 1.0, "mean_diff": 0.0}
    res = ttest_rel(b, a)
    return {"t": float(res.statistic), "p": float(res.pvalue), "mean_diff": float((b - a).mean())}


def mark(p: float, level: float = 0.05) -> str:
    """Table II's significance mark."""
    return "*" if p < level else ""
