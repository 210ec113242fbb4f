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
    activessf crops --annotations VOC_DIR|COCO.json|BOXES.csv --out DIR [--keep WBC] [--margin 10%]
                                            labelled cell crops (the labelled-set layout) from annotations
    activessf features --labelled DIR|CSV --out DIR     supervised features trained on T (on a split's tune.csv)
    activessf pretrain --regions DIR --selection DIR --out DIR [--name RUN] [--set pretrain.method=mocov3]
    activessf finetune --labelled DIR --out DIR [--init ENCODER_DIR] [--folds folds.json]
    activessf compare RUN_A RUN_B            t-tests over the same splits (corrected and paired)
    activessf ablation --labelled DIR --regions DIR --selection DIR --fields DIR --out DIR
    activessf sweep --space tune_spaces/selection.yaml --regions R --embeddings E --labelled-embeddings LE
                    --labelled L --out DIR          (or --space tune_spaces/filter.yaml --input IMGS --boxes ANN)
    activessf register --run-id ID | --run FINETUNE_OUT [--force]   registry; champion if it beats the current one
    activessf predict --model models:/NAME@ALIAS|RUN_ID|FINETUNE_OUT --input DIR|GLOB|URI --out DIR [--overlays N|all]
    activessf config [--section filter]     print the resolved configuration

Every command takes ``--config FILE``, ``--preset NAME`` and repeated
``--set section.field=value`` overrides, and ``--json`` (the result as one JSON
document on stdout, everything else on stderr), ``--quiet`` and ``-v``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import sys
import tempfile
import time
import traceback
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
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (tqdm, Ray Data); the per-epoch lines stay (--quiet drops both)")


def config_from(args: argparse.Namespace, extra: Sequence[str] = ()):
    overrides = list(args.overrides) + list(extra)
    if getattr(args, "work_dir", None):
        overrides.append(f"run.work_dir={args.work_dir}")
    if getattr(args, "quiet", False):
        overrides.append("run.quiet=true")  # the config carries it to the Ray Train workers
    return load_config(args.config, overrides, preset=args.preset)


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output atomically")


def start_stage(args: argparse.Namespace, ray: bool = True, models: Sequence[str] | Callable = ()):
    """Config, then the checks that need no data (the output directory; the ``models`` the command builds,
    :func:`features.backbone.check_backbone`) before Ray starts, so that a refusal is quick, then Ray,
    and MLflow pointed at this work directory's store. ``models`` may be a function of the config."""
    from .runtime import hide_progress_bars, init_ray
    from .stage import check_output
    from .tracking import init_mlflow

    cfg = config_from(args)
    if getattr(args, "out", None) is not None:
        check_output(args.out, args.overwrite)
    check_models(cfg, models(cfg) if callable(models) else models)
    if ray:
        init_ray(cfg.run.ray_num_cpus, quiet=cfg.run.quiet)
        if args.no_progress:
            hide_progress_bars()
    init_mlflow(cfg.run.work_dir, cfg.run.experiment)
    return cfg


def check_models(cfg, parts: Sequence[str]) -> None:
    """A misspelt model name or weights that do not fit: ``ConfigError`` (exit 2) before any data is read."""
    if parts:
        from .features.backbone import check_backbone

        check_backbone(cfg, parts)


# ------------------------------------------------------------------ output

# set by main(): --json, the real stdout (under --json everything else printed goes to stderr, Ray's
# forwarded worker output included), and whether the document was emitted
_OUTPUT = {"json": False, "stdout": None, "emitted": False}


def say(*parts, **kwargs) -> None:
    """Text for a person: stdout, or stderr under ``--json`` (stdout then carries exactly one JSON document)."""
    print(*parts, file=sys.stderr if _OUTPUT["json"] else sys.stdout, **kwargs)


def emit(document) -> None:
    """A command's machine-readable result: the one JSON document on stdout."""
    if _OUTPUT["emitted"]:
        raise RuntimeError("a command emits one JSON document, and this one already did")
    _OUTPUT["emitted"] = True
    print(json.dumps(document, indent=2, default=str), file=_OUTPUT["stdout"] or sys.stdout, flush=True)


def finish(document, *lines: str) -> None:
    """A command's result: ``lines`` for a person (:func:`say`) and, under ``--json``, ``document``
    (:func:`emit`); without lines the person gets the document as JSON too."""
    for line in lines:
        say(line)
    if _OUTPUT["json"]:
        emit(document)
    elif not lines:
        say(json.dumps(document, indent=2, default=str))


def finish_stage(res, *lines: str, summary: bool = False) -> None:
    """A stage's result (:class:`stage.StageResult`): under ``--json`` its record (output, MLflow run,
    summary); for a person ``lines``, after the summary as JSON with ``summary`` (not repeated under --json)."""
    if summary and not _OUTPUT["json"]:
        lines = (json.dumps(dict(res.summary), indent=2, default=str), *lines)
    finish(res.to_json(), *lines)


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

    counts = synth.class_counts(record)
    finish({"out": str(args.out), "fields": len(record["fields"]), "labelled": len(record["labelled"]),
            "counts": counts},
           format_counts(counts), f"\nwrote {len(record['fields'])} fields and {len(record['labelled'])} labelled "
           f"crops to {args.out}")
    return 0


@command("demo")(lambda p: None)
def run_demo_cmd(args) -> int:
    """Run every stage of the method on a small synthetic dataset, locally."""
    from .demo import format_summary, run_demo
    from .pipeline import model_parts

    if not (args.config or args.preset):
        args.preset = "demo"
    cfg = config_from(args)
    check_models(cfg, model_parts(cfg))  # before the data is generated
    if args.no_progress:
        from .runtime import hide_progress_bars

        hide_progress_bars()
    summary = run_demo(cfg, progress=not args.no_progress)
    finish(summary, format_summary(summary))
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
    from .pipeline import model_parts, run_pipeline

    cfg = config_from(args, [f"synth.images={args.synthetic}"] if args.synthetic else [])
    if not args.synthetic and not args.labelled:
        raise ValueError("--smears needs --labelled (the labelled cells, ImageFolder or CSV)")
    check_models(cfg, model_parts(cfg))  # before any data is generated or read
    if args.no_progress:
        from .runtime import hide_progress_bars

        hide_progress_bars()
    if args.synthetic:
        from .data.synth import ensure_synthetic

        data = Path(cfg.run.work_dir).resolve() / "data"
        ensure_synthetic(cfg.synth, data, progress=not args.no_progress)
        smears, labelled = str(data / "smears"), data / "labelled"
    else:
        smears, labelled = args.smears, args.labelled
    record = run_pipeline(cfg, smears, labelled, register=not args.no_register)
    lines = [json.dumps({k: v for k, v in record.items() if k != "stages"}, indent=2, default=str)]
    if "register" in record["stages"]:
        from .serving.registry import format_decision

        lines.append(format_decision(record["stages"]["register"].summary))
    # as pipeline.json: every stage's output, MLflow run and summary
    finish({**record, "stages": {k: v.to_json() for k, v in record["stages"].items()}}, *lines)
    return 0


@command("methods")(lambda p: None)
def run_methods(args) -> int:
    """The registered SSL methods: name (pretrain.method), label, views and settings (pretrain.options)."""
    from .ssl.base import describe

    methods = describe()
    if _OUTPUT["json"]:
        emit(methods)
        return 0
    for m in methods:
        say(f"{m['name']:<10} {m['label']} ({m['views']} view{'s' if m['views'] > 1 else ''})")
        for key, default in m["settings"].items():
            say(f"    pretrain.options.{key:<14} {default!r:<8} {m['help'][key]}")
    return 0


def _config_args(p):
    p.add_argument("--section", help="print only this section")


@command("config")(_config_args)
def run_config(args) -> int:
    """Validate and print the resolved configuration as YAML (as JSON with --json)."""
    cfg = config_from(args)
    if args.section and args.section not in type(cfg).model_fields:
        raise ConfigError(f"unknown section {args.section!r}; sections: {', '.join(type(cfg).model_fields)}")
    from .features.backbone import check_backbone  # torch and timm (seconds): only once the config is valid

    # pretrain.method and its options (checked by the method itself) and the timm model names; weights
    # files are checked by the commands that load them (they may live on a cluster's disk)
    check_backbone(cfg, ("pretrain", "embed", "finetune", "cnn_baseline"), weights=False)
    shown = getattr(cfg, args.section) if args.section else cfg
    if _OUTPUT["json"]:
        emit(shown.model_dump(mode="json"))
    else:
        say(to_yaml(shown), end="")
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
    res = run_filter(cfg, args.input, args.out, overwrite=args.overwrite, cpus_per_task=args.cpus_per_task)
    finish_stage(res, format_summary(res.summary), f"outputs in {args.out}")
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
    p.add_argument("--report", type=Path, help="also write the report here (default: REGIONS/eval_<label>.json)")


@command("filter-eval")(_filter_eval_args)
def run_filter_eval(args) -> int:
    """Score filtered regions against annotated boxes: recall, precision, matched IoU."""
    from .stages.filter_eval import run_filter_eval

    cfg = start_stage(args, ray=False)
    res = run_filter_eval(cfg, args.regions, args.boxes, args.report, label=args.label, iou=args.iou,
                          masks=args.masks)
    finish_stage(res, summary=True)
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

    cfg = start_stage(args, models=("embed",))
    source, spec = ("regions", args.regions) if args.regions else ("labelled", args.labelled)
    finish_stage(run_embed(cfg, source, spec, args.out, overwrite=args.overwrite), summary=True)
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
    res = run_select(cfg, args.embeddings, args.out, labelled_embeddings=args.labelled,
                     snapshot=args.prototypes, regions=args.regions, overwrite=args.overwrite)
    finish_stage(res, format_report(res.summary), f"outputs in {args.out}")
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
    from .pipeline import model_parts
    from .stages.select_eval import read_image_labels, region_classes

    cfg = start_stage(args, models=model_parts)
    truth = None
    if args.boxes:
        labels = read_image_labels(args.image_labels) if args.image_labels else None
        truth = region_classes(args.regions, args.boxes, args.label, image_labels=labels)
    res = run_bootstrap(cfg, args.regions, args.labelled, args.out, truth=truth,
                        rare=frozenset(filter(None, args.rare.split(","))), storage=args.storage,
                        overwrite=args.overwrite)
    finish_stage(res, format_rounds(res.summary), f"outputs in {args.out}; the last round's selection: "
                 f"{res['selection']}")
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

    cfg = start_stage(args, models=("pretrain",))
    finish_stage(run_pretrain(cfg, args.out, regions=args.regions, selection=args.selection, fields=args.fields,
                              name=args.name, storage=args.storage, overwrite=args.overwrite,
                              max_failures=args.max_failures), summary=True)
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
    cfg = start_stage(args, models=("finetune",))
    res = run_finetune(cfg, args.labelled, args.out, folds_file=args.folds, name=args.name, storage=args.storage,
                       overwrite=args.overwrite)
    finish_stage(res, format_table2({res["name"]: dict(res.summary)}), f"outputs in {args.out}")
    return 0


def _compare_args(p):
    p.add_argument("baseline", type=Path, help="a `finetune` output directory (A)")
    p.add_argument("candidate", type=Path, help="another one, on the same folds (B)")
    p.add_argument("--report", type=Path, help="also write the comparison here (JSON)")


@command("compare")(_compare_args)
def run_compare(args) -> int:
    """B vs A over the same splits: the corrected resampled t-test (it decides) and the paper's paired t-test."""
    from .evaluation.report import compare_runs, format_comparison, load_run

    cfg = config_from(args)
    comparison = compare_runs(load_run(args.baseline), load_run(args.candidate), cfg.evaluate.significance)
    if args.report:
        args.report.write_text(json.dumps(comparison, indent=2))
    finish(comparison, format_comparison(comparison))
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

    baselines = [b for b in args.baselines.split(",") if b]
    cfg = start_stage(args, models=("pretrain",) + (("cnn_baseline",) if "resnet" in baselines else ()))
    res = run_ablation(cfg, args.labelled, args.out, regions=args.regions, selection=args.selection,
                       fields=args.fields, methods=[m for m in args.methods.split(",") if m],
                       baselines=baselines,
                       rows=[r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None,
                       overwrite=args.overwrite)
    finish_stage(res, format_table2(res["runs"], res["pairs"], cfg.evaluate.significance, res["table2"]),
                 f"report: {args.out}/report.html (and report.md)")
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
    cfg = start_stage(args, models=("pretrain",))
    res = run_sweep(cfg, args.space, args.out, regions=args.regions, embeddings=args.embeddings,
                    labelled_embeddings=args.labelled_embeddings, labelled=args.labelled, images=args.input,
                    boxes=args.boxes, label=args.label, name=args.name, storage=args.storage,
                    overwrite=args.overwrite)
    finish_stage(res, f"best configuration: {args.out}/best.yaml (use it with --config); all trials: "
                 f"{args.out}/trials.csv", summary=True)
    return 0


def _register_args(p):
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="the MLflow run id of a `finetune` run made with finetune.final_fit=true "
                       "(registers the model it logged: runs:/ID/model)")
    which.add_argument("--run", type=Path, help="a `finetune` output made with finetune.final_fit=true (the run "
                       "id is read from its metrics.json)")
    p.add_argument("--name", help="registered model name (register.model_name)")
    p.add_argument("--force", action="store_true", help="move the alias even if the model does not beat the champion")
    p.add_argument("--report", type=Path, help="also write the decision record here (JSON)")


@command("register")(_register_args)
def run_register(args) -> int:
    """Register a fine-tuned classifier in the MLflow model registry; promote it if it beats the champion."""
    from .serving.registry import format_decision, register

    if args.name:
        args.overrides.append(f"register.model_name={args.name}")
    cfg = start_stage(args, ray=False)
    record = dict(register(args.run_id or args.run, cfg, force=args.force).summary)
    if args.report:
        args.report.write_text(json.dumps(record, indent=2))
    finish(record, format_decision(record))
    return 0


def _predict_args(p):
    p.add_argument("--model", required=True,
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, an MLflow run id (runs:/ID/model) or a "
                        "`finetune` output directory (made with finetune.final_fit=true)")
    p.add_argument("--input", required=True, help="smear fields: directory, glob or URI (s3://...)")
    add_output_args(p)
    p.add_argument("--overlays", default="8", help="overlay pictures for N fields spread over the input "
                   "(default 8; 0 for none) or 'all'")
    p.add_argument("--filter", dest="filter_from", choices=("model", "config"), default="model",
                   help="region filter settings: the model's own (default; the configuration's when it has none) "
                        "or this command's configuration (--preset, --config, --set filter.*)")
    p.add_argument("--batch-size", type=int, default=4, help="fields per Ray Data batch")
    p.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per prediction task (CPU clusters)")


@command("predict")(_predict_args)
def run_predict_cmd(args) -> int:
    """Batch inference: every cell's subtype and each field's differential count, with overlay pictures."""
    from .data.sources import list_inputs
    from .stages.predict import format_summary, parse_overlays, run_predict

    overlays = parse_overlays(args.overlays)  # bad values and missing inputs fail before Ray starts
    list_inputs(args.input)
    cfg = start_stage(args)
    result = run_predict(cfg, args.model, args.input, args.out, overwrite=args.overwrite, overlays=overlays,
                         filter_from=args.filter_from, batch_size=args.batch_size, cpus_per_task=args.cpus_per_task)
    say(format_summary(result.summary))
    say(f"outputs in {args.out}: cells.parquet (and .csv), fields.csv, errors.csv, overlays/, summary.json")
    if _OUTPUT["json"]:
        emit(result.to_json())
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
    from .stage import log_labelled_input, log_results, stage_run

    cfg = config_from(args)
    check_models(cfg, ("embed",))  # embed.backbone, before the cells are read
    params = {"labelled": str(args.labelled), "backbone": cfg.embed.backbone, "epochs": args.epochs,
              "image_size": args.size}
    with stage_run(cfg, "features", params):
        log_labelled_input(args.labelled, "training")
        path = train_supervised(args.labelled, args.out, cfg, epochs=args.epochs, image_size=args.size)
        labels = json.loads((args.out / "label_ids.json").read_text())
        log_results(args.out, {"labelled_cells": labels["cells"]}, ("features.json", "label_ids.json"),
                    params={"label_ids_digest": labels["digest"]})
    out = args.out.resolve()
    finish({"weights": str(path.resolve()), "backbone": cfg.embed.backbone, "cells": labels["cells"],
            "label_ids": str(out / "label_ids.json"), "features": str(out / "features.json")},
           f"supervised features trained on {args.labelled} ({labels['cells']} cells: label_ids.json): {path}",
           f"use them with: --set embed.weights={path.resolve()} --set embed.backbone={cfg.embed.backbone}",
           "evaluation refuses to score these cells: evaluate on the cells of a split they were not trained on")
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
    lines = [f"{part}: {record[part]['cells']} cells in {args.out / record[part]['file']} ("
             + ", ".join(f"{c} {n}" for c, n in record[part]["classes"].items()) + ")" for part in ("tune", "eval")]
    if record["eval_only_classes"]:
        lines.append(f"evaluated only (too small to split): {', '.join(record['eval_only_classes'])}")
    lines.append(f"train features and sweep on {args.out / 'tune.csv'}; fine-tune and ablate on "
                 f"{args.out / 'eval.csv'}")
    finish(record, *lines)
    return 0


def _crops_args(p):
    p.add_argument("--annotations", required=True, type=Path,
                   help="Pascal VOC XML (a file, or a directory of them or with an Annotations/ folder), COCO JSON, "
                        "or a CSV of boxes (image,x,y,w,h or image,xmin,ymin,xmax,ymax) or points (image,x,y)")
    p.add_argument("--format", help="voc, coco or csv (default: from --annotations: a directory or .xml is voc, "
                   ".json coco, .csv csv)")
    p.add_argument("--images", type=Path, help="folder of the annotated images (default: a JPEGImages/ folder inside "
                   "or beside a VOC Annotations/ folder, else the annotations' folder)")
    p.add_argument("--margin", default="0", help="added on every side of a box: pixels (e.g. 8) or a share of the "
                   "box's width and height (e.g. 15%%); clipped to the image (default 0)")
    p.add_argument("--square", action="store_true", help="make boxes square (the longer side) before the margin")
    p.add_argument("--diameter", type=float, help="point CSVs: cell diameter in pixels; a box of that size around "
                   "each point (a diameter column overrides it per row)")
    p.add_argument("--label-column", default="label", help="CSV column holding the label (default: label)")
    p.add_argument("--label-map", action="append", default=[], metavar="FILE|FROM=TO",
                   help="rename labels: FROM=TO (repeatable) or a YAML/JSON mapping; TO empty or 'drop' skips the "
                        "label; with a map, labels it does not name are errors")
    p.add_argument("--keep", action="append", default=[], metavar="LABEL[,LABEL]",
                   help="only annotations with these labels, as written in the annotations (repeatable)")
    p.add_argument("--image-labels", type=Path, help="CSV image,label (or image,subtype): label every box of an "
                   "image with its image's label (e.g. a subtype per field)")
    p.add_argument("--one-per-image", action="store_true",
                   help="skip the boxes of images that hold more than one (an image label then names its cell)")
    p.add_argument("--size", type=int, help="resize crops to SIZE x SIZE pixels (default: native size)")
    add_output_args(p)


@command("crops")(_crops_args)
def run_crops_cmd(args) -> int:
    """Labelled cell crops from VOC, COCO or CSV annotations, in the labelled-set layout the other stages read."""
    from .data.crops import format_summary, run_crops

    keep = [k.strip() for item in args.keep for k in item.split(",") if k.strip()]
    result = run_crops(args.annotations, args.out, fmt=args.format, images=args.images, label_column=args.label_column,
                       diameter=args.diameter, image_labels=args.image_labels, label_map=args.label_map, keep=keep,
                       margin=args.margin, square=args.square, one_per_image=args.one_per_image, size=args.size,
                       overwrite=args.overwrite)
    say(format_summary(result.summary))
    say(f"outputs in {args.out}: <label>/*.png (use it as --labelled), crops.csv, errors.csv, skipped.csv, "
        "crops.json, contact_sheet*.png")
    if _OUTPUT["json"]:
        emit(result.to_json())
    return 0 if result["crops"] else 1


def _select_eval_args(p):
    p.add_argument("--selection", required=True, type=Path, help="output directory of `activessf select`")
    p.add_argument("--regions", required=True, type=Path, help="the filter output the selection was made from")
    p.add_argument("--boxes", required=True, type=Path, help="ground truth: synthetic ground_truth.json or VOC")
    p.add_argument("--label", default="megakaryocyte", help="ground-truth label of the cells of interest")
    p.add_argument("--rare", default="CA-MK,HL-MK", help="comma-separated rare classes (default: the paper's)")
    p.add_argument("--image-labels", type=Path, help="CSV image,subtype when subtypes name images (e.g. BCCD)")
    p.add_argument("--iou", type=float, default=0.3, help="IoU at which a region is that cell")
    p.add_argument("--report", type=Path, help="also write the report here (default: SELECTION/evidence.json)")


@command("select-eval")(_select_eval_args)
def run_select_eval(args) -> int:
    """Score a selection against ground truth: rare-subtype enrichment and distractors, vs random."""
    from .stages.select_eval import evaluate_selection

    cfg = config_from(args)
    report = evaluate_selection(args.selection, args.regions, args.boxes, args.label,
                                set(filter(None, args.rare.split(","))), args.image_labels, args.iou, cfg.run.seed)
    (args.report or args.selection / "evidence.json").write_text(json.dumps(report, indent=2))
    finish(report)
    return 0


# ------------------------------------------------------------------ main


EXIT_CODES = """\
exit codes:
  0    done
  1    failed while running: the error on one line on stderr (-v adds the traceback,
       which is also kept in the file the message names)
  2    usage or configuration error, found before the work started: a bad option or
       --set value, a missing path, an output that already exists, an unknown model
       name, weights that do not fit the model
  130  interrupted (Ctrl-C)

with --json, stdout holds exactly one JSON document (the result, or on a failure
{"command", "exit_code", "error"}); everything else goes to stderr"""

USAGE_ERRORS = (ConfigError, FileExistsError, FileNotFoundError, ValueError)
QUIETENED = ("activessf", "mlflow")  # loggers whose level a command sets (log_levels)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("activessf")
    except PackageNotFoundError:  # imported from a checkout or shipped to a Ray job, not installed
        from . import __version__

        return __version__


def add_global_args(p: argparse.ArgumentParser, command: bool) -> None:
    """-v, -q and --json, before the command or after it: the command's parser leaves them alone unless given."""
    off = argparse.SUPPRESS if command else False
    p.add_argument("-v", "--verbose", action="store_true", default=off,
                   help="debug logging; a failure prints its traceback")
    p.add_argument("-q", "--quiet", action="store_true", default=off,
                   help="no progress bars, no per-epoch lines, no info logs: warnings, errors and the result "
                        "(run.quiet)")
    p.add_argument("--json", action="store_true", default=off,
                   help="print the result as one JSON document on stdout; everything else goes to stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="activessf", description=__doc__.split("\n")[0], epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"activessf {package_version()}")
    add_global_args(parser, command=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, run) in COMMANDS.items():
        doc = inspect.cleandoc(run.__doc__ or "")
        p = sub.add_parser(name, help=doc.split("\n")[0], description=doc, epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_global_args(p, command=True)
        add_config_args(p)
        add_args(p)
        p.set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (:data:`EXIT_CODES`)."""
    args = build_parser().parse_args(argv)
    args.no_progress = args.no_progress or args.quiet
    _OUTPUT.update(json=args.json, stdout=sys.stdout, emitted=False)
    try:
        # under --json whatever else reaches stdout (a library's print, Ray's forwarded worker output) goes to stderr
        with log_levels(args), contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            code = args.func(args)
        if args.json and not _OUTPUT["emitted"]:
            emit({"command": args.command, "exit_code": code})
        return code
    except KeyboardInterrupt:
        return failed(args, 130, "interrupted")
    except Exception as exc:  # noqa: BLE001  (every error becomes an exit code and one line)
        return failure(args, exc)
    finally:
        _OUTPUT.update(json=False, stdout=None, emitted=False)


@contextlib.contextmanager
def log_levels(args: argparse.Namespace):
    """The platform's log level from -v and -q; under -q MLflow's at warning too (Ray's: runtime.init_ray).
    Restored afterwards (main() may run again in the same process)."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    saved = {name: logging.getLogger(name).level for name in QUIETENED}
    env = os.environ.get("MLFLOW_LOGGING_LEVEL")
    logging.getLogger("activessf").setLevel(level)
    if args.quiet:
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"  # read by MLflow when it is imported later
    try:
        yield
    finally:
        for name, before in saved.items():
            logging.getLogger(name).setLevel(before)
        if args.quiet and env is None:
            del os.environ["MLFLOW_LOGGING_LEVEL"]
        elif args.quiet:
            os.environ["MLFLOW_LOGGING_LEVEL"] = env


def failure(args: argparse.Namespace, exc: Exception) -> int:
    """Exit code 2 for a usage or configuration error raised here, 1 for anything else (with the
    traceback in a file, and on stderr with -v)."""
    cause = root_cause(exc)
    nameless = isinstance(exc, OSError) and exc.errno is not None and exc.filename is None  # not about an input
    if isinstance(exc, USAGE_ERRORS) and cause is exc and not nameless:
        return failed(args, 2, f"error: {exc}", exc)
    path = Path(tempfile.gettempdir()) / f"activessf-{args.command}-{time.strftime('%Y%m%d-%H%M%S')}.traceback"
    text = "".join(traceback.format_exception(exc))
    try:
        path.write_text(text)
    except OSError:
        path = None
    if args.verbose:
        print(text, file=sys.stderr, end="")
    first = (str(cause).strip().splitlines() or [""])[0]
    where = (f" (traceback: {path}" + ("" if args.verbose else "; -v prints it") + ")") if path else ""
    return failed(args, 1, f"failed: {type(cause).__name__}: {first}{where}", cause)


def failed(args: argparse.Namespace, code: int, message: str, exc: BaseException | None = None) -> int:
    """Print ``activessf COMMAND: message`` on stderr (and the error document under --json); return ``code``."""
    print(f"activessf {args.command}: {message}", file=sys.stderr)
    if args.json and not _OUTPUT["emitted"]:
        error = {"type": type(exc).__name__, "message": str(exc)} if exc is not None else {"message": message}
        emit({"command": args.command, "exit_code": code, "error": error})
    return code


def root_cause(exc: BaseException) -> BaseException:
    """The error a Ray task, actor or Ray Train worker raised, out of Ray's wrappers (``RayTaskError``,
    Ray Train's ``WorkerGroupError`` and ``ControllerError``); ``exc`` itself when Ray did not wrap it."""
    for _ in range(8):
        if type(exc).__module__.split(".")[0] != "ray":
            break
        inner = getattr(exc, "cause", None) or getattr(exc, "controller_failure", None)
        failures = getattr(exc, "worker_failures", None)
        if inner is None and failures:
            inner = failures[min(failures)]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


if __name__ == "__main__":
    sys.exit(main())
