"""Stage 2 on Ray Data: embed regions and labelled cells with a timm backbone.

An actor pool loads the model once per actor (on a GPU each when the cluster
has GPUs, else one CPU each). A set small enough for ``run.inline_data_mb``
(at ``embed.image_size``) is embedded in this process instead, by the same
code, without starting the pool (which costs each actor its imports and model:
seconds that a few hundred crops do not repay). Output (``OUT``):

    embeddings/*.parquet   id, label (null for regions), embedding (fixed-size list of float32)
    errors.parquet         id, error: crops or files that could not be decoded
    embed.json             backbone, weights, weights digest (``random-init`` without weights), dim, counts,
                           normalisation (mean, std and where they come from: ``embed.mean``/``std`` when set,
                           else a pretrained encoder's values, else timm's ``resolve_data_config`` of the model)
    config.yaml
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import Config, EmbedConfig, flatten, save_config
from ..data.decode import BadImage, decode_image
from ..data.embeddings import embedding_schema
from ..data.labelled import list_labelled
from ..data.sources import read_bytes
from ..resources import Resources, plan
from ..runtime import node_id
from ..stage import StageResult, log_labelled_input, log_regions_input, log_results, stage_run, staged_output
from ..training.inline import fits_inline

log = logging.getLogger(__name__)

MAX_CROP_PIXELS = 50_000_000
FILES = ("embed.json", "config.yaml")


class EmbedBatch:
    """Ray Data actor UDF: the backbone loads once in ``__init__``; batches of images in, features out."""

    CONFIG: dict = {}  # set on a subclass per run, so no constructor arguments travel separately
    ONE_THREAD = True  # in an actor of the pool, one per CPU: Ray does the parallelism
    RECORD_NODE = False  # add a ``node`` column (the Ray node id) to each batch

    def __init__(self):
        import torch

        from ..features.backbone import load_backbone
        from ..runtime import select_device

        self.cfg = EmbedConfig(**self.CONFIG)
        if self.cfg.mean is None or self.cfg.std is None:  # run_embed resolves them; direct users may not
            self.cfg = normalised(self.cfg)[0]
        self.device = select_device()
        if self.device.type == "cpu" and self.ONE_THREAD:
            torch.set_num_threads(1)
        self.backbone = load_backbone(self.cfg.backbone, self.cfg.weights, self.device, self.cfg.seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from ..features.backbone import embed

        images, ok, errors = [], [], []
        for i, ident in enumerate(batch["id"]):
            try:
                data = bytes(batch["crop"][i]) if "crop" in batch else read_bytes(str(batch["path"][i]))
                images.append(decode_image(data, MAX_CROP_PIXELS))
                ok.append(i)
            except (BadImage, OSError) as exc:
                errors.append((str(ident), f"{type(exc).__name__}: {exc}"))
        feats = embed(self.backbone, images, self.cfg.image_size, self.cfg.mean, self.cfg.std, self.device)
        labels = batch.get("label")
        rows = [{"id": str(batch["id"][i]), "label": None if labels is None else str(labels[i]),
                 "embedding": f, "error": None} for i, f in zip(ok, feats)]
        rows += [{"id": ident, "label": None, "embedding": None, "error": e} for ident, e in errors]
        table = pa.Table.from_pylist(rows, embedding_schema(self.backbone.dim))
        if self.RECORD_NODE:  # on Ray: which node embedded these rows (counted in embed.json, not stored)
            table = table.append_column("node", pa.array([node_id()] * len(table), pa.string()))
        return table


def embedder(cfg: EmbedConfig, one_thread: bool = True, record_node: bool = False) -> type:
    return type("Embedder", (EmbedBatch,), {"CONFIG": cfg.model_dump(), "ONE_THREAD": one_thread,
                                            "RECORD_NODE": record_node})


def region_table(regions_dir: str | Path) -> Path:
    path = Path(regions_dir) / "regions"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: is {regions_dir} the output of `activessf filter`?")
    return path


def region_items(regions_dir: str | Path):
    """The regions table of a filter output, as a Ray dataset of (id, crop)."""
    import ray

    path = region_table(regions_dir)
    return ray.data.read_parquet(str(path)).select_columns(["region_id", "crop"]).rename_columns({"region_id": "id"})


def labelled_rows(spec: str | Path) -> list[dict]:
    pairs = list_labelled(spec)
    base = Path(spec) if Path(spec).is_dir() else Path(spec).parent
    return [{"id": str(p.relative_to(base)) if p.is_relative_to(base) else str(p), "path": str(p), "label": lab}
            for p, lab in pairs]


def labelled_items(spec: str | Path):
    import ray

    items = labelled_rows(spec)
    return ray.data.from_items(items, override_num_blocks=min(len(items), 16))


def source_rows(source: str, spec: str | Path) -> dict[str, list]:
    """Every input of ``source`` as columns (``id`` and ``crop`` or ``path``, ``label``), read here."""
    if source == "regions":
        t = pq.read_table(region_table(spec), columns=["region_id", "crop"]).to_pydict()
        return {"id": t["region_id"], "crop": t["crop"]}
    rows = labelled_rows(spec)
    return {k: [r[k] for r in rows] for k in ("id", "path", "label")}


def count_inputs(source: str, spec: str | Path) -> int:
    if source == "regions":
        return pq.read_table(region_table(spec), columns=["region_id"]).num_rows
    return len(list_labelled(spec))


def embed_here(rows: dict[str, list], cfg: EmbedConfig) -> pa.Table:
    """The actor's UDF, run in this process over batches of ``rows``: one table of embeddings and errors."""
    udf = embedder(cfg, one_thread=False)()
    n = len(rows["id"])
    parts = [udf({k: v[i : i + cfg.batch_size] for k, v in rows.items()}) for i in range(0, n, cfg.batch_size)]
    return pa.concat_tables(parts) if parts else embedding_schema(udf.backbone.dim).empty_table()


def run_embed(cfg: Config, source: str, spec: str | Path, out: str | Path, *, overwrite: bool = False) -> StageResult:
    """Embed ``regions`` (a filter output) or ``labelled`` cells (ImageFolder / CSV) named by ``spec``."""
    from ..features.backbone import at_encoder

    if source not in ("regions", "labelled"):
        raise ValueError(f"source must be regions or labelled, got {source!r}")
    embed_cfg, norm = normalised(at_encoder(cfg.embed))
    cfg = cfg.model_copy(update={"embed": embed_cfg})
    if cfg.embed.weights is None:
        log.warning("embed.weights is not set: %s is RANDOMLY INITIALISED; the embeddings record this "
                    "(weights_digest 'random-init')", cfg.embed.backbone)
    res = plan("embed", cfg)
    here = fits_inline(count_inputs(source, spec) * cfg.embed.image_size ** 2 * 3, cfg.run.inline_data_mb)
    params = {**flatten(cfg.embed), "source": source, "input": str(spec)}
    with staged_output(out, overwrite) as stage, stage_run(cfg, "embed", params, f"embed-{source}") as run:
        (log_regions_input if source == "regions" else log_labelled_input)(spec, "embedding")
        started = time.time()
        if here:
            nodes = write_here(embed_here(source_rows(source, spec), cfg.embed), stage)
        else:
            nodes = embed_on_ray(source, spec, cfg.embed, res, stage)
        meta = embed_record(cfg, source, spec, stage, time.time() - started,
                            "this process (a small set)" if here else
                            f"{res.workers} {'GPU' if res.use_gpu else 'CPU'} actors")
        meta["normalisation"] = norm
        meta["nodes"] = nodes  # rows per Ray node ("" = this process, outside Ray)
        (stage / "embed.json").write_text(json.dumps(meta, indent=2))
        save_config(cfg, stage)
        log_results(stage, meta, FILES)
    return StageResult("embed", Path(out).resolve(), meta, run.info.run_id, FILES)


def normalised(e: EmbedConfig) -> tuple[EmbedConfig, dict]:
    """``e`` with ``mean`` and ``std`` resolved on the driver (:func:`~activessf.features.backbone.normalisation`:
    the config's, else the encoder's pretraining values, else timm's data config of the model), so that every
    actor uses the values ``embed.json`` and ``config.yaml`` record; and the record."""
    from ..features.backbone import normalisation

    norm = normalisation(e.backbone, e.weights, e.mean, e.std)
    if norm["from"] != "config":
        log.info("embedding normalised with mean %s, std %s (%s of %s)", norm["mean"], norm["std"], norm["from"],
                 e.weights or e.backbone)
    return e.model_copy(update={"mean": tuple(norm["mean"]), "std": tuple(norm["std"])}), norm


def embed_record(cfg: Config, source: str, spec: str | Path, stage: Path, seconds: float, devices: str) -> dict:
    """``embed.json``: what was embedded, by which weights, how many, how fast."""
    from ..features.backbone import RANDOM_INIT, encoder_record, file_digest

    record, weights = encoder_record(cfg.embed.weights) if cfg.embed.weights else (None, None)
    files = list((stage / "embeddings").glob("*.parquet"))
    embedded = sum(pq.read_metadata(f).num_rows for f in files)
    return {
        "source": source,
        "input": str(spec),
        "backbone": record["timm_name"] if record else cfg.embed.backbone,
        "encoder": {k: record.get(k) for k in ("method", "model", "source", "rows", "epochs", "budget")}
        if record else None,
        "image_size": cfg.embed.image_size,
        "weights": cfg.embed.weights,
        "weights_digest": file_digest(weights) if weights else RANDOM_INIT,
        "random_init": cfg.embed.weights is None,
        "dim": pq.read_schema(files[0]).field("embedding").type.list_size,
        "embedded": embedded,
        "failed": pq.read_metadata(stage / "errors.parquet").num_rows,
        "seconds": round(seconds, 2),
        "images_per_s": round(embedded / seconds, 2) if seconds > 0 else None,
        "devices": devices,
    }


def write_here(table: pa.Table, stage: Path) -> dict[str, int]:
    """``embeddings/`` (the rows without an error) and ``errors.parquet`` of a table made in this process;
    returns the rows per node (all on this process's)."""
    ok = pc.is_null(table.column("error"))
    (stage / "embeddings").mkdir()
    pq.write_table(table.filter(ok).drop_columns(["error"]), stage / "embeddings" / "part-0.parquet")
    pq.write_table(table.filter(pc.invert(ok)).select(["id", "error"]), stage / "errors.parquet")
    return {node_id(): len(table)}


def embed_on_ray(source: str, spec: str | Path, cfg: EmbedConfig, res: Resources, stage: Path) -> dict[str, int]:
    """The set embedded by an actor pool (``res.workers`` actors, one GPU or one CPU each); the workers write.
    Returns the rows embedded (or failed) per Ray node."""
    import ray
    from ray.data.expressions import col

    # Read and split into blocks first: an actor pool reserving every CPU would starve any
    # read or repartition task running in the same pipeline.
    ds = (region_items(spec) if source == "regions" else labelled_items(spec)).materialize()
    ds = ds.repartition(max(1, min(res.blocks, -(-ds.count() // cfg.batch_size)))).materialize()
    ds = ds.map_batches(embedder(cfg, record_node=True), batch_size=cfg.batch_size, num_gpus=1 if res.use_gpu else 0,
                        num_cpus=res.cpus_per_worker, compute=ray.data.ActorPoolStrategy(size=res.workers),
                        **res.remote_args()).materialize()
    ds.filter(expr=col("error").is_null()).drop_columns(["error", "node"]).write_parquet(str(stage / "embeddings"))
    errors = ds.filter(expr=col("error").is_not_null()).select_columns(["id", "error"]).take_all()
    pq.write_table(pa.Table.from_pylist(errors, pa.schema([("id", pa.string()), ("error", pa.string())])),
                   stage / "errors.parquet")
    nodes = pa.concat_tables(ray.get(ds.select_columns(["node"]).to_arrow_refs())).column("node").value_counts()
    return {str(v["values"]): int(v["counts"]) for v in nodes.to_pylist()}
