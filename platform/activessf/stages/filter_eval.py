"""``activessf filter-eval``: a filter output scored against annotated boxes (and logged)."""

from __future__ import annotations

import math
from pathlib import Path

from ..data.annotations import image_key, load_boxes
from ..regions.evaluate import evaluate, group_regions
from .filter import read_table


def evaluate_output(regions_dir: str | Path, boxes: str | Path, label: str | None, iou: float) -> dict:
    truth = load_boxes(boxes)
    if label is None:
        synthetic = Path(boxes).suffix == ".json" or (Path(boxes) / "ground_truth.json").exists()
        label = "megakaryocyte" if synthetic else "WBC"
    known = {o[0] for objs in truth.values() for o in objs}
    if label not in known:
        raise ValueError(f"label {label!r} is not in the annotations; labels there: {', '.join(sorted(known))}")
    t = read_table(regions_dir, "regions", ["source", "x", "y", "w", "h"]).to_pydict()
    boxes_xywh = list(zip(t["x"], t["y"], t["w"], t["h"]))
    report = evaluate(group_regions(t["source"], boxes_xywh, image_key), truth, label, iou).as_dict()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}


def log_eval(report: dict, path: Path) -> None:
    import mlflow

    with mlflow.start_run(run_name=f"filter-eval-{report['label']}", nested=mlflow.active_run() is not None):
        mlflow.log_params({"label": report["label"], "iou_threshold": report["iou_threshold"]})
        mlflow.log_metrics({k: v for k, v in report.items()
                            if k in ("recall", "precision", "mean_matched_iou", "matched", "regions", "truth_boxes")
                            and v is not None})
        mlflow.log_artifact(str(path))
