"""Probes: how well frozen features separate the labelled classes (the sweep's objective).

A linear probe (logistic regression on standardised features) or a k-NN probe
(distance-weighted votes) is fitted on the training part of a fixed fold and
scored on its held-out part with the paper's metrics (macro PR-AUC first).
Pure scikit-learn; the features come from whatever encoder the caller used.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .metrics import fold_metrics


def probe_scores(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    kind: Literal["linear", "knn"] = "linear",
    k: int = 5,
) -> dict:
    """Metrics of a probe fitted on (train_x (N, D), train_y (N,)) and scored on the test part.

    Returns accuracy, macro PR-AUC and macro F1 (``fold_metrics``); class
    probabilities cover ``num_classes`` even when a class is absent from training.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError(f"a probe needs training and test samples, got {len(train_x)} and {len(test_x)}")
    if kind == "linear":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    elif kind == "knn":
        model = make_pipeline(StandardScaler(), KNeighborsClassifier(min(k, len(train_x)), weights="distance"))
    else:
        raise ValueError(f"probe kind must be linear or knn, got {kind!r}")
    model.fit(np.asarray(train_x, np.float64), train_y)
    probs = np.zeros((len(test_x), num_classes))
    probs[:, model.classes_] = model.predict_proba(np.asarray(test_x, np.float64))
    m = fold_metrics(test_y, probs, [str(c) for c in range(num_classes)])
    return {"accuracy": m["accuracy"], "pr_auc": m["pr_auc"], "f1": m["f1"]}
