"""Selection at scale: the selection stage end to end over 1,000,000 region embeddings (2048-d, Parquet).

    .venv/bin/python benchmarks/bench_select_scale.py [--regions 1000000] [--dim 2048] [--rounds 2]

The embeddings are written once in the layout `activessf embed` writes (``embeddings/*.parquet`` with id,
label, embedding; ``embed.json``) under --data (kept for later runs; 8 GB at the defaults): 11 clusters of
long-tailed sizes, 40 labelled cells per cluster beside them. Then, in interleaved rounds on a local Ray
started as the platform starts it:

- io: the stage's own Ray Data pipeline (read the embeddings, a task per batch of 1,024, collect the rows,
  write the selection table) with the store actor's call replaced by a no-op that fills the same columns;
- stage: ``run_select`` end to end (store actor fitted on the labelled cells, every region assigned
  through it, the selection table, report, figures and MLflow run), with its phases timed and the time
  the store actor spent inside its calls (``report.json`` ``store.served.busy_seconds``).

Goals (issue 20): the actor's busy time under 25% of the stage's, and the stage at >= 50% of the speed
of io.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TreeSampler, table, timed_calls, write  # noqa: E402

K = 11
ROWS_PER_FILE = 50_000


def make_data(root: Path, n: int, dim: int, seed: int = 0) -> dict:
    """Region embeddings (``root/regions``) and labelled ones (``root/labelled``), once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from activessf.data.embeddings import embedding_schema

    marker = root / "made.json"
    want = {"regions": n, "dim": dim, "seed": seed, "k": K}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return want
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((K, dim), dtype=np.float32) * 2
    share = 1.0 / np.arange(1, K + 1) ** 1.2  # long-tailed cluster sizes
    share /= share.sum()
    schema = embedding_schema(dim).remove(3)  # what embed writes: no error column

    def rows(ids: list[str], labels, x: np.ndarray) -> pa.Table:
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
        return pa.Table.from_arrays([pa.array(ids), pa.array(labels, pa.string()), emb], schema=schema)

    def meta(count: int) -> dict:
        return {"source": "benchmark", "backbone": "resnet50", "weights_digest": "random-init", "random_init": True,
                "dim": dim, "embedded": count, "failed": 0, "image_size": 224}

    for part in ("regions", "labelled"):
        (root / part / "embeddings").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for f, lo in enumerate(range(0, n, ROWS_PER_FILE)):
        m = min(ROWS_PER_FILE, n - lo)
        c = rng.choice(K, m, p=share)
        noise = rng.standard_normal((m, dim), dtype=np.float32)
        x = centres[c] + noise * rng.uniform(0.6, 1.4, (m, 1)).astype(np.float32)  # per region: its own spread
        pq.write_table(rows([f"r{lo + i:08d}" for i in range(m)], [None] * m, x),
                       root / "regions" / "embeddings" / f"part-{f:04d}.parquet")
        print(f"\rwriting region embeddings: {lo + m:,}/{n:,} ({time.perf_counter() - started:.0f} s)", end="",
              file=sys.stderr)
    print(file=sys.stderr)
    c = np.repeat(np.arange(K), 40)
    x = centres[c] + rng.standard_normal((len(c), dim), dtype=np.float32)
    pq.write_table(rows([f"l{i:05d}" for i in range(len(c))], [f"class{k:02d}" for k in c], x),
                   root / "labelled" / "embeddings" / "part-0000.parquet")
    (root / "regions" / "embed.json").write_text(json.dumps(meta(n)))
    (root / "labelled" / "embed.json").write_text(json.dumps(meta(len(c))))
    marker.write_text(json.dumps(want))
    return want


def noop_batch(batch, dim: int):
    """``assign_batch`` without the store actor: the same matrix made, the same columns filled."""
    import pyarrow as pa

    from activessf.data.embeddings import embedding_matrix
    from activessf.stages.select import SELECTION_SCHEMA

    x = embedding_matrix(batch.column("embedding"))
    n = len(batch)
    return pa.table({"region_id": batch.column("id"), "cluster": np.zeros(n, np.int32),
                     "distance": x[:, 0].copy(), "threshold": np.ones(n, np.float32),
                     "selected": np.ones(n, bool), "prototypes_version": np.ones(n, np.int32)}, SELECTION_SCHEMA)


def io_run(embeddings: Path, out: Path, dim: int, batch_size: int = 1024) -> dict:
    """The selection stage's read / collect / write without selection (as ``select_on_ray`` does it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from activessf.stages.select import SELECTION_SCHEMA

    t0 = time.perf_counter()
    ds = ray.data.read_parquet(str(embeddings)).select_columns(["id", "embedding"])
    ds = ds.map_batches(noop_batch, fn_kwargs={"dim": dim}, batch_size=batch_size, batch_format="pyarrow",
                        num_cpus=0.5)
    t = pa.concat_tables([t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]).cast(SELECTION_SCHEMA)
    t = t.sort_by("region_id")
    out.mkdir(parents=True)
    pq.write_table(t, out / "part-0.parquet")
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "regions_per_s": round(t.num_rows / seconds), "rows": t.num_rows}


def stage_run(cfg, data: Path, out: Path) -> dict:
    from activessf.stages import select as stage

    with TreeSampler() as sampler, timed_calls(stage, "select_on_ray", "write_figures", "write_embedding_map") as t:
        t0 = time.perf_counter()
        report = stage.run_select(cfg, data / "regions", out, labelled_embeddings=data / "labelled")
        seconds = time.perf_counter() - t0
    served = report["store"]["served"]
    return {"seconds": round(seconds, 2), "regions_per_s": round(report["totals"]["regions"] / seconds),
            "regions": report["totals"]["regions"], "selected": report["totals"]["selected"],
            "phases_s": {"fit_and_assign": round(t["select_on_ray"], 2),
                         "figures": round(t["write_figures"], 2), "embedding_map": round(t["write_embedding_map"], 2),
                         "report_table_mlflow": round(seconds - sum(t.values()), 2)},
            "store": {**served, "share_of_stage": round(served["busy_seconds"] / seconds, 3)},
            "cpu_seconds": sampler.cpu_seconds, "peak_rss_mib": round(sampler.peak_mib)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regions", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of io and stage")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "activessf-bench-select-scale",
                    help="where the embeddings are written once and kept")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from activessf.config import load_config
    from activessf.runtime import init_ray, shutdown_ray

    made = make_data(args.data, args.regions, args.dim)
    files = sorted((args.data / "regions" / "embeddings").glob("*.parquet"))
    gib = sum(f.stat().st_size for f in files) / 2**30
    rounds = {"io": [], "stage": []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(overrides=[f"run.work_dir={Path(tmp) / 'work'}", "run.quiet=true"])
        init_ray(quiet=True)
        try:
            for r in range(args.rounds):
                rounds["io"].append(io_run(args.data / "regions" / "embeddings", Path(tmp) / f"io{r}", args.dim))
                rounds["stage"].append(stage_run(cfg, args.data, Path(tmp) / f"sel{r}"))
                print(f"round {r + 1}: io {rounds['io'][-1]['seconds']} s, stage {rounds['stage'][-1]['seconds']} s",
                      file=sys.stderr)
        finally:
            shutdown_ray()
    io_s = float(np.median([r["seconds"] for r in rounds["io"]]))
    st_s = float(np.median([r["seconds"] for r in rounds["stage"]]))
    busy = float(np.median([r["store"]["busy_seconds"] for r in rounds["stage"]]))
    summary = {"regions": args.regions, "dim": args.dim, "parquet_gib": round(gib, 2), "io_s": round(io_s, 2),
               "stage_s": round(st_s, 2), "stage_regions_per_s": round(args.regions / st_s),
               "stage_speed_over_io": round(io_s / st_s, 2), "store_busy_s": round(busy, 2),
               "store_share_of_stage": round(busy / st_s, 3)}
    path = write("select_scale", {"data": made, "summary": summary, "rounds": rounds}, args.out)
    print(table([("io: read, no-op per batch, write", summary["io_s"], round(args.regions / io_s), ""),
                 ("run_select end to end", summary["stage_s"], summary["stage_regions_per_s"],
                  f"{summary['store_share_of_stage']:.1%}")],
                (f"{args.regions:,} x {args.dim} ({gib:.1f} GiB)", "median s", "regions/s", "store actor busy")))
    print(f"\nstage at {summary['stage_speed_over_io']:.0%} of io speed (goal >= 50%); store actor busy "
          f"{summary['store_share_of_stage']:.1%} of the stage (goal < 25%)\nphases of the last stage run: "
          f"{rounds['stage'][-1]['phases_s']}\n\nwrote {path}")


if __name__ == "__main__":
    main()
