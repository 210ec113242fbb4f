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
import shutil
import time
from pathlib import Path

from .config import Config, SynthConfig, flatten, save_config, to_yaml
from .data import synth
from .imageio import read_rgb, write_png
from .subtypes import SUBTYPES
from .viz import contact_sheet

log = logging.getLogger(__name__)


def ensure_synthetic(cfg: SynthConfig, out: Path, progress: bool = True) -> dict:
    """The dataset at ``out`` for these settings: reused if identical, else regenerated."""
    saved = out / "config.yaml"
    if (out / synth.GROUND_TRUTH).exists() and saved.exists() and saved.read_text() == to_yaml(synth.data_settings(cfg)):
        log.info("reusing the synthetic dataset in %s (same settings)", out)
        return synth.load_ground_truth(out)
    if out.exists():
        if not (out / synth.GROUND_TRUTH).exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a synthetic dataset; refusing to replace it")
        shutil.rmtree(out)
    log.info("generating %d smear fields and %d labelled crops into %s", cfg.images, cfg.labelled, out)
    return synth.generate(cfg, out, progress=progress)


def subtype_sheet(record: dict, data_dir: Path, per_row: int = 8) -> "np.ndarray":
    """Contact sheet of the labelled crops, one row per subtype."""
    by_type: dict[str, list] = {name: [] for name in SUBTYPES}
    for name, path in synth.iter_labelled(record, data_dir):
        if len(by_type[name]) < per_row:
            by_type[name].append(read_rgb(path))
    return contact_sheet([(name, by_type[name]) for name in SUBTYPES])


def format_stages(stages: dict) -> list[str]:
    lines = []
    if "filter" in stages:
        from .stages.filter import format_summary as filter_summary

        f, e = stages["filter"], stages["filter"]["eval"]
        lines += ["Stage 1, cell region filtering (paper defaults):", filter_summary(f["summary"]),
                  f"megakaryocytes found: recall {e['recall']:.2f}, precision {e['precision']:.2f} at IoU >= 0.3; "
                  f"regions in {f['output']}", ""]
    if "select" in stages:
        from .stages.select import format_report

        s, e = stages["select"], stages["select"]["evidence"]
        lines += ["Stages 2-3, prototypes and active sample selection:", format_report(s["report"]),
                  f"distractors among regions {e['distractor_share_filtered']:.2f} -> among selected "
                  f"{(e['distractor_share_selected'] or 0):.2f}; selection in {s['output']}", ""]
    if "pretrain" in stages:
        r = stages["pretrain"]["record"]
        lines += [f"Stage 4, self-supervised pretraining ({r['method']}, ViT-{r['model']}, {r['rows']} selected "
                  f"regions, {r['epochs']} epochs): final loss {r['final_loss']:.4f}; encoder in "
                  f"{stages['pretrain']['output']}/encoder.pt (reconstructions in MLflow, run "
                  f"{r['mlflow_run_id'][:8]})"]
        recon = sorted(Path(stages["pretrain"]["output"]).glob("reconstructions/*.png"))
        lines += [f"reconstructions (originals / masked / reconstructed): {recon[-1]}" if recon else "", ""]
    if "finetune" in stages:
        lines += ["Stage 5, fine-tuning and evaluation (Table II; tiny models, few epochs: plumbing, not accuracy):",
                  stages["finetune"]["table2"], f"report: {stages['finetune']['report']}", ""]
    if "register" in stages:
        from .serving.registry import format_decision

        lines += ["Model registry (the final fit of the ActiveSSF model on every labelled cell):",
                  format_decision(stages["register"]), ""]
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
    from . import pipeline
    from .runtime import init_ray, shutdown_ray
    from .tracking import init_mlflow, tracking_uri, ui_command

    import mlflow

    started = time.time()
    work = Path(cfg.run.work_dir).resolve()
    data_dir, demo_dir = work / "data", work / "demo"
    record = ensure_synthetic(cfg.synth, data_dir, progress)
    counts = synth.class_counts(record)

    ray_rt = init_ray(cfg.run.ray_num_cpus)
    init_mlflow(work, cfg.run.experiment)
    save_config(cfg, demo_dir)
    sheet_path = write_png(demo_dir / "subtypes.png", subtype_sheet(record, data_dir))
    with mlflow.start_run(run_name="demo") as run:
        mlflow.log_params(flatten(cfg.synth))
        mlflow.log_metrics({f"fields.{k}": v for k, v in counts["fields"].items()})
        mlflow.log_metrics({f"labelled.{k}": v for k, v in counts["labelled"].items()})
        mlflow.log_artifact(str(demo_dir / "config.yaml"))
        mlflow.log_artifact(str(sheet_path))
        stages = pipeline.run_pipeline(cfg, str(data_dir / "smears"), data_dir / "labelled")["stages"]
        stages["filter"]["eval"] = score_filter(work / "regions", data_dir)
        stages["select"]["evidence"] = score_selection(work, data_dir)
        stages["finetune"].update(compare_with_scratch(cfg, data_dir, work))
        run_id = run.info.run_id
    shutdown_ray()

    summary = {
        "data": str(data_dir),
        "fields": len(record["fields"]),
        "labelled": len(record["labelled"]),
        "counts": counts,
        "contact_sheet": str(sheet_path),
        "stages": stages,
        "ray": {"started_local": ray_rt.started_local, "cpus": ray_rt.cpus, "gpus": ray_rt.gpus},
        "mlflow": {"tracking_uri": tracking_uri(work), "run_id": run_id, "ui": ui_command(work)},
        "seconds": round(time.time() - started, 1),
    }
    (demo_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def score_filter(regions: Path, data_dir: Path) -> dict:
    """Stage 1 against the synthetic ground truth: megakaryocytes found at IoU >= 0.3."""
    from .stages.filter_eval import evaluate_output, log_eval

    report = evaluate_output(regions, data_dir, "megakaryocyte", 0.3)
    (regions / "eval_megakaryocyte.json").write_text(json.dumps(report, indent=2))
    log_eval(report, regions / "eval_megakaryocyte.json")
    return report


def score_selection(work: Path, data_dir: Path) -> dict:
    """Stages 2-3 against the truth: rare subtypes and distractors among the selected regions."""
    from .stages.select_eval import evaluate_selection

    evidence = evaluate_selection(work / "selection", work / "regions", data_dir, "megakaryocyte", {"CA-MK", "HL-MK"})
    (work / "selection" / "evidence.json").write_text(json.dumps(evidence, indent=2))
    return evidence


def compare_with_scratch(cfg: Config, data_dir: Path, work: Path) -> dict:
    """Stage 5's Table II: the ablation's ViT-from-scratch row on the pipeline's folds, against the
    pipeline's fine-tuning of the stage-4 encoder (reused, not retrained)."""
    from .evaluation.report import format_table2
    from .stages.ablation import run_ablation

    res = run_ablation(work / "ablation", cfg, data_dir / "labelled", work / "regions", work / "selection", None,
                       rows=["ViT", "MAE + CRF + ASS"], overwrite=True,
                       finetunes={"MAE + CRF + ASS": work / "finetune" / "activessf"})
    return {"table2": format_table2(res["runs"], res["pairs"], cfg.evaluate.significance, res["record"]["table2"]),
            "report": str(work / "ablation" / "report.html")}


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
