"""``activessf select-eval``: a selection scored against ground truth (synthetic or VOC + image labels)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from ..data.annotations import image_key, load_boxes
from ..regions.evaluate import iou_matrix
from ..selection.evaluate import DISTRACTOR, UNLABELLED, json_safe, selection_evidence


def region_classes(regions_dir: str | Path, boxes: str | Path | dict, label: str, iou: float = 0.3,
                   image_labels: Optional[dict[str, str]] = None) -> dict[str, str]:
    """region_id -> the subtype of the ``label`` cell it overlaps best (IoU >= ``iou``), else ``distractor``
    (``unlabelled`` when it is such a cell but its subtype is unknown).

    ``boxes`` is a path :func:`load_boxes` reads, or what it returns (e.g. ``load_masks``'s boxes).
    The subtype is the synthetic cell's own, or ``image_labels[image]`` for data
    (like BCCD) whose subtype labels name the image.
    """
    truth = boxes if isinstance(boxes, dict) else load_boxes(boxes)
    t = pq.read_table(Path(regions_dir) / "regions", columns=["region_id", "source", "x", "y", "w", "h"]).to_pydict()
    out = {}
    for i, rid in enumerate(t["region_id"]):
        key = image_key(t["source"][i])
        cells = [o for o in truth.get(key, []) if o[0] == label]
        box = np.array([[t["x"][i], t["y"][i], t["w"][i], t["h"][i]]])
        m = iou_matrix(box, np.array([o[1] for o in cells]).reshape(-1, 4))
        if m.size and m.max() >= iou:
            sub = cells[int(m.argmax())][2] if image_labels is None else image_labels.get(key)
            out[rid] = sub if sub is not None else UNLABELLED
        else:
            out[rid] = DISTRACTOR
    return out


def read_image_labels(path: str | Path) -> dict[str, str]:
    """A CSV of image,subtype (e.g. BCCD's wbc_subtypes.csv) as {image stem: subtype}."""
    with open(path, newline="") as fh:
        return {image_key(r["image"]): r["subtype"] for r in csv.DictReader(fh)}


def evaluate_selection(selection_dir: str | Path, regions_dir: str | Path, boxes: str | Path, label: str,
                       rare: set, image_labels: Optional[str | Path] = None, iou: float = 0.3,
                       seed: int = 0) -> dict:
    labels = read_image_labels(image_labels) if image_labels else None
    classes = region_classes(regions_dir, boxes, label, iou, labels)
    sel = pq.read_table(Path(selection_dir) / "selection", columns=["region_id", "selected"]).to_pydict()
    cls = np.array([classes[r] for r in sel["region_id"]], dtype=object)
    report = selection_evidence(cls, np.array(sel["selected"], bool), rare, seed=seed)
    return json_safe(report)
