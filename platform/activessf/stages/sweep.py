"""``activessf sweep``: Ray Tune over selection or filter settings, every trial an MLflow run.

Selection sweeps (``kind: selection``): each trial fits prototypes and selects
regions with its settings (pure NumPy/FAISS on precomputed embeddings), then
pretrains briefly on the selected regions with Ray Train inside the trial
(Train V2's pattern: the trial function builds and fits a ``TorchTrainer`` with
``TuneReportCallback``), and reports after every epoch a probe of the encoder
on a held-out fold of the labelled cells (``sweep.probe``, macro PR-AUC). ASHA
stops weak trials at its rungs. Filter sweeps (``kind: filter``): each trial
filters the images with its settings and reports F1 against annotated boxes.

Output (``OUT``):

    trials.csv        one row per trial: id, status, error, every swept value, the objective and its parts
    best.json         the best trial's values and scores
    best.yaml         the full configuration with the best values: use it with --config best.yaml
    sweep.png         the objective against every swept setting, the best trial marked
    space.yaml        the search space as given; config.yaml: the base configuration
    label_ids.json    selection sweeps: the labelled cells the probe scored trials on (best.yaml's
                      sweep.tuned_on points here; evaluation refuses these cells: sweep on a split's tune.csv)
MLflow: one parent run (the space, the base config, the best values and score,
the files above) with one nested run per trial (its settings and every result).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from ..config import Config, flatten, merge, save_config, to_yaml
from ..data.annotations import image_key, load_boxes
from ..data.decode import BadImage, decode_image
from ..data.embeddings import read_embeddings
from ..data.labelled import list_labelled
from ..data.resize import decode_resize, load_resize, source_size
from ..data.sources import list_inputs, read_bytes
from ..evaluation.folds import assign_folds
from ..evaluation.provenance import LABEL_IDS, label_ids_record, refuse_evaluation_part, write_label_ids
from ..regions.evaluate import evaluate
from ..regions.filter import filter_image
from ..resources import plan
from ..selection.prototypes import fit_prototypes, select
from ..stage import (StageResult, code_version_tags, log_labelled_input, log_regions_input, log_results, stage_run,
                     staged_output, train_storage)
from ..subtypes import class_order
from ..sweep.space import SearchSpace, load_space
from ..tracking import store_uri
from ..training.inline import fits_inline, split_inputs

log = logging.getLogger(__name__)

FILES = ("trials.csv", "best.json", "best.yaml", "sweep.png", "space.yaml", LABEL_IDS)

OBJECTIVE = {"selection": "probe_pr_auc", "filter": "f1"}
REPORTED = ("selected", "loss", "probe_accuracy", "probe_f1", "regions", "matched", "recall", "precision")


# ------------------------------------------------------------------ trials (run inside Ray Tune)


def selection_trial(config: dict, space: SearchSpace, base: dict, data: dict, regions_ds) -> None:
    """One selection trial: select with its settings, pretrain briefly, report the probe every epoch."""
    import ray.tune
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..training.loop import train_loop_per_worker

    cfg = space.apply(base, {k: config[k] for k in space.params})
    proto = fit_prototypes(data["labelled_x"], data["labelled_y"], cfg.prototypes, cfg.select)
    chosen = select(proto, data["regions_x"])["selected"]
    keep = set(np.asarray(data["region_ids"])[chosen].tolist())
    if len(keep) < cfg.pretrain.batch_size:
        raise ValueError(f"these settings select {len(keep)} regions, fewer than one batch of "
                         f"{cfg.pretrain.batch_size}: nothing to pretrain on")
    if isinstance(regions_ds, dict):  # in memory (fits run.inline_data_mb)
        mask = np.isin(regions_ds["region_id"], list(keep))
        train = {"image": regions_ds["image"][mask]}
    else:
        train = regions_ds.filter(lambda row: row["region_id"] in keep).select_columns(["image"]).materialize()
    datasets, inline = split_inputs({"train": train})
    trial = ray.tune.get_context()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "rows": len(keep), "probe": data["probe"],
                           "report_constants": {"selected": len(keep)}, "visualise_every": 0, "inline": inline},
        scaling_config=data["resources"].scaling_config(),
        run_config=RunConfig(name=f"{trial.get_experiment_name()}-{trial.get_trial_id()}",
                             storage_path=data["storage"], callbacks=[TuneReportCallback()]),
        datasets=datasets,
    )
    trainer.fit()


def filter_trial(config: dict, space: SearchSpace, base: dict, data: dict) -> None:
    """One filter trial: the filter with its settings on every image, F1 against the boxes."""
    import ray.tune

    cfg = space.apply(base, {k: config[k] for k in space.params})
    found: dict[str, list] = {}
    for path in data["images"]:
        try:
            rgb = decode_image(read_bytes(path), cfg.filter.max_pixels)
        except (BadImage, OSError):
            continue  # the filter stage reports bad files; a sweep only scores the good ones
        found[image_key(str(path))] = [(r.x, r.y, r.w, r.h) for r in filter_image(rgb, cfg.filter).regions]
    truth = {k: v for k, v in data["truth"].items() if k in found}
    rep = evaluate(found, truth, data["label"], cfg.sweep.iou)
    ray.tune.report({"f1": f1(rep.recall, rep.precision), "recall": _num(rep.recall),
                     "precision": _num(rep.precision), "regions": rep.regions, "matched": rep.matched})


def f1(recall: float, precision: float) -> float:
    """Harmonic mean of recall and precision; 0 when either is 0 or undefined."""
    r, p = _num(recall), _num(precision)
    return 2 * r * p / (r + p) if r + p > 0 else 0.0


def _num(v: float) -> float:
    return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# ------------------------------------------------------------------ inputs


def selection_inputs(cfg: Config, regions: Path, embeddings: Path, labelled_embeddings: Path,
                     labelled: Path, storage: str) -> tuple[dict, object]:
    """What every selection trial shares: embeddings, the probe's images and fold, the decoded regions."""
    import ray

    region_ids, _, regions_x, _ = read_embeddings(embeddings)
    _, lab_labels, lab_x, _ = read_embeddings(labelled_embeddings)
    pairs = list_labelled(labelled)
    names = [lab for _, lab in pairs]
    classes = class_order(names)
    ids = [str(p) for p, _ in pairs]
    folds = assign_folds(ids, names, cfg.evaluate.folds, cfg.evaluate.seed)
    if cfg.sweep.probe_fold >= cfg.evaluate.folds:
        raise ValueError(f"sweep.probe_fold ({cfg.sweep.probe_fold}) must be < evaluate.folds ({cfg.evaluate.folds})")
    images = load_resize({"path": ids}, cfg.pretrain.image_size, keep=())["image"]
    probe = {"images": images, "labels": np.array([classes.index(n) for n in names]),
             "test": np.array([folds[i] == cfg.sweep.probe_fold for i in ids]),
             "num_classes": len(classes), "kind": cfg.sweep.probe}
    size = source_size(cfg.pretrain.image_size)
    if fits_inline(len(region_ids) * size * size * 3, cfg.run.inline_data_mb):
        t = pq.read_table(Path(regions) / "regions", columns=["region_id", "crop"]).to_pydict()
        ds = decode_resize({"crop": t["crop"], "region_id": np.asarray(t["region_id"])}, size, keep=("region_id",))
    else:
        ds = ray.data.read_parquet(str(Path(regions) / "regions")).select_columns(["region_id", "crop"])
        ds = ds.map_batches(decode_resize, fn_kwargs={"size": size, "keep": ["region_id"]}).materialize()
    data = {"region_ids": region_ids, "regions_x": regions_x, "labelled_x": lab_x,
            "labelled_y": np.asarray(lab_labels, dtype=object), "probe": probe, "storage": storage,
            "resources": plan("sweep-selection", cfg)}
    return data, ds


def filter_inputs(cfg: Config, images: str, boxes: str | Path, label: Optional[str]) -> dict:
    files = list_inputs(images)
    if cfg.sweep.filter_images:
        files = files[: cfg.sweep.filter_images]
    truth = load_boxes(boxes)
    if label is None:
        label = "megakaryocyte" if any(o[0] == "megakaryocyte" for v in truth.values() for o in v) else "WBC"
    known = {o[0] for objs in truth.values() for o in objs}
    if label not in known:
        raise ValueError(f"label {label!r} is not in the annotations; labels there: {', '.join(sorted(known))}")
    return {"images": [f.decode() if isinstance(f, bytes) else f for f in files], "truth": truth, "label": label}


# ------------------------------------------------------------------ the sweep


def param_space(space: SearchSpace) -> dict:
    """Ray Tune's objects for a validated space."""
    from ray import tune

    make = {"choice": lambda a: tune.choice(list(a)), "grid": lambda a: tune.grid_search(list(a)),
            "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
            "quniform": lambda a: tune.quniform(*a), "randint": lambda a: tune.randint(*a)}
    return {k: make[d.name](d.args) for k, d in space.params.items()}


def run_sweep(cfg: Config, space_file: str | Path, out: str | Path, *, regions=None, embeddings=None,
              labelled_embeddings=None, labelled=None, images=None, boxes=None, label=None,
              name: Optional[str] = None, storage: Optional[str] = None, overwrite: bool = False) -> StageResult:
    """Run the sweep of ``space_file`` (``kind: selection`` needs ``regions``, ``embeddings``,
    ``labelled_embeddings`` and ``labelled``; ``kind: filter`` needs ``images`` and ``boxes``) and write
    its outputs; the result's summary is the best trial's record (``best.json``)."""
    base = cfg.model_dump(mode="json")
    space = load_space(space_file, base)
    metric = OBJECTIVE[space.kind]
    storage = train_storage(cfg, storage)
    name = name or f"sweep-{space.kind}-{cfg.digest()[:8]}"
    labels, best_base = None, base
    if space.kind == "selection":
        trainable, scheduler, trials = selection_trainable(cfg, space, base, str(Path(storage) / name / "train"),
                                                           regions, embeddings, labelled_embeddings, labelled)
        labels = label_ids_record(list_labelled(labelled), "selection sweep probe", labelled)
        tuned_on = base["sweep"]["tuned_on"] + [str(Path(out).resolve() / LABEL_IDS)]
        best_base = merge(base, {"sweep": {"tuned_on": tuned_on}})  # best.yaml says what it was tuned on
    else:
        trainable, scheduler, trials = filter_trainable(cfg, space, base, images, boxes, label)
    params = {"space": str(space_file), "kind": space.kind, "objective": metric,
              **{f"sweep.{k}": v for k, v in flatten(cfg.sweep).items()},
              **({"labelled": str(labelled), "labelled_cells": labels["cells"], "label_ids_digest": labels["digest"]}
                 if labels else {})}
    with staged_output(out, overwrite) as stage, stage_run(cfg, "sweep", params, name) as parent:
        if regions is not None:
            log_regions_input(regions, "tuning")
        if labelled is not None:
            log_labelled_input(labelled, "tuning")
        shutil.copy(space_file, stage / "space.yaml")
        save_config(cfg, stage)
        if labels:
            write_label_ids(stage, labels)
        tuner = tuner_for(trainable, space, cfg, metric, scheduler, trials, name, storage, parent)
        rows = trial_rows(tuner.fit(), space, metric)
        best = best_record(rows, space, best_base, metric, stage, tuned_note(labels))
        if labels:
            best["tuned_on"] = {"labelled": str(labelled), "cells": labels["cells"], "digest": labels["digest"],
                                "label_ids": best_base["sweep"]["tuned_on"][-1]}
        write_outputs(stage, rows, space, metric, best)
        log_results(stage, {f"best_{metric}": best["score"], "trials": len(rows),
                            "trials_failed": sum(r["status"] == "ERROR" for r in rows)}, FILES)
    return StageResult("sweep", Path(out).resolve(), best, parent.info.run_id, FILES)


def selection_trainable(cfg: Config, space: SearchSpace, base: dict, storage: str, regions, embeddings,
                        labelled_embeddings, labelled) -> tuple:
    """(trainable, ASHA scheduler, trials at once) of a selection sweep."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    missing = [n for n, v in (("--regions", regions), ("--embeddings", embeddings),
                              ("--labelled-embeddings", labelled_embeddings), ("--labelled", labelled)) if not v]
    if missing:
        raise ValueError(f"a selection sweep needs {', '.join(missing)}")
    refuse_evaluation_part(labelled, "a selection sweep's probe")
    data, ds = selection_inputs(cfg, Path(regions), Path(embeddings), Path(labelled_embeddings), Path(labelled),
                                storage)
    trainable = tune.with_parameters(selection_trial, space=space, base=_trial_pretrain(base, cfg), data=data,
                                     regions_ds=ds)
    # the trial only drives its Ray Train run (which reserves its own CPUs or GPUs); Tune needs a non-empty bundle
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=cfg.sweep.pretrain_epochs,
                              grace_period=min(cfg.sweep.grace_period, cfg.sweep.pretrain_epochs),
                              reduction_factor=cfg.sweep.reduction_factor)
    return tune.with_resources(trainable, {"cpu": 0.01}), scheduler, data["resources"].concurrent


def filter_trainable(cfg: Config, space: SearchSpace, base: dict, images, boxes, label) -> tuple:
    """(trainable, no scheduler, trials at once) of a filter sweep: one CPU per trial."""
    from ray import tune

    if not (images and boxes):
        raise ValueError("a filter sweep needs --input (images) and --boxes (annotations)")
    data = filter_inputs(cfg, images, boxes, label)
    trainable = tune.with_parameters(filter_trial, space=space, base=base, data=data)
    return tune.with_resources(trainable, {"cpu": 1}), None, plan("sweep-filter", cfg).concurrent


def tuner_for(trainable, space: SearchSpace, cfg: Config, metric: str, scheduler, trials: int, name: str,
              storage: str, parent):
    """The Tuner: trials sampled from ``space`` (seeded), every trial an MLflow run nested under ``parent``."""
    import mlflow
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search import BasicVariantGenerator

    experiment = mlflow.get_experiment(parent.info.experiment_id).name
    tracking = MLflowLoggerCallback(store_uri(cfg.run.work_dir), experiment_name=experiment,
                                    tags={"mlflow.parentRunId": parent.info.run_id, "activessf.sweep": name,
                                          **code_version_tags()})
    return tune.Tuner(
        trainable,
        param_space=param_space(space),
        # the limit goes to the generator: Tune ignores TuneConfig(max_concurrent_trials) beside a
        # BasicVariantGenerator (with only a warning), and trials would start as far as resources go
        tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=cfg.sweep.num_samples,
                                    scheduler=scheduler,
                                    search_alg=BasicVariantGenerator(random_state=cfg.sweep.seed,
                                                                     max_concurrent=trials)),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0 if cfg.run.quiet else 1,
                                   callbacks=[tracking]),
    )


def _trial_pretrain(base: dict, cfg: Config) -> dict:
    """A selection trial pretrains for ``sweep.pretrain_epochs`` on the selected regions."""
    epochs = cfg.sweep.pretrain_epochs
    return merge(base, {"pretrain": {"epochs": epochs, "source": "selected",
                                     "warmup_epochs": min(cfg.pretrain.warmup_epochs, max(epochs - 1, 0)),
                                     "checkpoint_every": epochs}})


def trial_rows(results, space: SearchSpace, metric: str) -> list[dict]:
    """One row per trial: its values, status, objective (last and best reported) and error."""
    rows = []
    for r in results:
        m = r.metrics or {}
        history = r.metrics_dataframe
        best = float(history[metric].max()) if history is not None and metric in history else None
        rows.append({"trial": m.get("trial_id") or Path(str(r.path)).name,
                     "status": "ERROR" if r.error else "OK",
                     "error": str(r.error).strip().splitlines()[-1][:300] if r.error else "",
                     **{k: r.config.get(k) for k in space.params},
                     metric: best, "iterations": m.get("training_iteration"),
                     **{k: m.get(k) for k in REPORTED if k in m}})
    return rows


def tuned_note(labels: Optional[dict]) -> str:
    """best.yaml's header line on the labelled cells a selection sweep was tuned on."""
    if not labels:
        return ""
    return (f"# tuned on the {labels['cells']} labelled cells of {labels['labelled']} (sweep.tuned_on): "
            "evaluations of selections made with it refuse those cells\n")


def best_record(rows: list[dict], space: SearchSpace, base: dict, metric: str, stage: Path, note: str = "") -> dict:
    scored = [r for r in rows if r["status"] == "OK" and r[metric] is not None and not math.isnan(r[metric])]
    if not scored:
        errors = "; ".join(sorted({r["error"] for r in rows if r["error"]}))[:600]
        raise RuntimeError(f"no trial of the sweep produced {metric}" + (f" (errors: {errors})" if errors else ""))
    top = max(scored, key=lambda r: r[metric])
    values = {k: top[k] for k in space.params}
    best_cfg = space.apply(base, values)
    (stage / "best.yaml").write_text(f"# best of {len(rows)} trials of {space.source}: {metric} = {top[metric]:.4f}\n"
                                     + note + to_yaml(best_cfg))
    return {"trial": top["trial"], "values": values, "score": top[metric], "metric": metric,
            "trials": len(rows), "failed": sum(r["status"] == "ERROR" for r in rows)}


def write_outputs(stage: Path, rows: list[dict], space: SearchSpace, metric: str, best: dict) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(stage / "trials.csv", index=False)
    (stage / "best.json").write_text(json.dumps(best, indent=2, default=str))
    sweep_figure(rows, space, metric, best, stage / "sweep.png")


def sweep_figure(rows: list[dict], space: SearchSpace, metric: str, best: dict, path: Path) -> Path:
    """The objective against each swept setting; the best trial in red, failed trials as x at the bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(space.params)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        labels = sorted({json.dumps(r[key], default=str) for r in rows})
        numeric = all(isinstance(r[key], (int, float)) and not isinstance(r[key], bool) for r in rows)
        pos = (lambda v: v) if numeric else (lambda v: labels.index(json.dumps(v, default=str)))
        for r in rows:
            ok = r["status"] == "OK" and r[metric] is not None
            y = r[metric] if ok else 0.0
            colour = "tab:red" if r["trial"] == best["trial"] else "tab:blue"
            ax.scatter(pos(r[key]), y, c=colour if ok else "grey", marker="o" if ok else "x", s=28)
        if not numeric:
            ax.set_xticks(range(len(labels)), [t[:14] for t in labels], rotation=30, fontsize=7)
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
    fig.suptitle(f"{space.kind} sweep: {len(rows)} trials, best {metric} {best['score']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
