"""Region filter speed on the BCCD smears: per image on one core, and Ray Data throughput with 1 and 2 CPUs.

    .venv/bin/python benchmarks/bench_filter.py [--bccd ../shared/data/bccd] [--repeat 7] [--ray-images 2000]

Per-image times are on one core (OpenCV and BLAS limited to one thread):
- floor: decode + Gaussian blur + HSV conversion (what any colour filter must do);
- ours: decode (with the header checks) + the whole region filter (no crop encoding);
- a task's work: what a Ray Data filter task does per image (read the file, filter, crops as PNG, rows);
- literal: scikit-learn K-means over every pixel, G', HSV, masks, components.
Goal (issue 3): ours <= 3 x floor.

Then `run_filter` (read, filter, PNG crops, Parquet) on --ray-images BCCD-sized images (BCCD repeated) on a
local Ray started as the platform starts it, with 1 and 2 CPUs in interleaved rounds, next to the bare
filter in 1 and 2 plain processes (this machine's own ceiling for 2 cores over 1). Each run records its
phases (filter tasks, splitting into tables and Parquet, figures + overlays + MLflow), the CPU seconds of
the driver, of the Ray workers by task and of each Ray daemon, and the peak resident memory of them all.
Goal (issue 20): >= 1.6x images/s with 2 CPUs over 1, and peak memory within 15% from the smallest
to the largest of --ray-images (2,000 and 10,000 by default). Between the two sizes the benchmark also
derives each CPU count's steady rate and its fixed cost per run.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TreeSampler, table, timed_calls, write  # noqa: E402

from activessf.config import load_config  # noqa: E402
from activessf.data.decode import decode_image  # noqa: E402
from activessf.process import image_worker  # noqa: E402
from activessf.regions.filter import filter_image  # noqa: E402
from activessf.regions.literal import filter_image_literal  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def floor(data: bytes, cfg) -> None:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    cv2.cvtColor(cv2.GaussianBlur(bgr, (cfg.blur_kernel,) * 2, cfg.blur_sigma), cv2.COLOR_BGR2HSV)


def ours(data: bytes, cfg) -> None:
    filter_image(decode_image(data, cfg.max_pixels), cfg)


def literal(data: bytes, cfg) -> None:
    filter_image_literal(decode_image(data, cfg.max_pixels), cfg)


def per_image_ms(fn, datas, cfg) -> float:
    """Mean milliseconds of ``fn(d, cfg)`` over ``datas`` (after 3 warm-up calls)."""
    for d in datas[:3]:
        fn(d, cfg)
    t0 = time.perf_counter()
    for d in datas:
        fn(d, cfg)
    return (time.perf_counter() - t0) / len(datas) * 1000


def bare(path: Path, cfg) -> int:
    """What a filter task does for one image, without Ray: read, filter, crops as PNG, Arrow rows."""
    from activessf.stages.filter import filter_file, unify

    return unify(filter_file(os.fsencode(path), path.name, cfg, "bench")).num_rows


def _pool_init() -> None:
    image_worker()  # as a filter task sets its process up


def _bare_chunk(args) -> int:
    paths, cfg = args
    return sum(bare(p, cfg) for p in paths)


def plain_pool(files: list[Path], procs: int, cfg) -> dict:
    """The Ray path's ceiling on this machine: the bare filter over ``files`` in ``procs`` plain processes."""
    import multiprocessing as mp

    chunks = [(files[i::procs * 8], cfg) for i in range(procs * 8)]
    with mp.get_context("fork").Pool(procs, initializer=_pool_init) as pool:
        t0 = time.perf_counter()
        rows = sum(pool.map(_bare_chunk, chunks))
        seconds = time.perf_counter() - t0
    return {"procs": procs, "images": len(files), "seconds": round(seconds, 2),
            "images_per_s": round(len(files) / seconds, 1), "rows": rows}


def ray_run(files: list[Path], cpus: int, cfg) -> dict:
    """``run_filter`` over ``files`` on a local Ray of ``cpus`` CPUs started as the platform starts it, with
    its phases timed and the CPU seconds and peak memory of the driver and every Ray process. ``cfg``'s
    work dir must outlive every run of the process (a process keeps the MLflow store it chose first)."""
    from activessf.runtime import init_ray, shutdown_ray
    from activessf.stages import filter as stage

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i, f in enumerate(files):
            os.symlink(f, src / f"{i:05d}_{f.name}")
        init_ray(num_cpus=cpus, quiet=True)
        try:  # write_tables is called once the filter tasks are done
            with TreeSampler() as sampler, timed_calls(stage, "write_tables") as timed:
                t0 = time.perf_counter()
                summary = stage.run_filter(cfg, str(src), Path(tmp) / "out")
                total = time.perf_counter() - t0
        finally:
            shutdown_ray()
    return {"cpus": cpus, "images": len(files), "seconds": summary["seconds"],
            "images_per_s": summary["images_per_s"], "regions": summary["regions_kept"],
            "phases_s": {"filter_map": round(summary["seconds"] - timed["write_tables"], 2),
                         "tables": round(timed["write_tables"], 2),
                         "figures_overlays_mlflow": round(total - summary["seconds"], 2)},
            "call_s": round(total, 2), "cpu_seconds": sampler.cpu_seconds, "peak_rss_mib": round(sampler.peak_mib)}


def median(xs) -> float:
    return float(np.median(xs))


def scaling(runs: list[dict], key: str, unit: str) -> dict:
    """Median images/s per value of ``key`` (CPUs, processes) and the ratio of 2 to 1."""
    by = {n: median([r["images_per_s"] for r in runs if r[key] == n]) for n in sorted({r[key] for r in runs})}
    return {"images_per_s": {f"{n} {unit}": round(v, 1) for n, v in by.items()},
            "ratio_2_over_1": round(by[2] / by[1], 2) if 1 in by and 2 in by else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bccd", type=Path, default=REPO.parent / "shared" / "data" / "bccd")
    ap.add_argument("--repeat", type=int, default=7, help="interleaved per-image timing rounds (0: skip)")
    ap.add_argument("--literal", type=int, default=5, help="images for the slow literal version")
    ap.add_argument("--ray-images", default="2000,10000",
                    help="comma-separated sizes of the Ray Data runs (BCCD repeated)")
    ap.add_argument("--ray-rounds", type=int, default=2, help="interleaved rounds of 1 and 2 CPUs (0: skip Ray)")
    ap.add_argument("--preset", default=None, help="config preset (default: paper defaults)")
    ap.add_argument("--malloc", choices=("kept", "default"), default="kept",
                    help="per-image rounds with the allocator as filter tasks set it (activessf.process) or "
                         "glibc's default (the figures before 2026-12-03)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.malloc == "kept":
        image_worker()  # as a filter task sets its process up
    else:
        cv2.setNumThreads(1)
    cfg = load_config(preset=args.preset)
    files = sorted((args.bccd / "JPEGImages").glob("*.jpg"))
    if not files:
        sys.exit(f"no BCCD images under {args.bccd}/JPEGImages (the public BCCD Dataset; give --bccd DIR)")
    record = {"preset": args.preset, "malloc": args.malloc}
    if args.repeat:
        record["per_image"] = per_image_times(files, cfg, args.repeat, args.literal)
    if args.ray_rounds:
        record["ray_data"] = ray_times(files, cfg, sorted(int(n) for n in args.ray_images.split(",")),
                                       args.ray_rounds)
    path = write("filter", record, args.out)
    if args.repeat:
        pi = record["per_image"]
        print(table([("floor (decode+blur+HSV)", pi["floor_ms"], "1.00", pi["best_floor_ms"], "1.00"),
                     ("ours (whole filter)", pi["ours_ms"], pi["ours_over_floor"], pi["best_ours_ms"],
                      pi["best_ours_over_best_floor"]),
                     ("a task's work (read, filter, PNG crops, rows)", pi["bare_ms"], pi["bare_over_floor"], "", ""),
                     (f"literal ({args.literal} images)", pi["literal_ms"], round(pi["literal_ms"] / pi["floor_ms"], 1),
                      "", "")],
                    ("per image, 1 core", "median ms", "x floor", "best ms", "x best floor")))
        print()
    if args.ray_rounds:
        rd = record["ray_data"]
        rows = [(f"Ray Data, {r['cpus']} CPU", r["images"], r["seconds"], r["images_per_s"], r["peak_rss_mib"],
                 r["phases_s"]["filter_map"], r["phases_s"]["tables"]) for r in rd["ray"]]
        rows += [(f"plain processes, {r['procs']}", r["images"], r["seconds"], r["images_per_s"], "", "", "")
                 for r in rd["plain"]]
        print(table(rows, ("run", "images", "seconds", "images/s", "peak RSS MiB", "map s", "tables s")))
        print(f"\n2 CPUs over 1: plain processes {rd['plain_scaling']['ratio_2_over_1']}x; Ray Data "
              + ", ".join(f"{v['ratio_2_over_1']}x at {n} images" for n, v in rd["ray_scaling"].items()))
        if rd.get("steady"):
            st = rd["steady"]
            print(f"steady rate (between the sizes): 1 CPU {st['1 CPU']['images_per_s']} images/s + "
                  f"{st['1 CPU']['fixed_s']} s per run, 2 CPUs {st['2 CPU']['images_per_s']} images/s + "
                  f"{st['2 CPU']['fixed_s']} s per run: {st['ratio_2_over_1']}x")
        if rd.get("memory"):
            m = rd["memory"]
            print(f"peak memory, 2 CPUs: {m['small_images']} images {m['small_mib']} MiB, "
                  f"{m['large_images']} images {m['large_mib']} MiB ({m['growth']:+.0%})")
    print(f"\nwrote {path}")


def per_image_times(files: list[Path], cfg, repeat: int, n_literal: int) -> dict:
    datas = [f.read_bytes() for f in files]
    rounds = {"floor": [], "ours": [], "bare": []}
    for _ in range(repeat):  # interleaved, so drift affects both alike
        rounds["floor"].append(per_image_ms(floor, datas, cfg.filter))
        rounds["ours"].append(per_image_ms(ours, datas, cfg.filter))
        rounds["bare"].append(per_image_ms(bare, files, cfg.filter))
    t_floor, t_ours, t_bare = (median(rounds[k]) for k in ("floor", "ours", "bare"))
    best_floor, best_ours = min(rounds["floor"]), min(rounds["ours"])
    t_literal = per_image_ms(literal, datas[:n_literal], cfg.filter)
    return {"images": len(datas), "floor_ms": round(t_floor, 3), "ours_ms": round(t_ours, 3),
            "bare_ms": round(t_bare, 3), "bare_over_floor": round(t_bare / t_floor, 2),
            "literal_ms": round(t_literal, 1), "literal_images": n_literal,
            "ours_over_floor": round(t_ours / t_floor, 2), "literal_over_ours": round(t_literal / t_ours, 1),
            "best_floor_ms": round(best_floor, 3), "best_ours_ms": round(best_ours, 3),
            "best_ours_over_best_floor": round(best_ours / best_floor, 2), "rounds": rounds}


def ray_times(files: list[Path], cfg, sizes: list[int], rounds: int) -> dict:
    """Interleaved rounds of run_filter on 1 and 2 CPUs at each of ``sizes`` images, and of the bare filter
    in 1 and 2 plain processes at the smallest size. Per size: the 2-over-1 ratio; per CPU count: the
    steady rate (the images between the smallest and largest size over the seconds between them) and the
    fixed cost per run (the smallest run's seconds less its images at that rate)."""
    sets = {n: (files * -(-n // len(files)))[:n] for n in sizes}
    ray, plain = [], []
    work = tempfile.TemporaryDirectory()  # one MLflow store for every run of this process
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"work_dir": work.name, "quiet": True})})
    ray_run(files[:50], 1, cfg)  # the process's first run pays one-time costs (MLflow store, imports)
    for _ in range(rounds):
        for n in sizes:
            for cpus in (1, 2):
                ray.append(ray_run(sets[n], cpus, cfg))
        for procs in (1, 2):
            plain.append(plain_pool(sets[sizes[0]], procs, cfg.filter))
    out = {"ray": ray, "plain": plain, "plain_scaling": scaling(plain, "procs", "processes"),
           "ray_scaling": {n: scaling([r for r in ray if r["images"] == n], "cpus", "CPU") for n in sizes}}
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        steady = {}
        for cpus in (1, 2):
            t = {n: median([r["seconds"] for r in ray if r["cpus"] == cpus and r["images"] == n]) for n in (lo, hi)}
            if t[hi] - t[lo] < 0.2 * t[lo]:  # within this VM's noise: no rate to derive
                print(f"warning: with {cpus} CPU(s), {hi} images took {t[hi]:.1f} s and {lo} took {t[lo]:.1f} s: "
                      "too close to separate the fixed cost from the steady rate; use sizes further apart "
                      "(the defaults, 2000,10000)", file=sys.stderr)
                break
            rate = (hi - lo) / (t[hi] - t[lo])
            steady[f"{cpus} CPU"] = {"images_per_s": round(rate, 1), "fixed_s": round(t[lo] - lo / rate, 2)}
        else:
            steady["ratio_2_over_1"] = round(steady["2 CPU"]["images_per_s"] / steady["1 CPU"]["images_per_s"], 2)
            out["steady"] = steady
        peak = {n: max(r["peak_rss_mib"] for r in ray if r["cpus"] == 2 and r["images"] == n) for n in (lo, hi)}
        out["memory"] = {"small_images": lo, "small_mib": peak[lo], "large_images": hi, "large_mib": peak[hi],
                         "growth": round(peak[hi] / peak[lo] - 1, 3)}
    return out


if __name__ == "__main__":
    main()
