"""Stage 1 on Ray Data: filter cell regions out of every smear image, in parallel.

Files are listed on the driver and read inside the workers, so an unreadable
path, a broken file or an undecodable name becomes an error row instead of a
failed job. Output (``OUT``):

    regions/*.parquet   one row per kept region (REGION_SCHEMA), crops as PNG bytes
    rejected.parquet    large components rejected for their fill rate (the near misses)
    errors.parquet      one row per file that could not be processed (source, stage, code, error)
    images.parquet      one row per processed image (size, kept, rejected by reason, seconds)
    summary.json        counts, failures by reason, rejections by reason, throughput
    config.yaml         the full configuration that produced this output
    contact_sheet.png   a sample of kept regions
    region_stats.png    box sizes and fill rates of kept and rejected regions
    overlays/NN_<name>.png  ``filter.overlays`` fields with their kept (green) and rejected-for-fill-rate (red) boxes
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import Config, FilterConfig, flatten, save_config
from ..data.decode import BadImage, decode_image
from ..data.sources import list_inputs, read_bytes
from ..imageio import decode_png, write_png
from ..process import image_worker
from ..regions.records import TABLES, ImageRecords, display_name, error_record, process_image, read_table
from ..resources import plan
from ..runtime import node_id
from ..stage import StageResult, log_results, stage_run, staged_output
from ..training.inline import fits_inline
from ..viz import image_grid, region_overlay, region_stats_figure

log = logging.getLogger(__name__)

FILES = ("config.yaml", "summary.json", "contact_sheet.png", "region_stats.png", "overlays")
UNIFIED = pa.schema(
    [("kind", pa.string())]
    + list({f.name: f for schema in TABLES.values() for f in schema}.values())
)


def filter_batch(batch: dict[str, np.ndarray], cfg: dict) -> pa.Table:
    """Ray Data UDF: a batch of file paths in, unified region/rejected/error/image rows out."""
    image_worker()  # one core per task (Ray does the parallelism), freed memory kept for the next image
    config = FilterConfig(**cfg)
    digest = config.digest()
    out = ImageRecords()
    for path, source in zip(batch["path"], batch["source"]):
        out.extend(filter_file(bytes(path), str(source), config, digest))
    node = node_id()
    for row in out.images:
        row["node"] = node
    return unify(out)


def filter_file(path: bytes, source: str, cfg: FilterConfig, digest: str) -> ImageRecords:
    try:
        data = read_bytes(path.decode() if b"://" in path[:16] else path)
    except OSError as exc:
        return error_record(source, "read", "unreadable", f"cannot read the file: {exc.strerror or exc}")
    return process_image(data, source, cfg, digest)


def unify(records: ImageRecords) -> pa.Table:
    rows = [dict(r, kind=kind) for kind in TABLES for r in getattr(records, kind)]
    return pa.Table.from_pylist(rows, UNIFIED)


def run_filter(cfg: Config, images: str, out: str | Path, *, overwrite: bool = False,
               cpus_per_task: float = 1.0, batch_size: int = 8) -> StageResult:
    """Filter every image named by ``images`` (directory, glob or URI) into ``out``.

    Ray must be initialised (see ``activessf.runtime.init_ray``).
    """
    import ray

    files = list_inputs(images)
    items = [{"path": p if isinstance(p, bytes) else p.encode(), "source": display_name(p)} for p in files]
    res = plan("filter", cfg, cpus_per_task=cpus_per_task)
    params = {**flatten(cfg.filter), "input": images, "output": str(out)}
    with staged_output(out, overwrite) as stage, stage_run(cfg, "filter", params) as run:
        started = time.time()
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), res.blocks))
        ds = ds.map_batches(filter_batch, fn_kwargs={"cfg": cfg.filter.model_dump()}, batch_size=batch_size,
                            num_cpus=cpus_per_task, compute=ray.data.TaskPoolStrategy(size=res.workers),
                            **res.remote_args())
        write_tables(ds.materialize(), stage, cfg.run.inline_data_mb)
        summary = summarise(stage, len(files), time.time() - started, cfg.filter)
        (stage / "summary.json").write_text(json.dumps(summary, indent=2))
        save_config(cfg, stage)
        write_figures(stage, cfg.filter)
        write_overlays(stage, {it["source"]: it["path"] for it in items}, cfg.filter)
        log_results(stage, {**summary, **{f"failed.{k}": v for k, v in summary["failed_by_reason"].items()},
                            **{f"rejected.{k}": v for k, v in summary["rejected_by_reason"].items()}}, FILES)
    return StageResult("filter", Path(out).resolve(), summary, run.info.run_id, FILES)


def write_tables(ds, stage: Path, inline_mb: float = 0) -> None:
    """The unified rows of a materialised dataset, split into the output's tables. Up to ``inline_mb``
    (``run.inline_data_mb``) every row is fetched once and split here; a larger output keeps its regions
    (with their crops) out of this process: Ray Data tasks write them, and only the small tables (no
    crops) are collected, in one pass."""
    from ray.data.expressions import col

    if fits_inline(ds.size_bytes(), inline_mb):
        rows = collect(ds, UNIFIED)
        (stage / "regions").mkdir()
        pq.write_table(split(rows, "regions"), stage / "regions" / "part-0.parquet")
    else:
        write_dataset(ds.filter(expr=col("kind") == "regions").select_columns(TABLES["regions"].names),
                      stage / "regions", TABLES["regions"])
        small = [kind for kind in TABLES if kind != "regions"]
        names = list(dict.fromkeys(["kind", *(n for kind in small for n in TABLES[kind].names)]))
        rows = collect(ds.filter(expr=col("kind") != "regions").select_columns(names),
                       pa.schema([UNIFIED.field(n) for n in names]))
    for kind in TABLES:
        if kind != "regions":
            pq.write_table(split(rows, kind), stage / f"{kind}.parquet")


def split(rows: pa.Table, kind: str) -> pa.Table:
    """The rows of one table (``kind``) of unified rows, in that table's schema."""
    import pyarrow.compute as pc

    return rows.filter(pc.equal(rows.column("kind"), kind)).select(TABLES[kind].names).cast(TABLES[kind])


def collect(ds, schema: pa.Schema) -> pa.Table:
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


def write_dataset(ds, path: Path, schema: pa.Schema) -> None:
    """Parquet files of ``ds`` under ``path``; an empty file with the schema if no rows."""
    ds.write_parquet(str(path))
    if not path.exists() or not any(path.glob("*.parquet")):
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.empty_table(), path / "empty.parquet")


def summarise(out: Path, n_files: int, seconds: float, cfg: FilterConfig) -> dict:
    images = read_table(out, "images").to_pylist()
    errors = read_table(out, "errors").to_pylist()
    return {
        "images_read": n_files,
        "images_ok": len(images),
        "images_failed": len(errors),
        "failed_by_reason": dict(sorted(Counter(e["code"] for e in errors).items())),
        "regions_kept": int(sum(r["regions"] for r in images)),
        "rejected_by_reason": {
            "too_small": int(sum(r["too_small"] for r in images)),
            "low_fill": int(sum(r["low_fill"] for r in images)),
        },
        "seconds": round(seconds, 2),
        "images_per_s": round(n_files / seconds, 2) if seconds > 0 else None,
        "config_digest": cfg.digest(),
        "nodes": dict(sorted(Counter(r.get("node") or "" for r in images).items())),  # images per Ray node
    }


def format_summary(s: dict) -> str:
    failed = ", ".join(f"{k} {v}" for k, v in s["failed_by_reason"].items()) or "none"
    rej = s["rejected_by_reason"]
    return "\n".join(
        [
            f"images read      {s['images_read']} ({s['images_ok']} processed, {s['images_failed']} failed: {failed})",
            f"regions kept     {s['regions_kept']}",
            f"rejected         too small {rej['too_small']}, low fill rate {rej['low_fill']}",
            f"throughput       {s['images_per_s']} images/s ({s['seconds']} s)",
        ]
    )


def write_figures(out: Path, cfg: FilterConfig, sample: int = 48) -> None:
    kept = read_table(out, "regions", ["w", "h", "fill_rate"]).to_pydict()
    rejected = read_table(out, "rejected", ["w", "h", "fill_rate"]).to_pydict()
    region_stats_figure(kept, rejected, cfg.in_pixels().min_box, cfg.fill_rate, out / "region_stats.png")
    crops = read_table(out, "regions", ["crop"]).column("crop").to_pylist()
    step = max(len(crops) // sample, 1)
    write_png(out / "contact_sheet.png", image_grid([decode_png(c) for c in crops[::step][:sample]], columns=8))


def write_overlays(out: Path, paths: dict[str, bytes], cfg: FilterConfig) -> list[str]:
    """``cfg.overlays`` processed fields, evenly spaced in source order, re-read here on the driver (after the
    Ray job: the Ray path does not pay for pictures) and drawn with their kept and rejected-for-fill-rate
    boxes into ``out/overlays/``. Returns the sources drawn; a field that cannot be re-read is skipped."""
    sources = sorted(read_table(out, "images", ["source"]).column("source").to_pylist())
    if cfg.overlays <= 0 or not sources:
        return []
    picked = [sources[i] for i in sorted(set(np.linspace(0, len(sources) - 1, min(cfg.overlays, len(sources)))
                                             .round().astype(int)))]
    boxes = {kind: _boxes(out, kind, picked) for kind in ("regions", "rejected")}
    drawn = []
    for n, source in enumerate(picked):
        path = paths[source]
        try:
            rgb = decode_image(read_bytes(path.decode() if b"://" in path[:16] else path), cfg.max_pixels)
        except (OSError, BadImage) as exc:
            log.warning("overlay of %s skipped: %s", source, exc)
            continue
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(source).stem)[:40]
        write_png(out / "overlays" / f"{n:02d}_{stem}.png",
                  region_overlay(rgb, boxes["regions"].get(source, []), boxes["rejected"].get(source, []), source))
        drawn.append(source)
    return drawn


def _boxes(out: Path, kind: str, sources: list[str]) -> dict[str, list[tuple]]:
    path = out / ("regions" if kind == "regions" else f"{kind}.parquet")
    t = pq.read_table(path, columns=["source", "x", "y", "w", "h"], filters=[("source", "in", sources)],
                      schema=TABLES[kind] if kind == "regions" else None).to_pydict()
    found: dict[str, list[tuple]] = {}
    for src, *box in zip(t["source"], t["x"], t["y"], t["w"], t["h"]):
        found.setdefault(src, []).append(tuple(box))
    return found
