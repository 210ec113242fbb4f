"""Stage 3 on Ray: prototypes in a store actor, then selection of every region on Ray Data.

Output (``OUT``):

    selection/*.parquet   every region: region_id, cluster, distance, threshold, selected, prototypes_version
    prototypes.npz        the store's snapshot (centres, n_i, LB, UB, thresholds, settings)
    report.json           per cluster n_i, LB, UB, threshold, candidates, selected; totals
    distances.png         per cluster: distances of its candidates, threshold marked
    embedding_map.png     2-D PCA map: regions selected / rejected, labelled cells, prototypes and thresholds
    clusters/cluster_NN.png  closest, threshold-edge and rejected regions of each cluster (with --regions)
    config.yaml
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import Config, flatten, save_config
from ..data.embeddings import embedding_matrix, read_embeddings
from ..imageio import decode_png, write_png
from ..resources import plan
from ..selection.store import NAMESPACE, store_actor, store_history
from ..stage import StageResult, log_regions_input, log_results, stage_run, staged_output
from ..viz import contact_sheet, distance_histograms, embedding_map

log = logging.getLogger(__name__)

FILES = ("report.json", "config.yaml", "distances.png", "embedding_map.png", "prototypes.npz", "clusters")

SELECTION_SCHEMA = pa.schema([("region_id", pa.string()), ("cluster", pa.int32()), ("distance", pa.float32()),
                              ("threshold", pa.float32()), ("selected", pa.bool_()),
                              ("prototypes_version", pa.int32())])


MAP_SAMPLE = 5000  # regions drawn in embedding_map.png (a sample of a larger set)


def in_sample(ids: pa.Array | pa.ChunkedArray, rate: float) -> np.ndarray:
    """Which of ``ids`` belong to a fixed sample of about ``rate`` of all regions: decided per id by its
    hash, so the same regions are drawn whatever the batches, the order or the cluster size."""
    import hashlib

    if rate >= 1:
        return np.ones(len(ids), bool)
    limit = int(rate * 2**64)
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "big") < limit
                     for i in ids.to_pylist()], bool)


def assign_batch(batch: pa.Table, store: str, sample_rate: float = 0.0) -> pa.Table:
    """Ray Data UDF: ask the store actor to assign and select a batch of region embeddings. The column
    ``sample`` keeps the embedding of the regions in the map's sample (:func:`in_sample`), null elsewhere,
    so that the map needs no second read of the embeddings."""
    import ray

    x = embedding_matrix(batch.column("embedding"))
    actor = ray.get_actor(store, namespace=NAMESPACE)
    res = ray.get(actor.assign.remote(x))
    return pa.table({"region_id": batch.column("id"), "cluster": res["cluster"].astype(np.int32),
                     "distance": res["distance"], "threshold": res["threshold"], "selected": res["selected"],
                     "prototypes_version": np.full(len(batch), res["version"], np.int32),
                     "sample": sample_column(x, in_sample(batch.column("id"), sample_rate))},
                    SELECTION_SCHEMA.append(pa.field("sample", pa.list_(pa.float32()))))


def sample_column(x: np.ndarray, keep: np.ndarray) -> pa.ListArray:
    """The rows of ``x`` where ``keep``, null elsewhere, as a variable-size list column: a null takes no
    space (in a fixed-size list column every null would still hold a whole embedding)."""
    offsets = np.concatenate([[0], np.cumsum(keep * x.shape[1])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(x[keep].reshape(-1)), mask=pa.array(~keep))


def run_select(cfg: Config, region_embeddings: str | Path, out: str | Path, *,
               labelled_embeddings: Optional[str | Path] = None, snapshot: Optional[str | Path] = None,
               regions: Optional[str | Path] = None, overwrite: bool = False, store_name: Optional[str] = None,
               batch_size: int = 1024, on_store=None) -> StageResult:
    """Fit prototypes on ``labelled_embeddings`` (or load a ``snapshot``), select every region of
    ``region_embeddings``, write the table, the report and (with the filter output ``regions``) the
    per-cluster contact sheets. ``on_store`` (tests) is called with the store actor mid-selection."""
    if (labelled_embeddings is None) == (snapshot is None):
        raise ValueError("give either labelled embeddings (to fit prototypes) or an existing prototype snapshot")
    path = Path(region_embeddings) / "embeddings"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: is {region_embeddings} the output of `activessf embed`?")
    store_name = store_name or f"prototypes-{uuid.uuid4().hex[:8]}"
    with staged_output(out, overwrite) as stage, stage_run(cfg, "select", params(cfg)) as run:
        if regions is not None:
            log_regions_input(regions, "selection")
        proto, table, sample, served = select_on_ray(cfg, path, stage, labelled_embeddings, snapshot,
                                                     store_name, batch_size, on_store)
        (stage / "selection").mkdir()
        pq.write_table(table, stage / "selection" / "part-0.parquet")
        report = selection_report(proto, table, cfg, random_init=proto.weights_digest == "random-init")
        # where the store actor ran (restarts included), and what its last start served
        report["store"] = {**store_history(stage / "prototypes.npz"), "served": served}
        (stage / "report.json").write_text(json.dumps(report, indent=2))
        save_config(cfg, stage)
        write_figures(stage, proto, table, regions)
        write_embedding_map(stage / "embedding_map.png", proto, table, sample, labelled_embeddings)
        log_results(stage, metrics(report), FILES, params={k: report["prototypes"][k] for k in
                                                          ("backbone", "weights_digest")})
    return StageResult("select", Path(out).resolve(), report, run.info.run_id, FILES)


def select_on_ray(cfg: Config, embeddings: Path, stage: Path, labelled_embeddings, snapshot, store_name: str,
                  batch_size: int, on_store) -> tuple:
    """(prototypes, selection table, the map's sample, what the store served): a store actor fitted (or
    loaded) and every region assigned through it by Ray Data tasks; the actor is gone afterwards. The
    sample is (region_id, embedding) of about ``MAP_SAMPLE`` regions. What the store served (``calls``,
    ``assigned`` rows, ``busy_seconds`` inside those calls) counts from its last start."""
    import ray

    snap = stage / "prototypes.npz"
    if snapshot is not None:
        shutil.copyfile(snapshot, snap)
    actor = store_actor(store_name, snap, label_selector=plan("store", cfg).label_selector)
    try:
        if snapshot is None:
            _, labels, x, meta = read_embeddings(labelled_embeddings)
            ray.get(actor.fit.remote(x, np.array(labels, dtype=object), cfg.prototypes.model_dump(),
                                     cfg.select.model_dump(), meta["backbone"], meta["weights_digest"]))
        else:
            ray.get(actor.set_bounds.remote(cfg.select.model_dump()))
        if on_store is not None:
            on_store(actor)
        n = sum(pq.read_metadata(f).num_rows for f in embeddings.glob("*.parquet"))
        ds = ray.data.read_parquet(str(embeddings)).select_columns(["id", "embedding"])
        rate = MAP_SAMPLE / max(n, 1)  # the embedding map's share of the regions
        ds = ds.map_batches(assign_batch, fn_kwargs={"store": store_name, "sample_rate": rate},
                            batch_size=batch_size, batch_format="pyarrow", num_cpus=0.5)
        rows = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
        rows = pa.concat_tables(rows) if rows else None
        table = rows.drop_columns(["sample"]).cast(SELECTION_SCHEMA).sort_by("region_id") if rows else \
            SELECTION_SCHEMA.empty_table()
        sample = rows.filter(pc.is_valid(rows.column("sample"))).select(["region_id", "sample"]).sort_by(
            "region_id") if rows else None
        info = ray.get(actor.info.remote())
        return (ray.get(actor.prototypes.remote()), table, sample,
                {k: info[k] for k in ("calls", "assigned", "busy_seconds")})
    finally:
        ray.kill(actor, no_restart=True)


def params(cfg: Config) -> dict:
    return {**{f"prototypes.{k}": v for k, v in flatten(cfg.prototypes).items()},
            **{f"select.{k}": v for k, v in flatten(cfg.select).items()}}


def metrics(report: dict) -> dict:
    out = {k: report["totals"][k] for k in ("regions", "selected", "share_selected")}
    out["store.busy_seconds"] = report["store"]["served"]["busy_seconds"]
    for r in report["clusters"]:
        out.update({f"cluster{r['cluster']:02d}.{k}": r[k] for k in ("n", "threshold", "candidates", "selected")})
    return out


def selection_report(proto, table: pa.Table, cfg: Config, random_init: bool) -> dict:
    cluster = table.column("cluster").to_numpy()
    selected = table.column("selected").to_numpy(zero_copy_only=False)
    rows = []
    for row in proto.table():
        mine = cluster == row["cluster"]
        rows.append({**row, "candidates": int(mine.sum()), "selected": int((selected & mine).sum())})
    return {
        "prototypes": {"k": proto.k, "version": proto.version, "digest": proto.digest, "mode": proto.prototypes["mode"],
                       "backbone": proto.backbone, "weights_digest": proto.weights_digest,
                       "random_init_features": random_init, "labelled": int(proto.counts.sum())},
        "select": proto.select,
        "bounds_from": ("absolute LB/UB from the config" if proto.select["bound_mode"] == "absolute" else
                        "distances of each cluster's labelled members to its prototype (NOTES item 7)"),
        "clusters": rows,
        "totals": {"regions": len(table), "selected": int(selected.sum()),
                   "share_selected": float(selected.mean()) if len(table) else 0.0},
    }


def format_report(report: dict) -> str:
    lines = [f"{'cluster':>7} {'n_i':>5} {'LB':>9} {'UB':>9} {'threshold':>9} {'candidates':>10} {'selected':>8}"]
    for r in report["clusters"]:
        lines.append(f"{r['cluster']:>7} {r['n']:>5} {r['lb']:>9.3f} {r['ub']:>9.3f} {r['threshold']:>9.3f} "
                     f"{r['candidates']:>10} {r['selected']:>8}")
    t = report["totals"]
    lines.append(f"{'total':>7} {report['prototypes']['labelled']:>5} {'':>9} {'':>9} {'':>9} {t['regions']:>10} "
                 f"{t['selected']:>8}")
    if report["prototypes"]["random_init_features"]:
        lines.append("NOTE: features come from a randomly initialised backbone (no embed.weights given)")
    return "\n".join(lines)


def write_figures(out: Path, proto, table: pa.Table, regions: Optional[str | Path]) -> None:
    distance_histograms(table.column("cluster").to_numpy(), table.column("distance").to_numpy(),
                        proto.thresholds, out / "distances.png")
    if regions is None:
        return
    crops = {}
    picks = cluster_picks(table)
    wanted = {rid for rows in picks.values() for group in rows.values() for rid in group}
    if wanted:
        src = pq.read_table(Path(regions) / "regions", columns=["region_id", "crop"])
        for rid, crop in zip(src.column("region_id").to_pylist(), src.column("crop").to_pylist()):
            if rid in wanted:
                crops[rid] = decode_png(crop)
    (out / "clusters").mkdir(exist_ok=True)
    for c, groups in picks.items():
        rows = [(f"{name}\n({len(ids)})", [crops[i] for i in ids if i in crops]) for name, ids in groups.items()]
        write_png(out / "clusters" / f"cluster_{c:02d}.png", contact_sheet(rows, thumb=80, columns=8))


def cluster_picks(table: pa.Table, per_row: int = 8) -> dict[int, dict[str, list[str]]]:
    """Per cluster: the closest selected, the selected nearest the threshold, the rejected nearest it."""
    ids = np.array(table.column("region_id").to_pylist(), dtype=object)
    cluster, dist = table.column("cluster").to_numpy(), table.column("distance").to_numpy()
    sel = table.column("selected").to_numpy(zero_copy_only=False)
    out = {}
    for c in np.unique(cluster):
        m = cluster == c
        kept = np.flatnonzero(m & sel)[np.argsort(dist[m & sel], kind="stable")]
        lost = np.flatnonzero(m & ~sel)[np.argsort(dist[m & ~sel], kind="stable")]
        out[int(c)] = {"closest": list(ids[kept[:per_row]]), "threshold edge": list(ids[kept[::-1][:per_row]]),
                       "rejected": list(ids[lost[:per_row]])}
    return out


def write_embedding_map(path: Path, proto, table: pa.Table, sample: Optional[pa.Table],
                        labelled: Optional[str | Path], max_regions: int = MAP_SAMPLE, seed: int = 0) -> dict:
    """:func:`activessf.viz.embedding_map` of a selection: the regions of ``sample`` (region_id, embedding:
    about ``max_regions``, drawn while the regions were assigned), the labelled cells when the prototypes
    were fitted here, the prototypes and their thresholds."""
    ids = sample.column("region_id").to_pylist() if sample is not None else []
    rows = {rid: i for i, rid in enumerate(table.column("region_id").to_pylist())}
    order = np.array([rows[rid] for rid in ids], np.int64)
    sel = table.column("selected").to_numpy(zero_copy_only=False)[order] if len(order) else np.zeros(0, bool)
    dist, thr = (table.column(c).to_numpy()[order].astype(float) for c in ("distance", "threshold"))
    x = (pc.list_flatten(sample.column("sample")).to_numpy().reshape(len(ids), -1).astype(np.float32) if ids
         else np.zeros((0, proto.centres.shape[1])))
    lx, labels = None, None
    if labelled is not None:
        _, labels, lx, _ = read_embeddings(labelled)
    ratio = np.divide(dist, thr, out=np.full(len(dist), np.inf), where=thr > 0)
    return embedding_map(path, x, sel, proto.centres, proto.thresholds, distance_ratio=ratio, labelled=lx,
                         labels=labels, max_regions=max_regions, seed=seed)
