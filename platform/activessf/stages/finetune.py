"""Stage 5 on Ray Train: stratified k-fold fine-tuning and the paper's metrics.

The fold assignment is written to ``OUT/folds.json`` and can be passed to
other runs (``--folds``) so that compared runs see identical folds (NOTES 11).
Folds run as parallel Ray Train runs when the cluster has room. Output:

    folds.json        sample id -> fold, k, seed, digest
    predictions.parquet  id, label, fold, probabilities per class
    metrics.json      per fold and mean +/- std: accuracy, PR-AUC (macro), F1 (macro),
                      per-class PR-AUC, confusion matrix; class groups; the classes
    config.yaml
Each run is one MLflow run with a nested run per fold.
"""

from __future__ import annotations

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
from ..evaluation.folds import assign_folds, folds_digest, load_folds, save_folds
from ..evaluation.metrics import class_groups, fold_metrics, summarise
from ..finetune.model import at_encoder_size
from ..resources import plan
from ..stage import StageResult, child_runs, log_results, stage_run, staged_output, train_storage
from ..subtypes import class_order
from ..tracking import store_uri
from ..training.inline import fits_inline, split_inputs

log = logging.getLogger(__name__)

FILES = ("metrics.json", "folds.json", "config.yaml", "model")


def decoded_images(items: list[dict], size: int, inline_mb: float):
    """Every labelled image resized to ``size``, with label, idx and fold: arrays in this process when they
    fit ``run.inline_data_mb``, else a materialised Ray dataset decoded by Ray Data."""
    import ray

    if fits_inline(len(items) * size * size * 3, inline_mb):
        return load_resize({k: [it[k] for it in items] for k in ("path", "label", "idx", "fold")}, size)
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 16))
    return ds.map_batches(load_resize, fn_kwargs={"size": size}).materialize()


def fold_split(images, fold: int | str) -> tuple:
    """(train, held-out) parts for ``fold`` (``"final"``: every sample, no held-out part), as arrays or as
    materialised datasets (here, so that no data task waits for CPUs the trainers hold)."""
    final = fold == "final"
    if isinstance(images, dict):
        train = np.ones(len(images["fold"]), bool) if final else np.asarray(images["fold"]) != fold
        return ({"image": images["image"][train], "label": np.asarray(images["label"])[train]},
                None if final else {"image": images["image"][~train], "idx": np.asarray(images["idx"])[~train]})
    from ray.data.expressions import col

    if final:
        return images.select_columns(["image", "label"]).materialize(), None
    return (images.filter(expr=col("fold") != fold).select_columns(["image", "label"]).materialize(),
            images.filter(expr=col("fold") == fold).select_columns(["image", "idx"]).materialize())


def fit_fold(cfg_json: dict, fold: int | str, train, val, meta: dict) -> dict:
    """One fold (or ``fold="final"``: every sample, no held-out part) as a Ray Train run, inside a Ray task.

    Returns the held-out predictions (and, for the final fit, the model's weights) from the run's
    last checkpoint, which lives in the run's storage (shared on clusters).
    """
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    from ..training.checkpoint import load_state
    from ..training.finetune_loop import finetune_loop_per_worker

    final = fold == "final"
    datasets, inline = split_inputs({"train": train} if final else {"train": train, "val": val})
    trainer = TorchTrainer(
        finetune_loop_per_worker,
        train_loop_config={"cfg": cfg_json, "train_rows": meta["train_rows"][fold],
                           "num_classes": meta["num_classes"], "class_counts": meta["class_counts"],
                           "tracking_uri": meta["tracking_uri"], "mlflow_run_id": meta["fold_runs"][fold],
                           "has_val": not final, "export_model": final, "inline": inline},
        scaling_config=meta["resources"].scaling_config(),
        run_config=RunConfig(name=f"{meta['name']}-{fold_name(fold)}", storage_path=meta["storage"]),
        datasets=datasets,
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        state = load_state(d)
    out = {"fold": fold, "loss": state["loss"].tolist()}
    if final:
        out["model"] = state["model"]
    else:
        out.update(idx=state["idx"].numpy(), probs=state["probs"].numpy())
    return out


def fold_name(fold: int | str) -> str:
    return "final" if fold == "final" else f"fold{fold}"


def run_finetune(cfg: Config, labelled: str | Path, out: str | Path, *, folds_file: Optional[str | Path] = None,
                 name: Optional[str] = None, storage: Optional[str] = None, overwrite: bool = False) -> StageResult:
    """Stratified k-fold fine-tuning of ``cfg.finetune`` on the ``labelled`` cells (ImageFolder or CSV),
    on the folds of ``folds_file`` when given; with ``finetune.final_fit`` also the model to deploy."""
    cfg = cfg.model_copy(update={"finetune": at_encoder_size(cfg.finetune)})
    ft = cfg.finetune
    data = labelled_set(labelled, cfg, folds_file)
    name = name or f"finetune-{cfg.finetune.digest()[:8]}"
    params = {**{f"finetune.{a}": b for a, b in flatten(ft).items()}, "folds": data["k"],
              "folds_digest": folds_digest(data["folds"]), "samples": len(data["ids"])}
    with staged_output(out, overwrite) as stage, stage_run(cfg, "finetune", params, name) as parent:
        jobs = list(range(data["k"])) + (["final"] if ft.final_fit else [])
        runs = child_runs([f"{name}-{fold_name(f)}" for f in jobs])
        meta = {"train_rows": {f: int(sum(1 for i in data["ids"] if data["folds"][i] != f)) for f in jobs},
                "num_classes": len(data["classes"]), "class_counts": data["counts"].tolist(),
                "tracking_uri": store_uri(cfg.run.work_dir), "name": name, "storage": train_storage(cfg, storage),
                "fold_runs": {f: runs[f"{name}-{fold_name(f)}"] for f in jobs}, "resources": plan("finetune", cfg)}
        results = fit_folds(cfg, data["images"], jobs, meta)
        record = write_outputs(stage, cfg, data, results, labelled)
        record.update({"name": name, "mlflow_run_id": parent.info.run_id})
        (stage / "metrics.json").write_text(json.dumps(record, indent=2))
        for f, m in enumerate(record["folds"]):
            log_results(stage, {k: m[k] for k in ("accuracy", "pr_auc", "f1")}, run_id=meta["fold_runs"][f])
        s = record["summary"]
        log_results(stage, {f"{k}_{stat}": s[k][stat] for k in ("accuracy", "pr_auc", "f1") for stat in ("mean", "std")},
                    FILES)
    return StageResult("finetune", Path(out).resolve(), record, parent.info.run_id, FILES)


def labelled_set(labelled: str | Path, cfg: Config, folds_file: Optional[str | Path]) -> dict:
    """The labelled cells: ids, classes, labels as indices, folds (``folds_file``'s or new stratified
    ones), class counts and the images decoded at the training size."""
    pairs = list_labelled(labelled)
    base = Path(labelled) if Path(labelled).is_dir() else Path(labelled).parent
    ids = [str(p.relative_to(base)) if p.is_relative_to(base) else str(p) for p, _ in pairs]
    labels = [lab for _, lab in pairs]
    classes = class_order(labels)
    if cfg.finetune.num_classes is not None and len(classes) != cfg.finetune.num_classes:
        raise ValueError(f"{labelled} has {len(classes)} classes ({', '.join(classes)}) but finetune.num_classes is "
                         f"{cfg.finetune.num_classes}: fix the labelled set, or set finetune.num_classes to "
                         f"{len(classes)} (or null to take the classes as they come)")
    if folds_file:
        folds = load_folds(folds_file)
        missing = set(ids) - set(folds)
        if missing:
            raise ValueError(f"{folds_file} has no fold for {len(missing)} samples (e.g. {sorted(missing)[:3]}); "
                             "it was made for another labelled set")
    else:
        folds = assign_folds(ids, labels, cfg.evaluate.folds, cfg.evaluate.seed)
    y = np.array([classes.index(lab) for lab in labels])
    items = [{"path": str(p), "label": int(y[i]), "idx": i, "fold": folds[ids[i]]} for i, (p, _) in enumerate(pairs)]
    images = decoded_images(items, source_size(cfg.finetune.image_size), cfg.run.inline_data_mb)
    return {"ids": ids, "y": y, "classes": classes, "folds": folds, "k": max(folds.values()) + 1,
            "counts": np.bincount(y, minlength=len(classes)), "images": images}


def fit_folds(cfg: Config, images, jobs: list, meta: dict) -> list[dict]:
    """Every fold (and the final fit) as Ray Train runs, ``resources.concurrent`` at a time."""
    import ray

    task = ray.remote(num_cpus=0)(fit_fold)
    cfg_json = cfg.model_dump(mode="json")
    pending, results = [], []
    for f in jobs:
        train, val = fold_split(images, f)
        pending.append(task.remote(cfg_json, f, train, val, meta))
        if len(pending) >= meta["resources"].concurrent:
            done, pending = ray.wait(pending, num_returns=1)
            results += ray.get(done)
    return results + ray.get(pending)


def write_outputs(stage: Path, cfg: Config, data: dict, results: list[dict], labelled) -> dict:
    """folds.json, predictions.parquet, the final model and config.yaml; returns the metrics record."""
    ft = cfg.finetune
    final = [r for r in results if r["fold"] == "final"]
    results = [r for r in results if r["fold"] != "final"]
    record = assemble(results, data["y"], data["ids"], data["folds"], data["classes"], data["counts"], cfg.evaluate)
    save_folds(data["folds"], stage / "folds.json", {"k": data["k"], "seed": cfg.evaluate.seed, "labelled": str(labelled)})
    write_predictions(stage / "predictions.parquet", results, data["ids"], data["y"], data["classes"])
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
    return {"path": str(out), "digest": spec["model_digest"]}


def assemble(results: list[dict], y: np.ndarray, ids: list[str], folds: dict, classes: list[str],
             counts: np.ndarray, ev) -> dict:
    per_fold = []
    for res in sorted(results, key=lambda r: r["fold"]):
        order = np.argsort(res["idx"])
        idx, probs = res["idx"][order], res["probs"][order]
        expected = sorted(i for i, s in enumerate(ids) if folds[s] == res["fold"])
        if idx.tolist() != expected:
            raise RuntimeError(f"fold {res['fold']}: predictions cover {len(idx)} of {len(expected)} held-out samples")
        per_fold.append({"fold": res["fold"], **fold_metrics(y[idx], probs, classes), "train_loss": res["loss"]})
    return {"classes": classes, "class_counts": dict(zip(classes, counts.tolist())),
            "class_groups": class_groups(dict(zip(classes, counts.tolist())), ev.rare_share, ev.common_share),
            "folds": per_fold, "summary": summarise(per_fold, classes)}


def write_predictions(path: Path, results: list[dict], ids: list[str], y: np.ndarray, classes: list[str]) -> None:
    rows = {"id": [], "label": [], "fold": [], **{f"p_{c}": [] for c in classes}}
    for res in results:
        for i, p in zip(res["idx"], res["probs"]):
            rows["id"].append(ids[i])
            rows["label"].append(classes[y[i]])
            rows["fold"].append(res["fold"])
            for c, v in zip(classes, p):
                rows[f"p_{c}"].append(float(v))
    pq.write_table(pa.table(rows), path)
