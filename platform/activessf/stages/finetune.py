"""Stage 5 on Ray Train: (repeated) stratified k-fold fine-tuning and the paper's metrics.

The fold assignment (``evaluate.repeats`` of them, repeat r seeded ``evaluate.seed + r``) is written to
``OUT/folds.json`` and can be passed to other runs (``--folds``) so that compared runs see identical
splits (NOTES 11). The (repeat, fold) splits and the final fit run in ``resources.concurrent`` Ray Train
runs side by side (lanes; ``finetune.parallel_folds``), each fitting its share of the splits one after
another: a split per run when the cluster has room for all, else a run's start-up (about 10 s of new
processes on 2 cores, docs/startup.md) is paid once per lane, not once per split. Output:

    folds.json        sample id -> fold (one map per repeat), k, repeats, seed, digest, small classes
    predictions.parquet  id, label, repeat, fold, probabilities per class
    metrics.json      per split and mean +/- std over all repeats x k splits: accuracy, PR-AUC (macro),
                      F1 (macro), per-class PR-AUC, confusion matrix; class groups; the classes; k,
                      repeats, classes with fewer than k members and the splits whose held-out part lacks them;
                      label_check: whether what the encoder was selected with learned from these cells
    config.yaml
    pr_curves.png     per-class precision-recall curves, pooled over the held-out splits, AP in the legend
    misclassified.png the most confidently misclassified cells: true class, predicted class, confidence
Each run is one MLflow run with a nested run per split (``NAME-fold3``; ``NAME-r1-fold3`` with repeats) and
the labelled set as its input (name ``labelled``, with its digest). With ``finetune.final_fit`` the run also
logs the final fit as the MLflow pyfunc ``model`` (``runs:/<run id>/model``), which ``activessf register``
registers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import Config, flatten, save_config
from ..data.labelled import list_labelled
from ..data.resize import load_resize, source_size
from ..evaluation.folds import fold_coverage, folds_digest, load_folds, repeated_folds, save_folds
from ..evaluation.metrics import class_groups, fold_metrics, summarise
from ..evaluation.pictures import image_root, write_pictures
from ..evaluation.provenance import check_evaluation, weights_sources
from ..finetune.model import at_encoder_size
from ..resources import plan
from ..stage import (StageResult, child_runs, log_labelled_input, log_results, stage_run, staged_output,
                     train_storage)
from ..subtypes import class_order
from ..tracking import store_uri
from ..training.inline import fits_inline, split_inputs

log = logging.getLogger(__name__)

FILES = ("metrics.json", "folds.json", "config.yaml", "model", "pr_curves.png", "misclassified.png")


def decoded_images(items: list[dict], size: int, inline_mb: float):
    """Every labelled image resized to ``size``, with label, idx and its fold in every repeat (``fold_r0``,
    ...): arrays in this process when they fit ``run.inline_data_mb``, else a materialised Ray dataset
    decoded by Ray Data."""
    import ray

    keep = tuple(k for k in items[0] if k != "path")
    if fits_inline(len(items) * size * size * 3, inline_mb):
        return load_resize({k: [it[k] for it in items] for k in items[0]}, size, keep)
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 16))
    return ds.map_batches(load_resize, fn_kwargs={"size": size, "keep": keep}).materialize()


def fold_split(images, split: tuple[int, int] | str) -> tuple:
    """(train, held-out) parts for ``split`` = (repeat, fold) (``"final"``: every sample, no held-out part),
    as arrays or as materialised datasets (here, so that no data task waits for CPUs the trainers hold)."""
    final = split == "final"
    column, fold = (None, None) if final else (f"fold_r{split[0]}", split[1])
    if isinstance(images, dict):
        train = np.ones(len(images["idx"]), bool) if final else np.asarray(images[column]) != fold
        return ({"image": images["image"][train], "label": np.asarray(images["label"])[train]},
                None if final else {"image": images["image"][~train], "idx": np.asarray(images["idx"])[~train]})
    from ray.data.expressions import col

    if final:
        return images.select_columns(["image", "label"]).materialize(), None
    return (images.filter(expr=col(column) != fold).select_columns(["image", "label"]).materialize(),
            images.filter(expr=col(column) == fold).select_columns(["image", "idx"]).materialize())


def fit_lane(cfg_json: dict, lane: list, parts: list[tuple], meta: dict) -> list[dict]:
    """The splits of ``lane`` ((repeat, fold), or ``"final"``: every sample, no held-out part), whose
    (train, held-out) sets are ``parts``, as one Ray Train run, inside a Ray task.

    Returns per split the held-out predictions (and, for the final fit, the model's weights) from the
    run's last checkpoint, which lives in the run's storage (shared on clusters).
    """
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    from ..training.checkpoint import load_state
    from ..training.finetune_loop import finetune_loop_per_worker

    datasets, splits = {}, []
    for i, (split, (train, val)) in enumerate(zip(lane, parts)):
        final = split == "final"
        streamed, inline = split_inputs({"train": train} if final else {"train": train, "val": val})
        datasets.update({f"{k}{i}": ds for k, ds in streamed.items()})
        splits.append({"cfg": cfg_json, "train_rows": meta["train_rows"][split], "num_classes": meta["num_classes"],
                       "class_counts": meta["class_counts"], "tracking_uri": meta["tracking_uri"],
                       "mlflow_run_id": meta["fold_runs"][split], "has_val": not final, "export_model": final,
                       "inline": inline, "dataset_suffix": str(i),
                       "progress_label": f"finetune {meta['name']} {split_name(split, meta['repeats'])}"})
    trainer = TorchTrainer(
        finetune_loop_per_worker,
        train_loop_config={"splits": splits},
        scaling_config=meta["resources"].scaling_config(),
        run_config=RunConfig(name=lane_run_name(lane, meta), storage_path=meta["storage"]),
        datasets=datasets,
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        states = load_state(d)["splits"]
    outs = []
    for split, state in zip(lane, states):
        out = {"split": split, "loss": state["loss"].tolist()}
        if split == "final":
            out["model"] = state["model"]
        else:
            out.update(idx=state["idx"].numpy(), probs=state["probs"].numpy())
        outs.append(out)
    return outs


def lane_run_name(lane: list, meta: dict) -> str:
    """The Ray Train run of ``lane``: its split's run name, or ``NAME-fold0+final-KEY`` for several."""
    if len(lane) == 1:
        return meta["run_names"][lane[0]]
    return f"{meta['name']}-{'+'.join(split_name(s, meta['repeats']) for s in lane)}-{meta['key']}"


def inputs_key(ft, data: dict) -> str:
    """8 hex digits naming a fine-tuning's inputs: its settings, its encoder's weights, the cells and splits."""
    from ..finetune.model import classifier_spec

    body = json.dumps([ft.digest(), classifier_spec(ft)[3].get("weights_digest"), folds_digest(data["folds"]),
                       sorted(data["ids"])])
    return hashlib.sha256(body.encode()).hexdigest()[:8]


def split_name(split: tuple[int, int] | str, repeats: int) -> str:
    """``final``, ``fold3`` (one repeat: the names of a plain k-fold run) or ``r1-fold3``."""
    if split == "final":
        return "final"
    return f"fold{split[1]}" if repeats == 1 else f"r{split[0]}-fold{split[1]}"


def run_finetune(cfg: Config, labelled: str | Path, out: str | Path, *, folds_file: Optional[str | Path] = None,
                 name: Optional[str] = None, storage: Optional[str] = None, overwrite: bool = False) -> StageResult:
    """Repeated stratified k-fold fine-tuning of ``cfg.finetune`` on the ``labelled`` cells (ImageFolder or
    CSV), on the folds of ``folds_file`` when given; with ``finetune.final_fit`` also the model to deploy."""
    cfg = cfg.model_copy(update={"finetune": at_encoder_size(cfg.finetune)})
    ft = cfg.finetune
    # refuses (evaluation.provenance) when the features or sweep behind the encoder's selection learned from these cells
    labels = check_evaluation(labelled, weights_sources(ft.init), cfg.evaluate.allow_leak)
    data = labelled_set(labelled, cfg, folds_file)
    name = name or f"finetune-{cfg.finetune.digest()[:8]}"
    params = {**{f"finetune.{a}": b for a, b in flatten(ft).items()}, "folds": data["k"], "repeats": data["repeats"],
              "folds_digest": folds_digest(data["folds"]), "samples": len(data["ids"]),
              "label_check": labels["status"], "leaked_cells": labels["leaked_cells"]}
    with staged_output(out, overwrite) as stage, stage_run(cfg, "finetune", params, name) as parent:
        log_labelled_input(labelled, "training")
        splits = [(r, f) for r in range(data["repeats"]) for f in range(data["k"])]
        jobs = splits + (["final"] if ft.final_fit else [])
        names = {s: f"{name}-{split_name(s, data['repeats'])}" for s in jobs}
        runs = child_runs(list(names.values()))
        key = inputs_key(ft, data)  # Ray Train runs resume only on the same inputs
        meta = {"train_rows": {s: train_rows(data, s) for s in jobs},
                "num_classes": len(data["classes"]), "class_counts": data["counts"].tolist(),
                "tracking_uri": store_uri(cfg.run.work_dir), "name": name, "storage": train_storage(cfg, storage),
                "repeats": data["repeats"], "key": key,
                "run_names": {s: f"{n}-{key}" for s, n in names.items()}, "fold_runs": {s: runs[names[s]] for s in jobs}, "resources": plan("finetune", cfg)}
        results = fit_folds(cfg, data["images"], jobs, meta)
        record = write_outputs(stage, cfg, data, results, labelled)
        record.update({"name": name, "mlflow_run_id": parent.info.run_id, "label_check": labels})
        if "model" in record:  # the final fit, logged as this run's pyfunc `model` (what `register` registers)
            from ..serving.registry import log_model

            record["model"].update(logged=log_model(stage / "model", cfg))
        (stage / "metrics.json").write_text(json.dumps(record, indent=2))
        for m in record["folds"]:
            log_results(stage, {k: m[k] for k in ("accuracy", "pr_auc", "f1")},
                        run_id=meta["fold_runs"][m["repeat"], m["fold"]])
        s = record["summary"]
        log_results(stage, {f"{k}_{stat}": s[k][stat] for k in ("accuracy", "pr_auc", "f1") for stat in ("mean", "std")},
                    [f for f in FILES if f != "model"])  # the final fit is in the logged model
    return StageResult("finetune", Path(out).resolve(), record, parent.info.run_id, FILES)


def labelled_set(labelled: str | Path, cfg: Config, folds_file: Optional[str | Path]) -> dict:
    """The labelled cells: ids, classes, labels as indices, folds (one assignment per repeat:
    ``folds_file``'s, or new repeated stratified ones), k, repeats, fold coverage (classes with fewer than
    k members), class counts and the images decoded at the training size."""
    pairs = list_labelled(labelled)
    base = Path(labelled) if Path(labelled).is_dir() else Path(labelled).parent
    ids = [str(p.relative_to(base)) if p.is_relative_to(base) else str(p) for p, _ in pairs]
    labels = [lab for _, lab in pairs]
    classes = class_order(labels)
    if cfg.finetune.num_classes is not None and len(classes) != cfg.finetune.num_classes:
        raise ValueError(f"{labelled} has {len(classes)} classes ({', '.join(classes)}) but finetune.num_classes is "
                         f"{cfg.finetune.num_classes}: fix the labelled set, or set finetune.num_classes to "
                         f"{len(classes)} (or null to take the classes as they come)")
    folds, seed = given_folds(folds_file, ids, cfg) if folds_file else (
        repeated_folds(ids, labels, cfg.evaluate.folds, cfg.evaluate.repeats, cfg.evaluate.seed), cfg.evaluate.seed)
    k = max(max(f.values()) for f in folds) + 1
    coverage = fold_coverage(folds, ids, labels, k)
    if coverage["small_classes"]:
        log.warning("classes with fewer than k = %d members: %s; each is held out in fewer than %d folds, and its "
                    "PR-AUC averages over the splits that hold it out (absent from the held-out part of: %s)", k,
                    ", ".join(f"{c} ({n})" for c, n in coverage["small_classes"].items()), k,
                    "; ".join(f"{c} {', '.join(split_name(tuple(s), len(folds)) for s in splits)}"
                              for c, splits in coverage["absent_classes"].items()))
    y = np.array([classes.index(lab) for lab in labels])
    items = [{"path": str(p), "label": int(y[i]), "idx": i, **{f"fold_r{r}": f[ids[i]] for r, f in enumerate(folds)}}
             for i, (p, _) in enumerate(pairs)]
    images = decoded_images(items, source_size(cfg.finetune.image_size), cfg.run.inline_data_mb)
    return {"ids": ids, "y": y, "classes": classes, "folds": folds, "k": k, "repeats": len(folds), "seed": seed,
            "coverage": coverage, "counts": np.bincount(y, minlength=len(classes)), "images": images}


def given_folds(folds_file: str | Path, ids: list[str], cfg: Config) -> tuple[list[dict], Optional[int]]:
    """The assignments of a ``folds.json`` (and its seed), which decide k and repeats for this run."""
    folds, meta = load_folds(folds_file)
    missing = set().union(*(set(ids) - set(f) for f in folds))
    if missing:
        raise ValueError(f"{folds_file} has no fold for {len(missing)} samples (e.g. {sorted(missing)[:3]}); "
                         "it was made for another labelled set")
    k = max(max(f.values()) for f in folds) + 1
    if (k, len(folds)) != (cfg.evaluate.folds, cfg.evaluate.repeats):
        log.warning("%s holds %d repeat(s) of %d-fold cross-validation, which this run uses: evaluate.folds = %d "
                    "and evaluate.repeats = %d do not apply", folds_file, len(folds), k, cfg.evaluate.folds,
                    cfg.evaluate.repeats)
    return folds, meta.get("seed")


def train_rows(data: dict, split: tuple[int, int] | str) -> int:
    if split == "final":
        return len(data["ids"])
    repeat, fold = split
    return sum(1 for i in data["ids"] if data["folds"][repeat][i] != fold)


def fit_folds(cfg: Config, images, jobs: list, meta: dict) -> list[dict]:
    """Every split (and the final fit) in ``resources.concurrent`` Ray Train runs side by side (lanes,
    :func:`lanes`), each fitting its splits one after another."""
    import ray

    task = ray.remote(num_cpus=0)(fit_lane)
    cfg_json = cfg.model_dump(mode="json")
    pending = [task.remote(cfg_json, lane, [fold_split(images, s) for s in lane], meta)
               for lane in lanes(jobs, meta["resources"].concurrent)]
    return [out for outs in ray.get(pending) for out in outs]


def lanes(jobs: list, concurrent: int) -> list[list]:
    """``jobs`` dealt round-robin into ``concurrent`` lanes (fewer when there are fewer jobs)."""
    n = max(min(concurrent, len(jobs)), 1)
    return [jobs[i::n] for i in range(n) if jobs[i::n]]


def write_outputs(stage: Path, cfg: Config, data: dict, results: list[dict], labelled) -> dict:
    """folds.json, predictions.parquet, the final model and config.yaml; returns the metrics record."""
    ft = cfg.finetune
    final = [r for r in results if r["split"] == "final"]
    results = [r for r in results if r["split"] != "final"]
    record = assemble(results, data, cfg.evaluate)
    save_folds(data["folds"], stage / "folds.json",
               {"k": data["k"], "seed": data["seed"], "labelled": str(labelled), **data["coverage"]})
    write_predictions(stage / "predictions.parquet", results, data["ids"], data["y"], data["classes"])
    write_pictures(stage, stage / "predictions.parquet", data["classes"], image_root(labelled))
    record.update({"init": ft.init, "backbone": ft.backbone, "folds_digest": folds_digest(data["folds"])})
    if final:
        record["model"] = save_model(stage / "model", final[0]["model"], ft, data["classes"], record)
    save_config(cfg, stage)
    return record


def save_model(out: Path, state: dict, ft, classes: list[str], record: dict) -> dict:
    """The final fit as ``model.pt`` (a state dict) and ``model.json`` (how to rebuild and feed it)."""
    import torch

    from ..features.backbone import file_digest
    from ..finetune.model import classifier_spec
    from ..ssl.augment import MEAN, STD

    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "model.pt")
    name, kwargs, _, info = classifier_spec(ft)
    spec = {"timm_name": name, "timm_kwargs": kwargs, "num_classes": len(classes), "classes": classes,
            "image_size": ft.image_size, "mean": list(MEAN), "std": list(STD), "epochs": ft.epochs, **info,
            "trained_on": "every labelled sample (after cross-validation)",
            "folds_digest": record["folds_digest"], "cv_summary": {k: record["summary"][k] for k in
                                                                  ("accuracy", "pr_auc", "f1")},
            "model_digest": file_digest(out / "model.pt")}
    (out / "model.json").write_text(json.dumps(spec, indent=2))
    return {"path": out.name, "digest": spec["model_digest"]}  # relative to the output (``out`` is in staging)


def assemble(results: list[dict], data: dict, ev) -> dict:
    """The metrics record: per (repeat, fold) split, and the summary over all repeats x k splits."""
    y, ids, classes, counts = data["y"], data["ids"], data["classes"], data["counts"].tolist()
    per_fold = []
    for res in sorted(results, key=lambda r: r["split"]):
        (repeat, fold), order = res["split"], np.argsort(res["idx"])
        idx, probs = res["idx"][order], res["probs"][order]
        expected = sorted(i for i, s in enumerate(ids) if data["folds"][repeat][s] == fold)
        if idx.tolist() != expected:
            raise RuntimeError(f"{split_name(res['split'], data['repeats'])}: predictions cover {len(idx)} of "
                               f"{len(expected)} held-out samples")
        per_fold.append({"repeat": repeat, "fold": fold, **fold_metrics(y[idx], probs, classes),
                         "train_loss": res["loss"]})
    return {"classes": classes, "class_counts": dict(zip(classes, counts)),
            "class_groups": class_groups(dict(zip(classes, counts)), ev.rare_share, ev.common_share),
            "k": data["k"], "repeats": data["repeats"], **data["coverage"], "folds": per_fold,
            "summary": {**summarise(per_fold, classes), "k": data["k"], "repeats": data["repeats"]}}


def write_predictions(path: Path, results: list[dict], ids: list[str], y: np.ndarray, classes: list[str]) -> None:
    rows = {"id": [], "label": [], "repeat": [], "fold": [], **{f"p_{c}": [] for c in classes}}
    for res in results:
        for i, p in zip(res["idx"], res["probs"]):
            rows["id"].append(ids[i])
            rows["label"].append(classes[y[i]])
            rows["repeat"].append(res["split"][0])
            rows["fold"].append(res["split"][1])
            for c, v in zip(classes, p):
                rows[f"p_{c}"].append(float(v))
    pq.write_table(pa.table(rows), path)
