"""The evaluation protocol on real data (BCCD): scratch vs MAE on fields / filtered / selected regions.

    .venv/bin/python benchmarks/evidence_bccd_protocol.py [--bccd ../shared/data/bccd] [--out DIR]

Chain: `wbc`-preset regions of all 364 fields; supervised features trained on
the labelled set (341 WBC crops of single-WBC images, 5 subtypes), selection
with the paper's defaults (K = 5); MAE (ViT-mini, 64 px) pretrained on random
field crops, on all filtered regions, and on the selected regions; each
fine-tuned on the labelled set with the same stratified folds (k = 2: the
basophil class has 2 samples), plus the same ViT from scratch. Writes the
report (Tables I-III, Fig. 3) and the paired t-tests. Budgets fit a 2-core CPU;
they are far below the paper's (400 + 50 epochs of ViT-B).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

BUDGET = ["pretrain.model=mini", "pretrain.image_size=64", "pretrain.patch_size=8", "pretrain.batch_size=32",
          "pretrain.epochs=60", "pretrain.warmup_epochs=5", "pretrain.checkpoint_every=30", "pretrain.num_workers=1",
          "finetune.epochs=40", "finetune.warmup_epochs=5", "finetune.batch_size=32", "evaluate.folds=2",
          "embed.backbone=resnet18", "embed.image_size=128", "prototypes.k=5",
          "filter.closing_kernel=35", "filter.min_box=65", "filter.fill_rate=0.35",
          # the figures in docs/finetune.md were measured with 60 epochs on every pool (the paper's reading),
          # before the ablation's equal optimiser steps became the default: kept so that this reproduces them
          "evaluate.equal_steps=false",
          # the selection's supervised features are trained on the 341 cells every row is evaluated on (there are
          # too few to split, basophils have 2): a leak, refused by default, recorded as such in the outputs
          "evaluate.allow_leak=true"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bccd", type=Path, default=REPO.parent / "shared" / "data" / "bccd")
    ap.add_argument("--out", type=Path, default=None, help="keep the outputs here (default: a temp dir)")
    args = ap.parse_args()

    from activessf.config import load_config
    from activessf.data.annotations import write_labelled_crops
    from activessf.evaluation.report import compare_runs
    from activessf.features.supervised import train_supervised
    from activessf.ablation import run_ablation
    from activessf.stages.embed import run_embed
    from activessf.stages.filter import run_filter
    from activessf.stages.select import run_select
    from activessf.stages.select_eval import read_image_labels
    from activessf.runtime import init_ray, shutdown_ray
    from activessf.tracking import init_mlflow

    work = args.out or Path(tempfile.mkdtemp(prefix="bccd_protocol_"))
    started = time.time()
    cfg = load_config(overrides=BUDGET + [f"run.work_dir={work / 'w'}"])
    init_ray()  # the platform's local Ray, with its Ray Train settings
    init_mlflow(work / "w", "bccd-protocol")
    labels = read_image_labels(args.bccd / "wbc_subtypes.csv")
    counts = write_labelled_crops(args.bccd / "JPEGImages", args.bccd / "Annotations", "WBC", labels, work / "labelled")
    run_filter(cfg, str(args.bccd / "JPEGImages"), work / "regions")
    weights = train_supervised(work / "labelled", work / "features", cfg)
    ecfg = load_config(overrides=BUDGET + [f"run.work_dir={work / 'w'}", f"embed.weights={weights}"])
    run_embed(ecfg, "regions", work / "regions", work / "emb_regions")
    run_embed(ecfg, "labelled", work / "labelled", work / "emb_labelled")
    sel = run_select(ecfg, work / "emb_regions", work / "selection", labelled_embeddings=work / "emb_labelled")
    res = run_ablation(cfg, work / "labelled", work / "ablation", regions=work / "regions",
                       selection=work / "selection", fields=str(args.bccd / "JPEGImages"))
    runs = res["runs"]
    tests = {f"{b} vs {a}": compare_runs(runs[a], runs[b]) for b, a in
             [("MAE + CRF + ASS", "ViT"), ("MAE + CRF", "ViT"), ("MAE + CRF + ASS", "MAE + CRF"),
              ("MAE + CRF + ASS", "MAE"), ("MAE", "ViT")]}
    shutdown_ray()
    record = {"labelled": counts, "selected": sel["totals"], "budget": BUDGET,
              "summary": {k: v["summary"] for k, v in runs.items()},
              "tests": {k: {m: {kk: vv for kk, vv in r.items() if kk in ("a", "b", "p", "mean_diff")}
                            for m, r in t["metrics"].items()} for k, t in tests.items()},
              "report": str(work / "ablation" / "report.html"), "minutes": round((time.time() - started) / 60, 1)}
    path = write("evidence_bccd_protocol", record)
    print((work / "ablation" / "report.md").read_text())
    for k, t in record["tests"].items():
        print(k, {m: f"{100 * r['mean_diff']:+.2f} pts, p={r['p']:.3f}" for m, r in t.items()})
    print(f"\nwrote {path}; outputs in {work}")


if __name__ == "__main__":
    main()
