"""Stage 4 on Ray Train: self-supervised pretraining on the selected regions (or an ablation source).

Sources (``pretrain.source``): ``selected`` - the regions a selection kept
(ActiveSSF); ``filtered`` - every filtered region (CRF only); ``fields`` -
random crops of whole smear fields (no filtering). Images are decoded and
resized once: in this process when the decoded set fits ``run.inline_data_mb``
(it then travels to the workers in memory), else by Ray Data, streamed to the
workers as dataset shards. Augmentations run in the workers.

Output (``OUT``):

    encoder.pt      the pretrained encoder: a timm state dict (weights_only loadable)
    encoder.json    method, size, image/patch size, timm model name and kwargs, digest, final loss, the
                    selection it was pretrained on (what fine-tuning traces labels back through)
    history.json    per-epoch loss, lr, images/s, skipped steps, rollbacks
    reconstructions/reconstruction_epochNNNN.png   originals / masked / reconstructed (MAE-like methods)
    config.yaml
Checkpoints live in Ray Train's storage (``--storage``, default
``<work_dir>/ray_results``) under the run name plus a digest of the inputs; rerunning the same name on
the same inputs resumes, on other inputs starts a new run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from ..config import Config, flatten, save_config
from ..data.decode import decode_image
from ..data.resize import decode_resize, source_size
from ..data.sources import list_inputs, read_bytes
from ..process import image_worker
from ..resources import Resources, plan
from ..stage import StageResult, log_regions_input, log_results, stage_run, staged_output, train_storage
from ..tracking import store_uri
from ..training.inline import first_rows, fits_inline, row_count, split_inputs
from ..training.schedule import budget

log = logging.getLogger(__name__)

FILES = (("encoder.pt", "encoder"), ("encoder.json", "encoder"), "history.json", "config.yaml")


def field_crops(batch: dict, size: int, crop: int, per_field: int, seed: int) -> dict:
    """``per_field`` random square crops of side ``crop`` from each whole field (the no-filter ablation)."""
    import cv2

    image_worker()
    out = []
    for path in batch["path"]:
        img = decode_image(read_bytes(str(path)), 10**9)
        h, w = img.shape[:2]
        c = min(crop, h, w)
        rng = np.random.default_rng([seed, int(hashlib.sha1(str(path).encode()).hexdigest()[:8], 16)])
        for _ in range(per_field):
            y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            out.append(cv2.resize(img[y : y + c, x : x + c], (size, size), interpolation=cv2.INTER_AREA))
    return {"image": np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)}


def training_images(cfg: Config, regions: Optional[Path], selection: Optional[Path], fields: Optional[str]):
    """The training set: ``{"image": uint8 (N, S, S, 3)}`` in memory when it fits ``run.inline_data_mb``,
    else a materialised Ray dataset of such rows (decoded in parallel by Ray Data)."""
    size = source_size(cfg.pretrain.image_size)
    if cfg.pretrain.source == "fields":
        return field_images(cfg, fields, size)
    if regions is None:
        raise ValueError(f"pretrain.source={cfg.pretrain.source} needs --regions (the filter output)")
    keep = selected_ids(selection) if cfg.pretrain.source == "selected" else None
    table = Path(regions) / "regions"
    rows = len(keep) if keep is not None else pq.read_table(table, columns=["region_id"]).num_rows
    if fits_inline(rows * size * size * 3, cfg.run.inline_data_mb):
        t = pq.read_table(table, columns=["region_id", "crop"]).to_pydict()
        crops = [c for r, c in zip(t["region_id"], t["crop"]) if keep is None or r in keep]
        return decode_resize({"crop": crops}, size)
    import ray

    ds = ray.data.read_parquet(str(table)).select_columns(["region_id", "crop"])
    if keep is not None:
        ds = ds.filter(lambda row: row["region_id"] in keep)
    return ds.map_batches(decode_resize, fn_kwargs={"size": size}).materialize()


def selected_ids(selection: Optional[Path]) -> set:
    """Ids of the regions a selection kept (an error when there is no selection or it kept nothing)."""
    if selection is None:
        raise ValueError("pretrain.source=selected needs --selection (the output of `activessf select`)")
    t = pq.read_table(Path(selection) / "selection", columns=["region_id", "selected"]).to_pydict()
    keep = {r for r, s in zip(t["region_id"], t["selected"]) if s}
    if not keep:
        raise ValueError(f"the selection in {selection} kept no region: nothing to pretrain on")
    return keep


def field_images(cfg: Config, fields: Optional[str], size: int):
    """Random crops of whole fields (the no-filter ablation), in memory or as a Ray dataset as above."""
    if not fields:
        raise ValueError("pretrain.source=fields needs --fields (smear images: directory, glob or URI)")
    items = [{"path": p.decode() if isinstance(p, bytes) else p} for p in list_inputs(fields)]
    crops = {"size": size, "crop": 160, "per_field": 4, "seed": cfg.run.seed}
    if fits_inline(len(items) * crops["per_field"] * size * size * 3, cfg.run.inline_data_mb):
        return field_crops({"path": [i["path"] for i in items]}, **crops)
    import ray

    return ray.data.from_items(items).map_batches(field_crops, fn_kwargs=crops).materialize()


def inputs_key(p, regions: Optional[str | Path], selection: Optional[str | Path], fields: Optional[str],
               rows: int) -> str:
    """8 hex digits naming a pretraining's inputs: its settings, its source and the images it trains on."""
    kept = sorted(selected_ids(Path(selection))) if p.source == "selected" else None
    where = {"regions": str(Path(regions).resolve()) if regions else None, "fields": fields}
    body = json.dumps([p.digest(), p.source, where, rows, kept], default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:8]


def startup_seconds(fit_started: float, timeline: dict) -> dict:
    """When ``fit()`` was called (epoch seconds) and the seconds from it to each start-up mark of the loop
    (the last worker attempt's: after a restart, the restart's)."""
    return {"fit_started": fit_started, **{f"fit_to_{k}": round(v - fit_started, 2) for k, v in timeline.items()}}


def run_pretrain(cfg: Config, out: str | Path, *, regions: Optional[str | Path] = None,
                 selection: Optional[str | Path] = None, fields: Optional[str] = None, name: Optional[str] = None,
                 storage: Optional[str] = None, overwrite: bool = False, max_failures: int = 1,
                 test_hooks: Optional[dict] = None) -> StageResult:
    """Pretrain ``cfg.pretrain.method`` with Ray Train on the regions a ``selection`` kept (or every
    filtered region in ``regions``, or random crops of the smear ``fields``: ``pretrain.source``).
    Rerunning the same ``name`` on the same inputs resumes from its last checkpoint (the Ray Train run is
    ``<name>-<digest of the inputs>``). ``test_hooks`` inject faults (tests)."""
    from ..ssl import method_class  # torch and timm: not imported by the Ray Data tasks that use this module

    p = cfg.pretrain
    res = plan("pretrain", cfg)
    method = method_class(p, max(p.batch_size // (res.workers * p.accum_steps), 1))  # fails here, not in a worker
    images = training_images(cfg, Path(regions) if regions else None, Path(selection) if selection else None, fields)
    rows = row_count(images)
    if rows < p.batch_size:  # every step takes a whole batch: a smaller pool would train nothing, silently
        raise ValueError(f"only {rows} training images for a batch of {p.batch_size}: nothing to train on; lower "
                         f"pretrain.batch_size to at most {rows}, or give pretraining more images (pretrain.source, "
                         "a looser selection)")
    spent = budget(rows, p.batch_size, res.workers, p.accum_steps, p.epochs, p.step_target())
    if spent["epochs"] != p.epochs:  # pretrain.steps or .images: the epochs that reach it on this pool
        p = p.model_copy(update={"epochs": spent["epochs"], "warmup_epochs": min(p.warmup_epochs, spent["epochs"] - 1),
                                 "checkpoint_every": min(p.checkpoint_every, spent["epochs"])})
        cfg = cfg.model_copy(update={"pretrain": p})
        log.info("%d optimiser steps: %d epochs of %d steps on %d images", p.step_target(), p.epochs,
                 spent["steps_per_epoch"], rows)
    # the Ray Train run (its checkpoints) is keyed by what it trains on: rerunning a name on the same inputs
    # resumes it, on other inputs (another selection, other settings) starts afresh
    name = f"{name or f'pretrain-{p.method}-{p.source}'}-{inputs_key(p, regions, selection, fields, rows)}"
    storage = train_storage(cfg, storage)
    params = {**flatten(p), "rows": rows, "run_name": name}
    with staged_output(out, overwrite) as stage, stage_run(cfg, "pretrain", params, f"pretrain-{p.method}") as run:
        if regions is not None:
            log_regions_input(regions, "training")
        loop_config = {
            "cfg": cfg.model_dump(mode="json"),
            "rows": rows,
            "tracking_uri": store_uri(cfg.run.work_dir),
            "mlflow_run_id": run.info.run_id,
            "visualise_every": max(p.epochs // 4, 1),
            "sample_images": first_rows(images, "image", 8) if rows else None,
            "marker": str(Path(storage) / name / "failed_once"),
            "viz_dir": str(stage / "reconstructions"),
            "method_class": method,
            **(test_hooks or {}),
        }
        fit_started = time.time()
        state = fit(loop_config, images, res, name, storage, max_failures, p.keep_checkpoints)
        selected = str(Path(selection).resolve()) if selection and p.source == "selected" else None
        record = write_encoder(stage, cfg, method, state, {"rows": rows, "run_name": name, "storage": storage,
                                                           "budget": {**spent, "seconds": round(time.time()
                                                                                                - fit_started, 1)},
                                                           "selection": selected,
                                                   "startup": startup_seconds(fit_started, state.get("timeline", {})),
                                                   "mlflow_run_id": run.info.run_id})
        log_results(stage, {}, FILES)
    return StageResult("pretrain", Path(out).resolve(), record, run.info.run_id, FILES)


def fit(loop_config: dict, images, res: Resources, name: str, storage: str, max_failures: int,
        keep_checkpoints: int) -> dict:
    """One Ray Train run of the pretraining loop on ``images``; the state of its last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from ..training.checkpoint import load_state
    from ..training.interrupt import interruptible
    from ..training.loop import train_loop_per_worker

    datasets, inline = split_inputs({"train": images})
    trainer = interruptible(TorchTrainer)(  # Ctrl-C: the run aborts, KeyboardInterrupt, the checkpoints stay
        train_loop_per_worker,
        train_loop_config={**loop_config, "inline": inline},
        scaling_config=res.scaling_config(),
        run_config=RunConfig(name=name, storage_path=storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
                             failure_config=FailureConfig(max_failures=max_failures)),
        datasets=datasets,
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        return load_state(d)


def write_encoder(stage: Path, cfg: Config, method, state: dict, run: dict) -> dict:
    """``encoder.pt`` (a timm state dict), ``encoder.json`` (how to rebuild it; how it was trained),
    ``history.json`` and ``config.yaml``; returns the record in ``encoder.json``."""
    import torch

    from ..features.backbone import file_digest

    p = cfg.pretrain
    torch.save(state["encoder"], stage / "encoder.pt")
    record = {
        "method": p.method, "model": p.model, "image_size": p.image_size, "patch_size": p.patch_size,
        **method.encoder_spec(p), "options": method.settings(p).model_dump(),
        "source": p.source, "selection": run.get("selection"), "rows": run["rows"], "epochs": state["epoch"],
        "run_name": run["run_name"],
        "storage": run["storage"], "final_loss": state["history"][-1]["loss"] if state["history"] else None,
        "skipped_steps": state["guard"]["skipped"], "rollbacks": state["guard"]["rollbacks"],
        "lr_factor": state["guard"]["lr_factor"], "resumed": state["resumed"], "startup": run["startup"],
        "placements": state.get("placements", []),  # each (re)start: its first epoch and the Ray node of each rank
        "budget": run["budget"],
        "weights_digest": file_digest(stage / "encoder.pt"), "mlflow_run_id": run["mlflow_run_id"],
    }
    (stage / "encoder.json").write_text(json.dumps(record, indent=2))
    (stage / "history.json").write_text(json.dumps(state["history"], indent=2))
    save_config(cfg, stage)
    return record
