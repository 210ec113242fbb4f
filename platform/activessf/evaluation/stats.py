"""Paired t-tests over folds (NOTES 11): the same folds, method A vs method B.

``paired_ttest`` is the paper's test (Table II). Over cross-validation folds its differences are not
independent (the training sets overlap), so it overstates certainty; ``corrected_ttest`` is Nadeau and
Bengio's (2003) corrected resampled t-test for r repetitions of k-fold cross-validation, which inflates
the variance by the test/train size ratio, with a 95% confidence interval of the mean difference.
"""

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


def corrected_ttest(a: Sequence[float], b: Sequence[float], test_train_ratio: float, level: float = 0.95) -> dict:
    """Nadeau-Bengio corrected resampled t-test of b vs a over n = r x k paired folds.

    t = mean(d) / sqrt((1/n + n_test/n_train) * var(d)) with d = b - a and var the sample variance
    (ddof 1), n - 1 degrees of freedom; for k-fold CV ``test_train_ratio`` = 1 / (k - 1). Returns t, the
    two-sided p, the mean difference and its ``level`` confidence interval.
    """
    from scipy.stats import t as student

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"the corrected t-test needs two equal-length runs of >= 2 folds, got {len(a)} and {len(b)}")
    d = b - a
    n, mean = len(d), float(d.mean())
    se = float(np.sqrt((1.0 / n + test_train_ratio) * d.var(ddof=1)))
    half = float(student.ppf(0.5 + level / 2, n - 1)) * se
    if se == 0.0:
        return {"t": 0.0 if mean == 0 else float("inf") * np.sign(mean), "p": 1.0 if mean == 0 else 0.0,
                "mean_diff": mean, "ci": [mean, mean]}
    t = mean / se
    return {"t": t, "p": float(2 * student.sf(abs(t), n - 1)), "mean_diff": mean, "ci": [mean - half, mean + half]}


def mark(p: float, level: float = 0.05) -> str:
    """Table II's significance mark."""
    return "*" if p < level else ""
