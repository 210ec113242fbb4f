"""Does ActiveSSF help, fairly? Label-free selection, equal pretraining steps, repeated folds, corrected tests.

    .venv/bin/python benchmarks/evidence_protocol.py --data bccd     [--root ../shared/data/bccd] [--out DIR]
    .venv/bin/python benchmarks/evidence_protocol.py --data wbc_seg1 [--root ../shared/data/wbc_seg1] [--out DIR]

Chain, sized to run in under an hour on a 2-core CPU (ViT-mini at 64 px):
1. the labelled cells: BCCD's crops of single-WBC images (341, 5 subtypes), or wbc_seg1's 300 single-cell
   images (5 subtypes, 176/53/48/22/1);
2. regions: the `wbc` filter preset on every field (BCCD's 364 smears; for wbc_seg1 its 300 images);
3. selection on label-free features: bootstrap rounds (select.rounds=2): round 0 pretrains MAE on every
   filtered region, round 1 on round 0's selection; each embeds with its encoder and reselects. Each
   round's rare-class and distractor shares are scored against the annotation, with random selection's
   95% range beside them;
4. the ablation at equal optimiser steps (pretrain.steps) on repeated stratified folds (3 folds x 2
   repeats, identical for every row): ViT from scratch, MAE on field crops (for wbc_seg1 the images
   themselves), MAE on all filtered regions (CRF), MAE on round 0's selection (CRF + ASS, 1 round) and on
   round 1's (CRF + ASS, 2 rounds); each row against the others by the corrected resampled t-test.
Writes benchmarks/results/evidence_protocol_<data>.json and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WBC_CLASSES = {"1": "neutrophil", "2": "lymphocyte", "3": "monocyte", "4": "eosinophil", "5": "basophil"}

BUDGET = ["pretrain.model=mini", "pretrain.image_size=64", "pretrain.patch_size=8", "pretrain.batch_size=32",
          "pretrain.steps=600", "pretrain.epochs=1", "pretrain.warmup_epochs=0", "pretrain.num_workers=1",
          "select.rounds=2", "select.bootstrap_steps=300", "select.bootstrap_epochs=1",
          "finetune.epochs=20", "finetune.warmup_epochs=2", "finetune.batch_size=32",
          "evaluate.folds=3", "evaluate.repeats=2", "evaluate.equal_steps=true", "prototypes.k=5"]
DATA = {
    "bccd": {"preset": "wbc", "rare": ("basophil", "monocyte"), "label": "WBC", "set": []},
    # wbc_seg1's images are 120 px single cells from another microscope: its own pixel size
    "wbc_seg1": {"preset": "wbc", "rare": ("basophil", "eosinophil"), "label": "cell",
                 "set": ["filter.um_per_px=0.16"]},
}


def bccd_inputs(root: Path, work: Path) -> dict:
    from activessf.data.annotations import write_labelled_crops
    from activessf.stages.select_eval import read_image_labels

    labels = read_image_labels(root / "wbc_subtypes.csv")
    counts = write_labelled_crops(root / "JPEGImages", root / "Annotations", "WBC", labels, work / "labelled")
    return {"labelled": work / "labelled", "fields": str(root / "JPEGImages"), "counts": counts,
            "boxes": root / "Annotations", "image_labels": labels}


def wbc_seg1_inputs(root: Path, work: Path) -> dict:
    from activessf.data.annotations import load_masks

    rows = list(csv.DictReader(open(root / "labels.csv", newline="")))
    images = {p.stem: p for p in (root / "images").iterdir()}
    labels = {}
    for r in rows:
        stem = next(s for s in (r["image ID"], r["image ID"].zfill(3)) if s in images)
        labels[stem] = WBC_CLASSES[r["class label"]]
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "labelled.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([str(images[s]), lab] for s, lab in sorted(labels.items()))
    counts = {c: list(labels.values()).count(c) for c in sorted(set(labels.values()))}
    return {"labelled": work / "labelled.csv", "fields": str(root / "images"), "counts": counts,
            "boxes": load_masks(root / "masks"), "image_labels": labels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=sorted(DATA), required=True)
    ap.add_argument("--root", type=Path, help="the dataset (default: ../shared/data/<data>)")
    ap.add_argument("--out", type=Path, default=None, help="keep the outputs here (default: a temp dir); rerun with "
                    "the same --out to reuse the steps that finished")
    args = ap.parse_args()
    root = args.root or REPO.parent / "shared" / "data" / args.data
    spec = DATA[args.data]

    from activessf.ablation import row_slug, run_ablation
    from activessf.bootstrap import format_rounds, run_bootstrap
    from activessf.config import load_config
    from activessf.evaluation.report import compare_runs, format_comparison, load_run
    from activessf.stages.filter import run_filter
    from activessf.stages.select_eval import region_classes
    from activessf.runtime import init_ray, shutdown_ray
    from activessf.tracking import init_mlflow

    work = args.out or Path(tempfile.mkdtemp(prefix=f"evidence_{args.data}_"))
    started, seconds = time.time(), {}
    overrides = BUDGET + spec["set"] + [f"run.work_dir={work / 'w'}"]
    cfg = load_config(preset=spec["preset"], overrides=overrides)
    init_ray()  # the platform's local Ray, with its Ray Train settings (a 0.25 s control loop, not 2 s)
    init_mlflow(work / "w", f"evidence-{args.data}")
    inputs = (bccd_inputs if args.data == "bccd" else wbc_seg1_inputs)(root, work)

    def step(key: str, done: Path, run):  # each step once: a rerun with --out reuses what finished
        if not done.exists():
            t0 = time.time()
            run()
            seconds[key] = round(time.time() - t0, 1)

    step("filter", work / "regions" / "regions", lambda: run_filter(cfg, inputs["fields"], work / "regions"))
    truth = region_classes(work / "regions", inputs["boxes"], spec["label"], image_labels=inputs["image_labels"])
    step("bootstrap", work / "bootstrap" / "rounds.json",
         lambda: run_bootstrap(cfg, work / "regions", inputs["labelled"], work / "bootstrap", truth=truth,
                               rare=frozenset(spec["rare"])))
    step("ablation", work / "ablation" / "ablation.json",
         lambda: run_ablation(cfg, inputs["labelled"], work / "ablation", regions=work / "regions",
                              selection=work / "bootstrap" / "round0" / "selection", fields=inputs["fields"],
                              rows=["ViT", "MAE", "MAE + CRF", "MAE + CRF + ASS"]))
    rounds = json.loads((work / "bootstrap" / "rounds.json").read_text())
    kept = rounds["rounds"][1]["selected"] if len(rounds["rounds"]) > 1 else 0
    skipped = None if kept >= cfg.pretrain.batch_size else \
        f"round 1 kept {kept} regions, fewer than a pretraining batch of {cfg.pretrain.batch_size}"
    if skipped is None:
        step("ablation_round1", work / "ablation_round1" / "ablation.json",
             lambda: run_ablation(cfg, inputs["labelled"], work / "ablation_round1", regions=work / "regions",
                                  selection=work / "bootstrap" / "round1" / "selection",
                                  rows=["ViT", "MAE + CRF + ASS"], finetunes={"ViT": work / "ablation" / "vit" / "finetune"}))
    shutdown_ray()

    one = json.loads((work / "ablation" / "ablation.json").read_text())
    runs = {r["name"]: {**load_run(work / "ablation" / row_slug(r) / "finetune"), "name": r["name"]}
            for r in one["rows"]}
    budgets = dict(one["budgets"])
    pairs = [("ViT", "MAE"), ("ViT", "MAE + CRF"), ("ViT", "MAE + CRF + ASS"), ("MAE", "MAE + CRF"),
             ("MAE", "MAE + CRF + ASS"), ("MAE + CRF", "MAE + CRF + ASS")]
    if skipped is None:
        two = json.loads((work / "ablation_round1" / "ablation.json").read_text())
        runs["MAE + CRF + ASS (2 rounds)"] = {**load_run(work / "ablation_round1" / "mae_crf_ass" / "finetune"),
                                              "name": "MAE + CRF + ASS (2 rounds)"}
        budgets["MAE + CRF + ASS (2 rounds)"] = two["budgets"].get("MAE + CRF + ASS")
        pairs += [("MAE + CRF", "MAE + CRF + ASS (2 rounds)"), ("MAE + CRF + ASS", "MAE + CRF + ASS (2 rounds)")]
    tests = {f"{b} vs {a}": compare_runs(runs[a], runs[b], cfg.evaluate.significance) for a, b in pairs}
    record = {"data": args.data, "root": str(root), "labelled": inputs["counts"], "budget": overrides,
              "rounds": rounds["rounds"], "budgets": budgets, "two_rounds_row": skipped or "run",
              "summary": {k: {m: v["summary"][m] for m in ("accuracy", "pr_auc", "f1")} for k, v in runs.items()},
              "tests": tests, "seconds": seconds, "minutes": round((time.time() - started) / 60, 1),
              "outputs": str(work)}
    path = write(f"evidence_protocol_{args.data}", record)
    print(format_rounds(rounds))
    if skipped:
        print(f"row MAE + CRF + ASS (2 rounds) not run: {skipped}")
    print(f"\n{'row':<28} {'accuracy':>16} {'macro PR-AUC':>16} {'macro F1':>16}  budget")
    for k, v in record["summary"].items():
        b = budgets.get(k) or {}
        cells = [f"{100 * v[m]['mean']:6.2f} ± {100 * v[m]['std']:5.2f}" for m in ("accuracy", "pr_auc", "f1")]
        print(f"{k:<28} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16}  "
              f"{b.get('steps', '-')} steps, {b.get('epochs', '-')} epochs, {b.get('images_seen', '-')} images, "
              f"{b.get('seconds', '-')} s")
    for t in tests.values():
        print("\n" + format_comparison(t))
    print(f"\nwrote {path}; outputs in {work}; {record['minutes']} min")


if __name__ == "__main__":
    main()
