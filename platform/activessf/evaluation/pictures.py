"""The fine-tuning run's pictures, from its held-out predictions: per-class precision-recall curves and a
gallery of the most confidently misclassified cells.

    pr_curves.png       one curve per class, pooled over every held-out split (and repeat), AP in the legend
    misclassified.png   the cells predicted wrong with the highest confidence: true, predicted, confidence

Pooled AP is over all held-out predictions at once; ``metrics.json``'s PR-AUC is the mean of the per-split
values, so the two differ a little.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..imageio import read_rgb, write_png
from ..viz import captioned_grid, pr_curves_figure

PICTURES = ("pr_curves.png", "misclassified.png")


def prediction_arrays(table: pa.Table, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, true class index, probabilities (N, C)) of a predictions table (``p_<class>`` columns)."""
    ids = table.column("id").to_pylist()
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[lab] for lab in table.column("label").to_pylist()], np.int64)
    probs = np.stack([table.column(f"p_{c}").to_numpy() for c in classes], axis=1) if len(ids) else \
        np.zeros((0, len(classes)))
    return ids, y, probs


def confident_mistakes(ids: list[str], y: np.ndarray, probs: np.ndarray,
                       n: int = 24) -> list[tuple[str, int, int, float]]:
    """The ``n`` misclassified cells with the highest predicted-class probability, each cell once (its most
    confident mistake over repeats): [(id, true, predicted, confidence), ...], most confident first."""
    if len(ids) == 0:
        return []
    pred = probs.argmax(1)
    conf = probs.max(1)
    best: dict[str, tuple[str, int, int, float]] = {}
    for i in np.flatnonzero(pred != y):
        if ids[i] not in best or conf[i] > best[ids[i]][3]:
            best[ids[i]] = (ids[i], int(y[i]), int(pred[i]), float(conf[i]))
    return sorted(best.values(), key=lambda r: (-r[3], r[0]))[:n]


def write_pictures(out: str | Path, predictions: str | Path, classes: list[str], image_dir: Optional[str | Path],
                   prefix: str = "", n: int = 24) -> dict:
    """``<prefix>pr_curves.png`` and ``<prefix>misclassified.png`` in ``out``, from a ``predictions.parquet``;
    cell images are ``image_dir / id`` (a missing or unreadable one shows as a grey tile). Returns per-class
    pooled AP and the number of misclassified cells."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids, y, probs = prediction_arrays(pq.read_table(predictions), classes)
    title = f"precision-recall per class\npooled over the held-out splits ({len(ids)} predictions)"
    aps = pr_curves_figure(y, probs, classes, out / f"{prefix}pr_curves.png", title=title)
    mistakes = confident_mistakes(ids, y, probs, n)
    images, captions = [], []
    for cid, true, pred, conf in mistakes:
        images.append(_cell(Path(image_dir) / cid if image_dir is not None else None))
        captions.append(f"true {classes[true]}\npred {classes[pred]}\nconf {conf:.2f}")
    wrong = len({ids[i] for i in np.flatnonzero(probs.argmax(1) != y)}) if len(ids) else 0
    write_png(out / f"{prefix}misclassified.png",
              captioned_grid(images, captions, empty="no misclassified cells"))
    return {"pooled_ap": aps, "misclassified_cells": wrong, "shown": len(mistakes)}


def run_pictures(run_dir: str | Path, out: str | Path, prefix: str = "") -> Optional[dict]:
    """:func:`write_pictures` for a finished `finetune` output (its predictions, classes and labelled set);
    None when it has no predictions."""
    run_dir = Path(run_dir)
    if not (run_dir / "predictions.parquet").is_file():
        return None
    classes = json.loads((run_dir / "metrics.json").read_text())["classes"]
    labelled = json.loads((run_dir / "folds.json").read_text()).get("labelled")
    return write_pictures(out, run_dir / "predictions.parquet", classes, image_root(labelled), prefix)


def image_root(labelled: Optional[str | Path]) -> Optional[Path]:
    """Where a labelled set's ids are relative to: the ImageFolder itself, or the CSV's folder."""
    if labelled is None:
        return None
    labelled = Path(labelled)
    return labelled if labelled.is_dir() else labelled.parent


def _cell(path: Optional[Path]) -> np.ndarray:
    try:
        return read_rgb(path) if path is not None else _missing()
    except (OSError, ValueError):
        return _missing()


def _missing() -> np.ndarray:
    return np.full((32, 32, 3), 200, np.uint8)
