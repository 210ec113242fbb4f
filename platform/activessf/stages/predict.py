"""Batch inference on Ray Data: the subtype of every cell of every smear field, and each field's differential count.

The model (``--model``: a registered version, a run or a fine-tuning output;
:func:`activessf.serving.resolve.resolve_model`) runs with the region filter it
was deployed with, as the served model does. Files are listed on the driver and
read in the workers, so an unreadable, broken or non-image file becomes an error
row and the rest completes. The weights travel once through Ray's object store;
CPU tasks keep the loaded model per worker process, and on a cluster with GPUs
an actor per GPU holds it. Output (``OUT``):

    cells.parquet, cells.csv  one row per cell: source, cell, x, y, w, h, subtype, confidence, p_<class>...
    fields.csv                one row per field: source, width, height, cells, n_<class>..., share_<class>..., seconds
    errors.csv                one row per file that could not be processed: source, stage, code, error
    overlays/*.png            fields with their cells boxed in their subtype's colour and a legend with the counts
    summary.json              model, counts, the differential over every field, failures by reason, throughput
    config.yaml               the configuration, with the filter settings that were used
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ..config import Config, FilterConfig, save_config
from ..data.sources import list_inputs, read_bytes
from ..process import image_worker
from ..regions.records import display_name
from ..resources import Resources, plan
from ..serving import batch as pb
from ..serving.resolve import ResolvedModel, resolve_model
from ..stage import StageResult, log_results, stage_run, staged_output
from ..tracking import ensure_mlflow

log = logging.getLogger(__name__)

FILES = ("cells.parquet", "cells.csv", "fields.csv", "errors.csv", "summary.json", "config.yaml", "overlays")
LOGGED = ("summary.json", "fields.csv", "errors.csv", "config.yaml", "overlays")  # cells.* can be large

_LOADED: dict[str, Any] = {}  # per worker process: model key -> CellClassifier (CPU tasks reuse it)


def parse_overlays(value: int | str) -> int | str:
    """``--overlays``: a number of fields (0 for none) or ``all``."""
    if str(value).lower() == "all":
        return "all"
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--overlays {value!r}: give a number of fields (0 for none) or 'all'") from None
    if n < 0:
        raise ValueError(f"--overlays {n}: must be 0 or more (or 'all')")
    return n


# ------------------------------------------------------------------ the Ray Data side


def model_bundle(model: ResolvedModel, filter_cfg: FilterConfig) -> dict:
    """What a worker needs to rebuild the classifier: model.json, model.pt's bytes, the filter settings."""
    spec = model.spec_record
    return {"key": f"{spec.get('model_digest') or id(model)}-{filter_cfg.digest()}", "spec": spec,
            "weights": (model.model_dir / "model.pt").read_bytes(), "filter": filter_cfg.model_dump(mode="json")}


def load_classifier(bundle, device: Optional[str] = None):
    """The bundle's classifier (``bundle`` may be an ObjectRef), loaded once per process."""
    import ray
    import torch

    from ..serving.classifier import CellClassifier

    if isinstance(bundle, ray.ObjectRef):
        bundle = ray.get(bundle)
    state = torch.load(io.BytesIO(bundle["weights"]), map_location="cpu", weights_only=True)
    clf = CellClassifier.from_state(bundle["spec"], state, FilterConfig(**bundle["filter"]))
    return clf.to(torch.device(device)) if device else clf


def predict_files(batch: dict[str, np.ndarray], clf) -> pa.Table:
    """Rows (``batch.ROWS``) of the files of a batch (``path``, ``source``, ``overlay``)."""
    rows = []
    for path, source, overlay in zip(batch["path"], batch["source"], batch["overlay"]):
        path = bytes(path)
        try:
            data = read_bytes(path.decode() if b"://" in path[:16] else path)
        except OSError as exc:
            rows.append(pb.error_row(str(source), "read", "unreadable", f"cannot read the file: {exc.strerror or exc}"))
            continue
        rows += pb.predict_field(data, str(source), clf, bool(overlay))
    return pb.to_table(rows)


def predict_batch(batch: dict[str, np.ndarray], key: str, model, threads: int = 1) -> pa.Table:
    """Ray Data task UDF (CPU): the classifier is loaded on the process's first batch and kept."""
    import torch

    image_worker()
    torch.set_num_threads(threads)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_classifier(model)
    return predict_files(batch, _LOADED[key])


class PredictActor:
    """Ray Data actor UDF (one per GPU): the classifier loads on the actor's device once."""

    def __init__(self, model):
        from ..runtime import select_device

        self.clf = load_classifier(model, str(select_device()))

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return predict_files(batch, self.clf)


def predict_dataset(items: list[dict], bundle: dict, res: Resources, batch_size: int):
    """The materialised Ray dataset of every item's rows: GPU actors when ``res.use_gpu``, else CPU tasks."""
    import ray

    ref = ray.put(bundle)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), res.blocks)))
    if res.use_gpu:
        ds = ds.map_batches(PredictActor, fn_constructor_kwargs={"model": ref}, batch_size=batch_size, num_gpus=1,
                            num_cpus=res.cpus_per_worker, compute=ray.data.ActorPoolStrategy(size=res.workers),
                            **res.remote_args())
    else:
        ds = ds.map_batches(predict_batch, batch_size=batch_size, num_cpus=res.cpus_per_worker,
                            fn_kwargs={"key": bundle["key"], "model": ref,
                                       "threads": max(1, int(res.cpus_per_worker))},
                            compute=ray.data.TaskPoolStrategy(size=res.workers), **res.remote_args())
    return ds.materialize()


def collect_rows(ds) -> pa.Table:
    """Every row of a materialised dataset, in this process, as one ``batch.ROWS`` table."""
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables([t.cast(pb.ROWS) for t in tables]) if tables else pb.ROWS.empty_table()


# ------------------------------------------------------------------ the stage


def run_predict(cfg: Config, model: str, images: str, out: str | Path, *, overwrite: bool = False,
                overlays: int | str = 8, filter_from: str = "model", batch_size: int = 4,
                cpus_per_task: float = 1.0) -> StageResult:
    """Classify every cell of every field named by ``images`` (directory, glob or URI) with ``model``.

    ``filter_from``: ``model`` (the filter settings the model was deployed with; the configuration's
    when it carries none) or ``config`` (``cfg.filter``). Ray must be initialised
    (``activessf.runtime.init_ray``).
    """
    if filter_from not in ("model", "config"):
        raise ValueError(f"filter_from must be 'model' or 'config', got {filter_from!r}")
    overlays = parse_overlays(overlays)
    files = list_inputs(images)
    sample = pb.overlay_sample(len(files), overlays)
    items = [{"path": p if isinstance(p, bytes) else p.encode(), "source": display_name(p), "overlay": i in sample}
             for i, p in enumerate(files)]
    ensure_mlflow(cfg.run.work_dir, cfg.run.experiment)  # the store models:/ and run ids resolve against
    with tempfile.TemporaryDirectory(prefix="activessf-model-") as tmp:
        resolved = resolve_model(model, tmp)
        use_model = filter_from == "model" and resolved.filter is not None
        filter_cfg = resolved.filter if use_model else cfg.filter
        filter_source = "model" if use_model else ("config" if filter_from == "config" else "config (the model has none)")
        cfg = cfg.model_copy(update={"filter": filter_cfg})
        res = plan("predict", cfg, cpus_per_task=cpus_per_task)
        params = {"model": model, "model_kind": resolved.kind, "input": images, "output": str(out),
                  "filter_source": filter_source, "filter_digest": filter_cfg.digest(), "overlays": overlays,
                  **{f"model.{k}": v for k, v in resolved.detail.items() if v}}
        with staged_output(out, overwrite) as stage, stage_run(cfg, "predict", params) as run:
            started = time.time()
            ds = predict_dataset(items, model_bundle(resolved, filter_cfg), res, batch_size)
            rows = collect_rows(ds)
            devices = f"{res.workers} {'GPU actors' if res.use_gpu else 'CPU tasks'}"
            summary = write_outputs(stage, rows, resolved, len(files), time.time() - started, devices)
            summary.update(filter_source=filter_source, filter_digest=filter_cfg.digest(), input=images)
            (stage / "summary.json").write_text(json.dumps(summary, indent=2))
            save_config(cfg, stage)
            log_results(stage, {**{k: v for k, v in summary.items() if k != "model"},
                                **{f"cells.{k}": v for k, v in summary["cells_by_subtype"].items()},
                                **{f"failed.{k}": v for k, v in summary["failed_by_reason"].items()}}, LOGGED)
    return StageResult("predict", Path(out).resolve(), summary, run.info.run_id, FILES)


def write_outputs(stage: Path, rows: pa.Table, model: ResolvedModel, n_files: int, seconds: float,
                  devices: str) -> dict:
    """The tables, the overlays and the summary record of the rows of every field."""
    classes = model.classes
    cells, fields, errors = pb.cells_table(rows, classes), pb.fields_table(rows, classes), pb.errors_table(rows)
    pq.write_table(cells, stage / "cells.parquet")
    for name, table in (("cells", cells), ("fields", fields), ("errors", errors)):
        pcsv.write_csv(table, stage / f"{name}.csv")
    written = write_overlays(rows, stage / "overlays")
    failed = Counter(errors["code"].to_pylist())
    return {"model": model.record(), "fields_read": n_files, "fields_ok": len(fields), "fields_failed": len(errors),
            "failed_by_reason": dict(sorted(failed.items())), "cells": len(cells),
            "fields_without_cells": sum(1 for n in fields["cells"].to_pylist() if n == 0),
            **pb.differential(cells, classes), "mean_confidence": pb.mean_confidence(cells), "overlays": written,
            "seconds": round(seconds, 2), "fields_per_s": round(n_files / seconds, 2) if seconds > 0 else None,
            "devices": devices}


def write_overlays(rows: pa.Table, folder: Path) -> int:
    import pyarrow.compute as pc

    drawn = rows.filter(pc.is_valid(rows["overlay"])).select(["source", "overlay"]).to_pydict()
    folder.mkdir()
    names = pb.overlay_names(drawn["source"])
    for source, png in zip(drawn["source"], drawn["overlay"]):
        (folder / names[source]).write_bytes(png)
    return len(drawn["source"])


def format_summary(s: dict) -> str:
    failed = ", ".join(f"{k} {v}" for k, v in s["failed_by_reason"].items()) or "none"
    shares = ", ".join(f"{c} {n} ({100 * s['share_by_subtype'][c]:.1f}%)" for c, n in s["cells_by_subtype"].items()
                       if n) or "none"
    m = s["model"]
    which = m.get("name") and f"{m['name']} version {m['version']}" or m.get("run_id") or m.get("directory")
    return "\n".join([
        f"model            {m['spec']} ({which}; filter settings from the {s['filter_source']})",
        f"fields read      {s['fields_read']} ({s['fields_ok']} processed, {s['fields_failed']} failed: {failed})",
        f"cells            {s['cells']} ({s['fields_without_cells']} fields without cells)",
        f"differential     {shares}",
        f"overlays         {s['overlays']}",
        f"throughput       {s['fields_per_s']} fields/s ({s['seconds']} s, {s['devices']})",
    ])
