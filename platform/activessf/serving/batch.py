"""Batch prediction, pure: one smear field in, its cells' subtypes out; the differential count; overlays.

No Ray, no MLflow (``stages/predict.py`` is the Ray Data wrapper). A field is
decoded, the region filter finds its cells and the classifier gives every cell
its class probabilities, exactly as the served model does
(:class:`~activessf.serving.classifier.CellClassifier`). A field that cannot be
decoded or processed becomes one error row with its reason; the others go on.

Every field gives rows of one table (``ROWS``) told apart by ``kind``:
``cell`` (box, subtype, confidence, probabilities), ``field`` (size, cells,
count per class, the overlay PNG when asked for) or ``error`` (stage, code, reason).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from typing import Optional, Sequence

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..data.decode import BadImage, decode_image
from ..imageio import encode_png
from .classifier import CellClassifier

ROWS = pa.schema([
    ("kind", pa.string()),  # cell | field | error
    ("source", pa.string()),
    ("cell", pa.int32()),  # cell index within the field
    ("x", pa.int32()), ("y", pa.int32()), ("w", pa.int32()), ("h", pa.int32()),
    ("subtype", pa.string()),
    ("confidence", pa.float32()),
    ("probs", pa.list_(pa.float32())),  # (C,) in the model's class order
    ("width", pa.int32()), ("height", pa.int32()),
    ("cells", pa.int32()),
    ("counts", pa.list_(pa.int32())),  # (C,) cells per class in this field
    ("seconds", pa.float32()),
    ("overlay", pa.binary()),  # PNG, for the fields sampled for overlays
    ("stage", pa.string()), ("code", pa.string()), ("error", pa.string()),
])
ERROR_COLUMNS = ["source", "stage", "code", "error"]


def error_row(source: str, stage: str, code: str, reason: str) -> dict:
    return {"kind": "error", "source": source, "stage": stage, "code": code, "error": reason}


def predict_field(data: bytes, source: str, clf: CellClassifier, overlay: bool = False) -> list[dict]:
    """The rows of one encoded field (see the module docstring); never raises for bad input."""
    started = time.perf_counter()
    try:
        rgb = decode_image(data, clf.filter_cfg.max_pixels)
    except BadImage as exc:
        return [error_row(source, exc.stage, exc.code, str(exc))]
    try:
        found = clf.cells(rgb, "field")
        probs = clf.probabilities([c for _, c in found])  # (N, C)
    except Exception as exc:  # a bug or an input we did not foresee: recorded, not fatal
        return [error_row(source, "predict", "predict_failed", f"{type(exc).__name__}: {exc}")]
    boxes = [b for b, _ in found]
    labels = probs.argmax(1) if len(probs) else np.zeros(0, int)
    rows = [{"kind": "cell", "source": source, "cell": j, "x": int(x), "y": int(y), "w": int(w), "h": int(h),
             "subtype": clf.classes[int(k)], "confidence": float(p[k]), "probs": p.tolist()}
            for j, ((x, y, w, h), p, k) in enumerate(zip(boxes, probs, labels))]
    counts = np.bincount(labels, minlength=len(clf.classes))
    picture = encode_png(draw_overlay(rgb, boxes, labels, clf.classes)) if overlay else None
    rows.append({"kind": "field", "source": source, "width": rgb.shape[1], "height": rgb.shape[0],
                 "cells": len(boxes), "counts": counts.tolist(), "overlay": picture,
                 "seconds": time.perf_counter() - started})
    return rows


def to_table(rows: Sequence[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), ROWS)


# ------------------------------------------------------------------ tables of an output


def cells_table(rows: pa.Table, classes: Sequence[str]) -> pa.Table:
    """One row per cell: source, cell, x, y, w, h, subtype, confidence, ``p_<class>`` per class; sorted."""
    cells = rows.filter(pc.equal(rows["kind"], "cell")).sort_by([("source", "ascending"), ("cell", "ascending")])
    probs = np.asarray(cells["probs"].to_pylist(), np.float32).reshape(len(cells), len(classes))
    out = cells.select(["source", "cell", "x", "y", "w", "h", "subtype", "confidence"])
    for i, c in enumerate(classes):
        out = out.append_column(f"p_{c}", pa.array(probs[:, i]))
    return out


def fields_table(rows: pa.Table, classes: Sequence[str]) -> pa.Table:
    """The differential count: per field its size, cells, ``n_<class>`` and ``share_<class>`` (null
    without cells); sorted by source."""
    fields = rows.filter(pc.equal(rows["kind"], "field")).sort_by("source")
    counts = np.asarray(fields["counts"].to_pylist(), np.int64).reshape(len(fields), len(classes))
    total = counts.sum(1)
    out = fields.select(["source", "width", "height", "cells"])
    for i, c in enumerate(classes):
        out = out.append_column(f"n_{c}", pa.array(counts[:, i]))
    for i, c in enumerate(classes):
        share = [float(n / t) if t else None for n, t in zip(counts[:, i], total)]
        out = out.append_column(f"share_{c}", pa.array(share, pa.float64()))
    return out.append_column("seconds", fields["seconds"])


def errors_table(rows: pa.Table) -> pa.Table:
    return rows.filter(pc.equal(rows["kind"], "error")).select(ERROR_COLUMNS).sort_by("source")


def differential(cells: pa.Table, classes: Sequence[str]) -> dict:
    """Cells per subtype and their shares over every field (the run's differential count)."""
    counts = Counter(cells["subtype"].to_pylist())
    total = sum(counts.values())
    return {"cells_by_subtype": {c: counts.get(c, 0) for c in classes},
            "share_by_subtype": {c: round(counts.get(c, 0) / total, 4) if total else None for c in classes}}


def overlay_sample(n: int, overlays: int | str) -> set[int]:
    """Indices of the fields (of ``n``, sorted) that get an overlay: ``all``, or ``overlays`` spread evenly."""
    if overlays == "all":
        return set(range(n))
    k = min(int(overlays), n)
    if k <= 0:
        return set()
    return {0} if k == 1 else {round(i * (n - 1) / (k - 1)) for i in range(k)}


def overlay_names(sources: Sequence[str]) -> dict[str, str]:
    """A PNG file name per source: its stem made safe, with a hash of the full name where stems repeat."""
    stems = {s: re.sub(r"[^A-Za-z0-9._-]+", "_", s.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0])
             for s in sources}
    seen = Counter(stems.values())
    return {s: (st if seen[st] == 1 else f"{st}-{hashlib.sha1(s.encode()).hexdigest()[:8]}") + ".png"
            for s, st in stems.items()}


# ------------------------------------------------------------------ overlays

# distinct colours (RGB) for up to 20 classes, then repeated
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
           (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (0, 0, 128),
           (219, 219, 141), (158, 218, 229)]


def colour(k: int) -> tuple[int, int, int]:
    return PALETTE[k % len(PALETTE)]


def draw_overlay(rgb: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], labels: Sequence[int],
                 classes: Sequence[str], max_side: int = 1600) -> np.ndarray:
    """The field (downscaled to ``max_side`` at most) with every box in its subtype's colour, and a
    legend panel on its right: the cells found and, per subtype, its colour and count."""
    scale = min(1.0, max_side / max(rgb.shape[:2]))
    img = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb.copy()
    thick = max(2, round(max(img.shape[:2]) / 320))
    for (x, y, w, h), k in zip(boxes, labels):
        p0, p1 = (round(x * scale), round(y * scale)), (round((x + w) * scale) - 1, round((y + h) * scale) - 1)
        cv2.rectangle(img, p0, p1, colour(int(k)), thick)
    panel = legend(classes, np.bincount(np.asarray(labels, int), minlength=len(classes)), img.shape[0])
    if panel.shape[0] > img.shape[0]:  # many classes on a small field: white below the field
        img = np.vstack([img, np.full((panel.shape[0] - img.shape[0], *img.shape[1:]), 255, np.uint8)])
    return np.hstack([img, panel])


def legend(classes: Sequence[str], counts: np.ndarray, height: int) -> np.ndarray:
    """A white panel (``height`` tall, or taller for many classes): total cells, then swatch, name, count."""
    font, size, line = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 18
    lines = [f"{int(counts.sum())} cells"] + [f"{c}  {int(n)}" for c, n in zip(classes, counts)]
    width = 34 + max(cv2.getTextSize(t, font, size, 1)[0][0] for t in lines) + 10
    panel = np.full((max(height, line * (len(lines) + 1)), width, 3), 255, np.uint8)
    cv2.putText(panel, lines[0], (8, line), font, size, (20, 20, 20), 1, cv2.LINE_AA)
    for i, text in enumerate(lines[1:]):
        y = line * (i + 2)
        cv2.rectangle(panel, (8, y - 11), (22, y + 1), colour(i), -1)
        cv2.putText(panel, text, (30, y), font, size, (20, 20, 20) if counts[i] else (150, 150, 150), 1,
                    cv2.LINE_AA)
    return panel


def mean_confidence(cells: pa.Table) -> Optional[float]:
    return round(float(pc.mean(cells["confidence"]).as_py()), 4) if len(cells) else None
