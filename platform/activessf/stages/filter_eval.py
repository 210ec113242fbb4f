"""``activessf filter-eval``: a filter output scored against annotated boxes or segmentation masks (and logged)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from ..config import Config
from ..data.annotations import MASK_LABEL, image_key, load_boxes, load_masks
from ..regions.evaluate import evaluate, group_regions
from ..regions.records import read_table
from ..stage import StageResult, log_results, stage_run

METRICS = ("recall", "precision", "mean_matched_iou", "matched", "regions", "truth_boxes")


def evaluate_output(regions_dir: str | Path, boxes: str | Path | None, label: str | None, iou: float,
                    masks: str | Path | None = None) -> dict:
    """The report of the regions in ``regions_dir`` against ``boxes`` (VOC, synthetic ground truth) or
    ``masks`` (a directory of segmentation masks, one per image: non-zero = cell, labelled "cell")."""
    if (boxes is None) == (masks is None):
        raise ValueError("give either --boxes (VOC annotations or a synthetic ground truth) or --masks (a directory "
                         "of segmentation masks)")
    truth = load_masks(masks) if masks is not None else load_boxes(boxes)
    if label is None and masks is not None:
        label = MASK_LABEL
    elif label is None:
        synthetic = Path(boxes).suffix == ".json" or (Path(boxes) / "ground_truth.json").exists()
        label = "megakaryocyte" if synthetic else "WBC"
    known = {o[0] for objs in truth.values() for o in objs}
    if label not in known:
        raise ValueError(f"label {label!r} is not in the annotations; labels there: {', '.join(sorted(known))}")
    t = read_table(regions_dir, "regions", ["source", "x", "y", "w", "h"]).to_pydict()
    boxes_xywh = list(zip(t["x"], t["y"], t["w"], t["h"]))
    report = evaluate(group_regions(t["source"], boxes_xywh, image_key), truth, label, iou).as_dict()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}


def run_filter_eval(cfg: Config, regions: str | Path, boxes: str | Path | None, out: Optional[str | Path] = None, *,
                    label: Optional[str] = None, iou: float = 0.3, masks: str | Path | None = None) -> StageResult:
    """Score the filter output ``regions`` against ``boxes`` or ``masks``; the report goes to ``out`` (a JSON
    file, default ``REGIONS/eval_<label>.json``) and to an MLflow run."""
    report = evaluate_output(regions, boxes, label, iou, masks)
    path = Path(out) if out else Path(regions) / f"eval_{report['label']}.json"
    path.write_text(json.dumps(report, indent=2))
    params = {"label": report["label"], "iou_threshold": report["iou_threshold"], "regions": str(regions)}
    with stage_run(cfg, "filter-eval", params, run_name=f"filter-eval-{report['label']}") as run:
        log_results(path.parent, {**{k: report[k] for k in METRICS},
                                  **{f"best_iou_{q}": v for q, v in report["best_iou_quantiles"].items()}}, [path.name])
    return StageResult("filter-eval", path.parent.resolve(), report, run.info.run_id, (path.name,))
