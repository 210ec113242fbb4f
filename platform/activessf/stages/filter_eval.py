"""``activessf filter-eval``: a filter output scored against annotated boxes (and logged)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from ..config import Config
from ..data.annotations import image_key, load_boxes
from ..regions.evaluate import evaluate, group_regions
from ..regions.records import read_table
from ..stage import StageResult, log_results, stage_run

METRICS = ("recall", "precision", "mean_matched_iou", "matched", "regions", "truth_boxes")


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


def run_filter_eval(cfg: Config, regions: str | Path, boxes: str | Path, out: Optional[str | Path] = None, *,
                    label: Optional[str] = None, iou: float = 0.3) -> StageResult:
    """Score the filter output ``regions`` against ``boxes``; the report goes to ``out`` (a JSON file,
    default ``REGIONS/eval_<label>.json``) and to an MLflow run."""
    report = evaluate_output(regions, boxes, label, iou)
    path = Path(out) if out else Path(regions) / f"eval_{report['label']}.json"
    path.write_text(json.dumps(report, indent=2))
    params = {"label": report["label"], "iou_threshold": report["iou_threshold"], "regions": str(regions)}
    with stage_run(cfg, "filter-eval", params, run_name=f"filter-eval-{report['label']}") as run:
        log_results(path.parent, {k: report[k] for k in METRICS}, [path.name])
    return StageResult("filter-eval", path.parent.resolve(), report, run.info.run_id, (path.name,))
