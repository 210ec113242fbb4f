"""Did selection enrich the rare subtypes and drop the distractors? Compared with random selection.

Pure code on arrays: every region carries the class of the ground-truth cell it
matches (or ``distractor``) and whether it was selected.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

DISTRACTOR = "distractor"  # a region matching no cell of interest
UNLABELLED = "unlabelled"  # a cell of interest whose subtype is unknown: neither rare nor distractor


def share(classes: np.ndarray, mask: np.ndarray, members: set) -> float:
    picked = classes[mask]
    return float(np.isin(picked, list(members)).mean()) if len(picked) else float("nan")


def selection_evidence(classes: np.ndarray, selected: np.ndarray, rare: set, draws: int = 1000, seed: int = 0) -> dict:
    """Rare-subtype enrichment and distractor share, selected vs all filtered vs random of the same size.

    ``classes`` (M,) holds each region's class (or ``distractor``), ``selected``
    (M,) the decision. Random selection draws the same number of regions
    without replacement ``draws`` times (seeded) and reports the mean and the
    2.5-97.5% range.
    """
    classes = np.asarray(classes, dtype=object)
    selected = np.asarray(selected, bool)
    everything = np.ones(len(classes), bool)
    real = (classes != DISTRACTOR) & (classes != UNLABELLED)
    out = {
        "regions": int(len(classes)),
        "selected": int(selected.sum()),
        "rare_classes": sorted(rare),
        "counts_filtered": dict(sorted(Counter(classes.tolist()).items())),
        "counts_selected": dict(sorted(Counter(classes[selected].tolist()).items())),
        "rare_share_filtered": share(classes, everything & real, rare),
        "rare_share_selected": share(classes, selected & real, rare),
        "distractor_share_filtered": share(classes, everything, {DISTRACTOR}),
        "distractor_share_selected": share(classes, selected, {DISTRACTOR}),
    }
    out["rare_enrichment"] = _ratio(out["rare_share_selected"], out["rare_share_filtered"])
    rng = np.random.default_rng(seed)
    k = int(selected.sum())
    rare_r, dis_r, enr_r = [], [], []
    for _ in range(draws if 0 < k < len(classes) else 0):
        mask = np.zeros(len(classes), bool)
        mask[rng.choice(len(classes), size=k, replace=False)] = True
        rare_r.append(share(classes, mask & real, rare))
        dis_r.append(share(classes, mask, {DISTRACTOR}))
        enr_r.append(_ratio(rare_r[-1], out["rare_share_filtered"]))
    out["random"] = {"draws": len(rare_r), **_summary("rare_share", rare_r), **_summary("distractor_share", dis_r),
                     **_summary("rare_enrichment", enr_r)}
    return out


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b and not np.isnan(a) and not np.isnan(b) else float("nan")


def _summary(name: str, values: list) -> dict:
    v = np.array([x for x in values if not np.isnan(x)])
    if not len(v):
        return {f"{name}_mean": None, f"{name}_p2_5": None, f"{name}_p97_5": None}
    return {f"{name}_mean": float(v.mean()), f"{name}_p2_5": float(np.quantile(v, 0.025)),
            f"{name}_p97_5": float(np.quantile(v, 0.975))}


def json_safe(obj):
    """``obj`` with every NaN (a share of nothing, a ratio to zero) as None: valid JSON, comparable."""
    if isinstance(obj, float) and np.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    return obj
