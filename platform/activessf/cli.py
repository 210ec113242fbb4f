"""The ``activessf`` command.

    activessf demo                          the method end to end on synthetic smears
    activessf pipeline --smears DIR --labelled DIR | --synthetic N    stages 1-5 and registration
    activessf synth --out DIR --images N --seed S
    activessf filter --input DIR|GLOB|URI --out DIR
    activessf filter-eval --regions DIR --boxes DIR|FILE [--label WBC] [--iou 0.3]
    activessf embed --regions FILTER_OUT | --labelled DIR|CSV --out DIR
    activessf select --embeddings DIR (--labelled DIR | --prototypes NPZ) --out DIR [--regions FILTER_OUT]
    activessf select-eval --selection DIR --regions DIR --boxes GT
    activessf bootstrap --regions DIR --labelled DIR --out DIR   selection on label-free features, in rounds
    activessf split --labelled DIR|CSV --out DIR [--share 0.3]   tune.csv (features, sweeps) and eval.csv
    activessf features --labelled DIR|CSV --out DIR     supervised features trained on T (on a split's tune.csv)
    activessf pretrain --regions DIR --selection DIR --out DIR [--name RUN] [--set pretrain.method=mocov3]
    activessf finetune --labelled DIR --out DIR [--init ENCODER_DIR] [--folds folds.json]
    activessf compare RUN_A RUN_B            t-tests over the same splits (corrected and paired)
    activessf ablation --labelled DIR --regions DIR --selection DIR --fields DIR --out DIR
    activessf sweep --space tune_spaces/selection.yaml --regions R --embeddings E --labelled-embeddings LE
                    --labelled L --out DIR          (or --space tune_spaces/filter.yaml --input IMGS --boxes ANN)
    activessf register --run FINETUNE_OUT [--force]   MLflow registry; champion only if it beats the current one
    activessf config [--section filter]     print the resolved configuration

Every command takes ``--config FILE``, ``--preset NAME`` and repeated
``--set section.field=value`` overrides.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from .config import ConfigError, load_config, presets, to_yaml

log = logging.getLogger("activessf")

COMMANDS: dict[str, tuple[Callable, Callable]] = {}


def command(name: str):
    """Register ``run(args)`` under ``name``; the decorated function adds its arguments."""

    def wrap(add_args: Callable):
        def register(run: Callable) -> Callable:
            COMMANDS[name] = (add_args, run)
            return run

        return register

    return wrap


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML file with config sections")
    p.add_argument("--preset", help=f"shipped presets, comma-separated and applied in order (e.g. wbc,cpu): "
                   f"{', '.join(presets())}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one value, e.g. --set filter.fill_rate=0.5 (repeatable)")
    p.add_argument("--work-dir", help="where outputs and the local MLflow store go (run.work_dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from(args: argparse.Namespace, extra: Sequence[str] = ()):
    overrides = list(args.overrides) + list(extra)
    if getattr(args, "work_dir", None):
        overrides.append(f"run.work_dir={args.work_dir}")
    return load_config(args.config, overrides, preset=args.preset)


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output atomically")


def start_stage(args: argparse.Namespace, ray: bool = True):
    """Config, then the output check (before Ray starts, so a refusal is instant), then Ray, and MLflow
    pointed at this work directory's store."""
    from .runtime import init_ray
    from .stage import check_output
    from .tracking import init_mlflow

    cfg = config_from(args)
    if getattr(args, "out", None) is not None:
        check_output(args.out, args.overwrite)
    if ray:
        init_ray(cfg.run.ray_num_cpus)
    init_mlflow(cfg.run.work_dir, cfg.run.experiment)
    return cfg


# ------------------------------------------------------------------ output

_OUTPUT = {"json": False}  # set by main() from --json


def say(*parts, **kwargs) -> None:
    """Text for a person: stdout, or stderr under ``--json`` (stdout then carries exactly one JSON document)."""
    print(*parts, file=sys.stderr if _OUTPUT["json"] else sys.stdout, **kwargs)


def emit(document) -> None:
    """A command's machine-readable result: the one JSON document on stdout."""
    print(json.dumps(document, indent=2, default=str))


# ------------------------------------------------------------------ commands


def _synth_args(p):
    p.add_argument("--out", required=True, type=Path, help="output directory (must not hold a dataset)")
    p.add_argument("--images", type=int, help="smear fields (synth.images)")
    p.add_argument("--labelled", type=int, help="labelled crops (synth.labelled)")
    p.add_argument("--seed", type=int, help="seed (synth.seed)")
    p.add_argument("--workers", type=int, help="processes (synth.workers)")


@command("synth")(_synth_args)
def run_synth(args) -> int:
    """Generate synthetic smear fields, ground truth and a labelled crop set."""
    from .data import synth

    extra = [f"synth.{k}={getattr(args, k)}" for k in ("images", "labelled", "seed", "workers")
             if getattr(args, k) is not None]
    cfg = config_from(args, extra)
    record = synth.generate(cfg.synth, args.out, progress=not args.no_progress)
    from .demo import format_counts

    print(format_counts(synth.class_counts(record)))
    print(f"\nwrote {len(record['fields'])} fields and {len(record['labelled'])} labelled crops to {args.out}")
    return 0


@command("demo")(lambda p: None)
def run_demo_cmd(args) -> int:
    """Run every stage of the method on a small synthetic dataset, locally."""
    from .demo import format_summary, run_demo

    if not (args.config or args.preset):
        args.preset = "demo"
    cfg = config_from(args)
    print(format_summary(run_demo(cfg, progress=not args.no_progress)))
    return 0


def _pipeline_args(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--smears", help="smear images (directory, glob or URI); needs --labelled")
    src.add_argument("--synthetic", type=int, metavar="N",
                     help="generate N synthetic smear fields (and synth.labelled crops) into WORK_DIR/data first")
    p.add_argument("--labelled", type=Path, help="labelled cells: ImageFolder directory or CSV of path,label")
    p.add_argument("--no-register", action="store_true", help="stop after fine-tuning")


@command("pipeline")(_pipeline_args)
def run_pipeline_cmd(args) -> int:
    """Stages 1-5 and registration on your data (or on generated synthetic smears)."""
    from .pipeline import run_pipeline

    cfg = config_from(args, [f"synth.images={args.synthetic}"] if args.synthetic else [])
    if args.synthetic:
        from .data.synth import ensure_synthetic

        data = Path(cfg.run.work_dir).resolve() / "data"
        ensure_synthetic(cfg.synth, data, progress=not args.no_progress)
        smears, labelled = str(data / "smears"), data / "labelled"
    else:
        if not args.labelled:
            raise ValueError("--smears needs --labelled (the labelled cells, ImageFolder or CSV)")
        smears, labelled = args.smears, args.labelled
    record = run_pipeline(cfg, smears, labelled, register=not args.no_register)
    print(json.dumps({k: v for k, v in record.items() if k != "stages"}, indent=2, default=str))
    if "register" in record["stages"]:
        from .serving.registry import format_decision

        print(format_decision(record["stages"]["register"].summary))
    return 0


def _methods_args(p):
    p.add_argument("--json", action="store_true", help="print the registry as JSON")


@command("methods")(_methods_args)
def run_methods(args) -> int:
    """The registered SSL methods: name (pretrain.method), label, views and settings (pretrain.options)."""
    from .ssl.base import describe

    methods = describe()
    if args.json:
        print(json.dumps(methods, indent=2, default=str))
        return 0
    for m in methods:
        print(f"{m['name']:<10} {m['label']} ({m['views']} view{'s' if m['views'] > 1 else ''})")
        for key, default in m["settings"].items():
            print(f"    pretrain.options.{key:<14} {default!r:<8} {m['help'][key]}")
    return 0


def _config_args(p):
    p.add_argument("--section", help="print only this section")


@command("config")(_config_args)
def run_config(args) -> int:
    """Validate and print the resolved configuration as YAML."""
    cfg = config_from(args)
    from .ssl import method_class  # torch and timm (seconds): only once the config itself is valid

    method_class(cfg.pretrain)  # pretrain.method and its pretrain.options, checked by the method itself
    if args.section:
        if args.section not in type(cfg).model_fields:
            raise ConfigError(f"unknown section {args.section!r}; sections: {', '.join(type(cfg).model_fields)}")
        print(to_yaml(getattr(cfg, args.section)), end="")
    else:
        print(to_yaml(cfg), end="")
    return 0


def _filter_args(p):
    p.add_argument("--input", required=True, help="directory, glob or URI (s3://...) of smear images")
    add_output_args(p)
    p.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs reserved per filter worker")


@command("filter")(_filter_args)
def run_filter_cmd(args) -> int:
    """Stage 1: cell region filtering of smear images on Ray Data (paper Sec. II-B)."""
    from .stages.filter import format_summary, run_filter

    cfg = start_stage(args)
    result = run_filter(cfg, args.input, args.out, overwrite=args.overwrite, cpus_per_task=args.cpus_per_task)
    print(format_summary(result.summary))
    print(f"outputs in {args.out}")
    return 0


def _filter_eval_args(p):
    p.add_argument("--regions", required=True, type=Path, help="output directory of `activessf filter`")
    truth = p.add_mutually_exclusive_group(required=True)
    truth.add_argument("--boxes", type=Path,
                       help="VOC annotations (directory or XML) or a synthetic ground_truth.json (or its directory)")
    truth.add_argument("--masks", type=Path,
                       help="segmentation masks, one image per smear image with the same file stem: non-zero = cell")
    p.add_argument("--label", help="ground-truth label to find (default: megakaryocyte for synthetic data, WBC for VOC, "
                                   "cell for masks)")
    p.add_argument("--iou", type=float, default=0.3, help="IoU at which a region matches a box (default 0.3)")
    p.add_argument("--json", type=Path, help="also write the report here (default: REGIONS/eval_<label>.json)")


@command("filter-eval")(_filter_eval_args)
def run_filter_eval(args) -> int:
    """Score filtered regions against annotated boxes: recall, precision, matched IoU."""
    from .stages.filter_eval import run_filter_eval

    cfg = start_stage(args, ray=False)
    result = run_filter_eval(cfg, args.regions, args.boxes, args.json, label=args.label, iou=args.iou,
                             masks=args.masks)
    print(json.dumps(dict(result.summary), indent=2))
    return 0


def _embed_args(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--regions", type=Path, help="output directory of `activessf filter`")
    src.add_argument("--labelled", type=Path, help="labelled cells: ImageFolder directory or CSV of path,label")
    add_output_args(p)


@command("embed")(_embed_args)
def run_embed_cmd(args) -> int:
    """Stage 2: embed regions or labelled cells with a timm backbone on a Ray Data actor pool."""
    from .stages.embed import run_embed

    cfg = start_stage(args)
    source, spec = ("regions", args.regions) if args.regions else ("labelled", args.labelled)
    result = run_embed(cfg, source, spec, args.out, overwrite=args.overwrite)
    print(json.dumps(dict(result.summary), indent=2))
    return 0


def _select_args(p):
    p.add_argument("--embeddings", required=True, type=Path, help="region embeddings (`activessf embed --regions`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--labelled", type=Path, help="labelled embeddings (`activessf embed --labelled`): fit prototypes")
    src.add_argument("--prototypes", type=Path, help="an existing prototypes.npz snapshot: reuse its prototypes")
    p.add_argument("--regions", type=Path, help="filter output, for the per-cluster contact sheets")
    add_output_args(p)


@command("select")(_select_args)
def run_select_cmd(args) -> int:
    """Stage 3: prototypes (Eqs. 4-6), density-aware thresholds (Eq. 8) and selection (Eqs. 7, 9)."""
    from .stages.select import format_report, run_select

    cfg = start_stage(args)
    result = run_select(cfg, args.embeddings, args.out, labelled_embeddings=args.labelled,
                        snapshot=args.prototypes, regions=args.regions, overwrite=args.overwrite)
    print(format_report(result.summary))
    print(f"outputs in {args.out}")
    return 0


def _bootstrap_args(p):
    p.add_argument("--regions", required=True, type=Path, help="filter output (`activessf filter`)")
    p.add_argument("--labelled", required=True, type=Path, help="labelled cells: ImageFolder directory or CSV")
    p.add_argument("--boxes", type=Path, help="optional ground truth (synthetic ground_truth.json or VOC): adds "
                   "the rare-class and distractor shares per round, against random selection")
    p.add_argument("--label", default="megakaryocyte", help="ground-truth label of the cells of interest")
    p.add_argument("--rare", default="CA-MK,HL-MK", help="comma-separated rare classes (default: the paper's)")
    p.add_argument("--image-labels", type=Path, help="CSV image,subtype when subtypes name images (e.g. BCCD)")
    p.add_argument("--storage", help="Ray Train storage (shared NFS path or s3:// URI on clusters)")
    add_output_args(p)


@command("bootstrap")(_bootstrap_args)
def run_bootstrap_cmd(args) -> int:
    """Stages 2-3 on label-free features: rounds of pretrain -> embed -> select (select.rounds)."""
    from .bootstrap import format_rounds, run_bootstrap
    from .stages.select_eval import read_image_labels, region_classes

    cfg = start_stage(args)
    truth = None
    if args.boxes:
        labels = read_image_labels(args.image_labels) if args.image_labels else None
        truth = region_classes(args.regions, args.boxes, args.label, image_labels=labels)
    result = run_bootstrap(cfg, args.regions, args.labelled, args.out, truth=truth,
                           rare=frozenset(filter(None, args.rare.split(","))), storage=args.storage,
                           overwrite=args.overwrite)
    print(format_rounds(result.summary))
    print(f"outputs in {args.out}; the last round's selection: {result['selection']}")
    return 0


def _pretrain_args(p):
    p.add_argument("--regions", type=Path, help="filter output (sources `selected` and `filtered`)")
    p.add_argument("--selection", type=Path, help="select output (source `selected`, the default)")
    p.add_argument("--fields", help="smear images (source `fields`, the no-filter ablation)")
    p.add_argument("--name", help="Ray Train run name; rerunning the same name resumes from its last checkpoint")
    p.add_argument("--storage", help="Ray Train storage (shared NFS path or s3:// URI on clusters)")
    p.add_argument("--max-failures", type=int, default=1, help="worker failures tolerated (FailureConfig)")
    add_output_args(p)


@command("pretrain")(_pretrain_args)
def run_pretrain_cmd(args) -> int:
    """Stage 4: self-supervised pretraining (MAE, MoCo v3, ...) on Ray Train, DDP."""
    from .stages.pretrain import run_pretrain

    cfg = start_stage(args)
    result = run_pretrain(cfg, args.out, regions=args.regions, selection=args.selection, fields=args.fields,
                          name=args.name, storage=args.storage, overwrite=args.overwrite,
                          max_failures=args.max_failures)
    print(json.dumps(dict(result.summary), indent=2))
    return 0


def _finetune_args(p):
    p.add_argument("--labelled", required=True, type=Path, help="labelled cells: ImageFolder directory or CSV")
    p.add_argument("--init", help="pretrained encoder (a `pretrain` output dir), weights file or MLflow URI")
    p.add_argument("--folds", type=Path, help="reuse this folds.json (identical splits for compared runs; it decides k and repeats)")
    p.add_argument("--name", help="run name")
    p.add_argument("--storage", help="Ray Train storage (shared on clusters)")
    add_output_args(p)


@command("finetune")(_finetune_args)
def run_finetune_cmd(args) -> int:
    """Stage 5: stratified k-fold fine-tuning on Ray Train with the paper's metrics."""
    from .evaluation.report import format_table2
    from .stages.finetune import run_finetune

    if args.init:
        args.overrides.append(f"finetune.init={args.init}")
    cfg = start_stage(args)
    result = run_finetune(cfg, args.labelled, args.out, folds_file=args.folds, name=args.name, storage=args.storage,
                          overwrite=args.overwrite)
    print(format_table2({result["name"]: dict(result.summary)}))
    print(f"outputs in {args.out}")
    return 0


def _compare_args(p):
    p.add_argument("baseline", type=Path, help="a `finetune` output directory (A)")
    p.add_argument("candidate", type=Path, help="another one, on the same folds (B)")
    p.add_argument("--json", type=Path, help="also write the comparison here")


@command("compare")(_compare_args)
def run_compare(args) -> int:
    """B vs A over the same splits: the corrected resampled t-test (it decides) and the paper's paired t-test."""
    from .evaluation.report import compare_runs, format_comparison, load_run

    cfg = config_from(args)
    result = compare_runs(load_run(args.baseline), load_run(args.candidate), cfg.evaluate.significance)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(format_comparison(result))
    return 0


def _ablation_args(p):
    p.add_argument("--labelled", required=True, type=Path, help="labelled cells (ImageFolder or CSV)")
    p.add_argument("--regions", required=True, type=Path, help="filter output")
    p.add_argument("--selection", required=True, type=Path, help="select output")
    p.add_argument("--fields", required=True, help="smear images (for the no-filter row)")
    p.add_argument("--methods", default="mae",
                   help="comma-separated SSL methods (`activessf methods` lists them; all four shipped ones: Table II's "
                        "full layout)")
    p.add_argument("--baselines", default="vit",
                   help="supervised rows from scratch: vit, resnet (evaluate.cnn_baseline), or both: resnet,vit")
    p.add_argument("--rows", help='only these rows, comma-separated names as in the report (e.g. "ViT,MAE + CRF + ASS")')
    add_output_args(p)


@command("ablation")(_ablation_args)
def run_ablation_cmd(args) -> int:
    """The paper's Table III grid (and Table II rows) on identical folds, with the report."""
    from .evaluation.report import format_table2
    from .ablation import run_ablation

    cfg = start_stage(args)
    res = run_ablation(cfg, args.labelled, args.out, regions=args.regions, selection=args.selection,
                       fields=args.fields, methods=[m for m in args.methods.split(",") if m],
                       baselines=[b for b in args.baselines.split(",") if b],
                       rows=[r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None,
                       overwrite=args.overwrite)
    print(format_table2(res["runs"], res["pairs"], cfg.evaluate.significance, res["table2"]))
    print(f"report: {args.out}/report.html (and report.md)")
    return 0


def _sweep_args(p):
    p.add_argument("--space", required=True, type=Path, help="search space YAML (tune_spaces/selection.yaml or filter.yaml)")
    p.add_argument("--regions", type=Path, help="selection sweeps: filter output")
    p.add_argument("--embeddings", type=Path, help="selection sweeps: region embeddings (`activessf embed --regions`)")
    p.add_argument("--labelled-embeddings", type=Path, help="selection sweeps: `activessf embed --labelled` output")
    p.add_argument("--labelled", type=Path, help="selection sweeps: labelled cells (ImageFolder or CSV) for the probe")
    p.add_argument("--input", help="filter sweeps: smear images (directory, glob or URI)")
    p.add_argument("--boxes", type=Path, help="filter sweeps: VOC annotations or a synthetic ground_truth.json")
    p.add_argument("--label", help="filter sweeps: the annotated label to find (default: megakaryocyte or WBC)")
    p.add_argument("--name", help="sweep name (Ray Tune experiment and MLflow parent run)")
    p.add_argument("--storage", help="Ray storage for trials (shared on clusters)")
    add_output_args(p)


@command("sweep")(_sweep_args)
def run_sweep_cmd(args) -> int:
    """Ray Tune sweep of selection or filter settings; every trial an MLflow run; writes best.yaml."""
    from .stages.sweep import run_sweep
    from .sweep.space import load_space

    cfg = config_from(args)
    load_space(args.space, cfg.model_dump(mode="json"))  # a bad space fails before Ray starts
    cfg = start_stage(args)
    result = run_sweep(cfg, args.space, args.out, regions=args.regions, embeddings=args.embeddings,
                       labelled_embeddings=args.labelled_embeddings, labelled=args.labelled, images=args.input,
                       boxes=args.boxes, label=args.label, name=args.name, storage=args.storage,
                       overwrite=args.overwrite)
    print(json.dumps(dict(result.summary), indent=2, default=str))
    print(f"best configuration: {args.out}/best.yaml (use it with --config); all trials: {args.out}/trials.csv")
    return 0


def _register_args(p):
    p.add_argument("--run", required=True, type=Path,
                   help="a `finetune` output made with finetune.final_fit=true (its model/ is deployed)")
    p.add_argument("--name", help="registered model name (register.model_name)")
    p.add_argument("--force", action="store_true", help="move the alias even if the model does not beat the champion")
    p.add_argument("--json", type=Path, help="also write the decision record here")


@command("register")(_register_args)
def run_register(args) -> int:
    """Register a fine-tuned classifier in the MLflow model registry; promote it if it beats the champion."""
    from .serving.registry import format_decision, register

    if args.name:
        args.overrides.append(f"register.model_name={args.name}")
    cfg = start_stage(args, ray=False)
    record = dict(register(args.run, cfg, force=args.force).summary)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    print(format_decision(record))
    return 0


def _features_args(p):
    p.add_argument("--labelled", required=True, type=Path, help="labelled cells: ImageFolder directory or CSV")
    p.add_argument("--out", required=True, type=Path, help="directory for the weights and features.json")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--size", type=int, default=96, help="training image size")


@command("features")(_features_args)
def run_features(args) -> int:
    """Train supervised features on labelled cells (for sites without pretrained weights); the cells they
    learned from go to OUT/label_ids.json and, with features.json, to an MLflow run."""
    from .features.supervised import train_supervised
    from .stage import log_results, stage_run

    cfg = config_from(args)
    params = {"labelled": str(args.labelled), "backbone": cfg.embed.backbone, "epochs": args.epochs,
              "image_size": args.size}
    with stage_run(cfg, "features", params):
        path = train_supervised(args.labelled, args.out, cfg, epochs=args.epochs, image_size=args.size)
        labels = json.loads((args.out / "label_ids.json").read_text())
        log_results(args.out, {"labelled_cells": labels["cells"]}, ("features.json", "label_ids.json"),
                    params={"label_ids_digest": labels["digest"]})
    print(f"supervised features trained on {args.labelled} ({labels['cells']} cells: label_ids.json): {path}")
    print(f"use them with: --set embed.weights={path.resolve()} --set embed.backbone={cfg.embed.backbone}")
    print("evaluation refuses to score these cells: evaluate on the cells of a split they were not trained on")
    return 0


def _split_args(p):
    p.add_argument("--labelled", required=True, type=Path, help="labelled cells: ImageFolder directory or CSV")
    p.add_argument("--share", type=float, default=0.3, help="share of each class to tune on (features, sweeps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class draws")
    p.add_argument("--min-per-class", type=int, help="cells of a class evaluation keeps at least (default: "
                   "evaluate.folds); a class too small for that is evaluated only")
    add_output_args(p)


@command("split")(_split_args)
def run_split(args) -> int:
    """Split the labelled set once: tune.csv to learn from (features, sweeps), eval.csv to evaluate on."""
    from .data.labelled import list_labelled
    from .data.split import split_labelled, write_split
    from .stage import check_output

    cfg = config_from(args)
    check_output(args.out, args.overwrite)
    minimum = args.min_per_class or cfg.evaluate.folds
    split = split_labelled(list_labelled(args.labelled), args.share, args.seed, minimum)
    record = write_split(split, args.out, {"labelled": str(args.labelled), "share": args.share, "seed": args.seed,
                                           "min_per_class": minimum})
    for part in ("tune", "eval"):
        r = record[part]
        classes = ", ".join(f"{c} {n}" for c, n in r["classes"].items())
        print(f"{part}: {r['cells']} cells in {args.out / r['file']} ({classes})")
    if record["eval_only_classes"]:
        print(f"evaluated only (too small to split): {', '.join(record['eval_only_classes'])}")
    print(f"train features and sweep on {args.out / 'tune.csv'}; fine-tune and ablate on {args.out / 'eval.csv'}")
    return 0


def _select_eval_args(p):
    p.add_argument("--selection", required=True, type=Path, help="output directory of `activessf select`")
    p.add_argument("--regions", required=True, type=Path, help="the filter output the selection was made from")
    p.add_argument("--boxes", required=True, type=Path, help="ground truth: synthetic ground_truth.json or VOC")
    p.add_argument("--label", default="megakaryocyte", help="ground-truth label of the cells of interest")
    p.add_argument("--rare", default="CA-MK,HL-MK", help="comma-separated rare classes (default: the paper's)")
    p.add_argument("--image-labels", type=Path, help="CSV image,subtype when subtypes name images (e.g. BCCD)")
    p.add_argument("--iou", type=float, default=0.3, help="IoU at which a region is that cell")
    p.add_argument("--json", type=Path, help="also write the report here (default: SELECTION/evidence.json)")


@command("select-eval")(_select_eval_args)
def run_select_eval(args) -> int:
    """Score a selection against ground truth: rare-subtype enrichment and distractors, vs random."""
    from .stages.select_eval import evaluate_selection

    cfg = config_from(args)
    report = evaluate_selection(args.selection, args.regions, args.boxes, args.label,
                                set(filter(None, args.rare.split(","))), args.image_labels, args.iou, cfg.run.seed)
    (args.json or args.selection / "evidence.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


# ------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="activessf", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=(run.__doc__ or "").split("\n")[0], description=run.__doc__)
        add_config_args(p)
        add_args(p)
        p.set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (ConfigError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"activessf {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
