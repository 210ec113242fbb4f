"""``activessf demo``: the whole method on synthetic smears, on this machine.

Each stage of the platform adds itself here, so that ``make demo`` runs the
method end to end. Outputs go under ``<work_dir>/``:

    data/            the synthetic dataset (reused when its settings are unchanged)
    demo/            contact sheet, summary.json, config.yaml
    mlflow.db        the embedded MLflow store (plus mlartifacts/)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from . import pipeline
from .ablation import run_ablation
from .bootstrap import format_rounds
from .config import Config, flatten, save_config
from .data import synth
from .data.synth import ensure_synthetic
from .evaluation.report import format_table2
from .imageio import read_rgb, write_png
from .runtime import shutdown_ray
from .serving.registry import format_decision
from .stage import log_results, stage_run
from .stages.filter import format_summary as filter_summary
from .stages.filter_eval import run_filter_eval
from .stages.select import format_report
from .stages.select_eval import evaluate_selection
from .subtypes import SUBTYPES
from .tracking import tracking_uri, ui_command
from .viz import contact_sheet

log = logging.getLogger(__name__)

__all__ = ["ensure_synthetic", "run_demo", "format_summary"]


def subtype_sheet(record: dict, data_dir: Path, per_row: int = 8) -> np.ndarray:
    """Contact sheet of the labelled crops, one row per subtype."""
    by_type: dict[str, list] = {name: [] for name in SUBTYPES}
    for name, path in synth.iter_labelled(record, data_dir):
        if len(by_type[name]) < per_row:
            by_type[name].append(read_rgb(path))
    return contact_sheet([(name, by_type[name]) for name in SUBTYPES])


def format_stages(stages: dict) -> list[str]:
    """The demo's report, stage by stage (``stages``: each stage's JSON form plus the demo's scores)."""
    lines = []
    if "filter" in stages:
        f, e = stages["filter"], stages["filter"]["eval"]
        lines += ["Stage 1, cell region filtering (paper defaults):", filter_summary(f["summary"]),
                  f"megakaryocytes found: recall {e['recall']:.2f}, precision {e['precision']:.2f} at IoU >= 0.3; "
                  f"regions in {f['output']}", ""]
    if "bootstrap" in stages:
        lines += ["Stages 2-3 on label-free features (bootstrap: an encoder pretrained on every filtered region, "
                  "no labels, embeds the regions and the labelled cells):", format_rounds(stages["bootstrap"]["summary"]),
                  ""]
    if "select" in stages:
        s, e = stages["select"], stages["select"]["evidence"]
        lines += ["Stages 2-3, prototypes and active sample selection:", format_report(s["summary"]),
                  f"distractors among regions {e['distractor_share_filtered']:.2f} -> among selected "
                  f"{(e['distractor_share_selected'] or 0):.2f}; selection in {s['output']}", ""]
    if "pretrain" in stages:
        r, out = stages["pretrain"]["summary"], stages["pretrain"]["output"]
        lines += [f"Stage 4, self-supervised pretraining ({r['method']}, ViT-{r['model']}, {r['rows']} selected "
                  f"regions, {r['epochs']} epochs): final loss {r['final_loss']:.4f}; encoder in "
                  f"{out}/encoder.pt (reconstructions in MLflow, run {r['mlflow_run_id'][:8]})"]
        recon = sorted(Path(out).glob("reconstructions/*.png"))
        lines += [f"reconstructions (originals / masked / reconstructed): {recon[-1]}" if recon else "", ""]
    if "finetune" in stages:
        lines += ["Stage 5, fine-tuning and evaluation (Table II; tiny models, few epochs: plumbing, not accuracy):",
                  stages["finetune"]["table2"], f"report: {stages['finetune']['report']}", ""]
    if "register" in stages:
        lines += ["Model registry (the final fit of the ActiveSSF model on every labelled cell):",
                  format_decision(stages["register"]["summary"]), ""]
    return lines


def format_counts(counts: dict[str, dict[str, int]]) -> str:
    lines = [f"{'subtype':<8} {'in fields':>10} {'labelled':>9}"]
    for name in SUBTYPES:
        lines.append(f"{name:<8} {counts['fields'][name]:>10} {counts['labelled'][name]:>9}")
    lines.append(f"{'total':<8} {sum(counts['fields'].values()):>10} {sum(counts['labelled'].values()):>9}")
    return "\n".join(lines)


def run_demo(cfg: Config, progress: bool = True) -> dict:
    """The whole pipeline on synthetic data, each stage scored against the generator's truth; returns the
    summary record. No stage runs twice: the demo adds the scoring and a from-scratch baseline on the
    pipeline's own folds."""
    started = time.time()
    work = Path(cfg.run.work_dir).resolve()
    data_dir, demo_dir = work / "data", work / "demo"
    record = ensure_synthetic(cfg.synth, data_dir, progress)
    counts = synth.class_counts(record)
    save_config(cfg, demo_dir)
    sheet_path = write_png(demo_dir / "subtypes.png", subtype_sheet(record, data_dir))
    with stage_run(cfg, "demo", flatten(cfg.synth)) as run:
        log_results(demo_dir, {**{f"fields.{k}": v for k, v in counts["fields"].items()},
                               **{f"labelled.{k}": v for k, v in counts["labelled"].items()}},
                    ["config.yaml", sheet_path.name])
        done = pipeline.run_pipeline(cfg, str(data_dir / "smears"), data_dir / "labelled")
        stages = {k: v.to_json() for k, v in done["stages"].items()}
        stages["filter"]["eval"] = dict(run_filter_eval(cfg, work / "regions", data_dir,
                                                        work / "regions" / "eval_megakaryocyte.json",
                                                        label="megakaryocyte").summary)
        selection = Path(done["selection"])
        if "select" not in stages:  # bootstrap rounds: the last round's selection is the pipeline's
            stages["select"] = {"stage": "select", "output": str(selection),
                                "summary": json.loads((selection / "report.json").read_text())}
        stages["select"]["evidence"] = score_selection(work, selection, data_dir)
        stages["finetune"].update(compare_with_scratch(cfg, data_dir, work, selection))
    shutdown_ray()
    summary = {
        "data": str(data_dir),
        "fields": len(record["fields"]),
        "labelled": len(record["labelled"]),
        "counts": counts,
        "contact_sheet": str(sheet_path),
        "stages": stages,
        "ray": done["ray"],
        "mlflow": {"tracking_uri": tracking_uri(work), "run_id": run.info.run_id, "ui": ui_command(work)},
        "seconds": round(time.time() - started, 1),
    }
    (demo_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def score_selection(work: Path, selection: Path, data_dir: Path) -> dict:
    """Stages 2-3 against the truth: rare subtypes and distractors among the selected regions."""
    evidence = evaluate_selection(selection, work / "regions", data_dir, "megakaryocyte", {"CA-MK", "HL-MK"})
    (selection / "evidence.json").write_text(json.dumps(evidence, indent=2))
    return evidence


def compare_with_scratch(cfg: Config, data_dir: Path, work: Path, selection: Path) -> dict:
    """Stage 5's Table II: the ablation's ViT-from-scratch row on the pipeline's folds, against the
    pipeline's fine-tuning of the stage-4 encoder (reused, not retrained)."""
    res = run_ablation(cfg, data_dir / "labelled", work / "ablation", regions=work / "regions",
                       selection=selection, rows=["ViT", "MAE + CRF + ASS"], overwrite=True,
                       finetunes={"MAE + CRF + ASS": work / "finetune" / "activessf"})
    return {"table2": format_table2(res["runs"], res["pairs"], cfg.evaluate.significance, res["table2"]),
            "report": str(res.out / "report.html")}


def format_summary(summary: dict) -> str:
    return "\n".join(
        [
            "",
            "ActiveSSF demo finished in {:.0f} s".format(summary["seconds"]),
            "",
            format_counts(summary["counts"]),
            "",
            *format_stages(summary["stages"]),
            f"synthetic data    {summary['data']}",
            f"subtype sheet     {summary['contact_sheet']}",
            "Ray               {} ({:.0f} CPUs, {:.0f} GPUs)".format(
                "local, started by the demo" if summary["ray"]["started_local"] else "joined cluster",
                summary["ray"]["cpus"], summary["ray"]["gpus"]),
            f"MLflow store      {summary['mlflow']['tracking_uri']}",
            f"open it with      {summary['mlflow']['ui']}",
        ]
    )
