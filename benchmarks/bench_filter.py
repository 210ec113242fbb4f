"""Region filter speed on the BCCD smears: floor vs ours vs the literal reading, and Ray Data throughput.

    .venv/bin/python benchmarks/bench_filter.py [--bccd ../shared/data/bccd] [--repeat 3] [--literal 5]

Per-image times are on one core (OpenCV and BLAS limited to one thread):
- floor: decode + Gaussian blur + HSV conversion (what any colour filter must do);
- ours: decode (with the header checks) + the whole region filter (no crop encoding);
- literal: scikit-learn K-means over every pixel, G', HSV, masks, components.
Goal (issue 3): ours <= 3 x floor. Then Ray Data throughput of `run_filter`
(read, filter, crops as PNG, Parquet) on >= 1,000 images with 1 and 2 CPUs,
with the peak resident memory of the Ray processes.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write  # noqa: E402

from activessf.config import load_config  # noqa: E402
from activessf.data.decode import decode_image  # noqa: E402
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
    for d in datas[:3]:
        fn(d, cfg)
    t0 = time.perf_counter()
    for d in datas:
        fn(d, cfg)
    return (time.perf_counter() - t0) / len(datas) * 1000


class PeakRSS(threading.Thread):
    """Samples the resident memory of this process and all its descendants (the local Ray)."""

    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        self.every, self.peak, self.stop = every, 0, threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)


def ray_throughput(files: list[Path], cpus: int, cfg) -> dict:
    import ray

    from activessf.stages.filter import run_filter

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i, f in enumerate(files):
            os.symlink(f, src / f"{i:05d}_{f.name}")
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        monitor = PeakRSS()
        monitor.start()
        try:
            summary = run_filter(cfg, str(src), Path(tmp) / "out")
        finally:
            monitor.stop.set()
            monitor.join()
            ray.shutdown()
    return {"cpus": cpus, "images": len(files), "seconds": summary["seconds"],
            "images_per_s": summary["images_per_s"], "regions": summary["regions_kept"],
            "peak_rss_mib": round(monitor.peak / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bccd", type=Path, default=REPO.parent / "shared" / "data" / "bccd")
    ap.add_argument("--repeat", type=int, default=7, help="interleaved timing rounds (median and best reported)")
    ap.add_argument("--literal", type=int, default=5, help="images for the slow literal version")
    ap.add_argument("--ray-images", type=int, default=1092, help="images for the Ray Data runs (BCCD repeated)")
    ap.add_argument("--preset", default=None, help="config preset (default: paper defaults)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    cfg = load_config(preset=args.preset)
    files = sorted((args.bccd / "JPEGImages").glob("*.jpg"))
    if not files:
        sys.exit(f"no BCCD images under {args.bccd}/JPEGImages")
    datas = [f.read_bytes() for f in files]
    rounds = {"floor": [], "ours": []}
    for _ in range(args.repeat):  # interleaved, so drift affects both alike
        rounds["floor"].append(per_image_ms(floor, datas, cfg.filter))
        rounds["ours"].append(per_image_ms(ours, datas, cfg.filter))
    t_floor, t_ours = float(np.median(rounds["floor"])), float(np.median(rounds["ours"]))
    best_floor, best_ours = min(rounds["floor"]), min(rounds["ours"])
    t_literal = per_image_ms(literal, datas[: args.literal], cfg.filter)
    per_image = {"images": len(datas), "floor_ms": round(t_floor, 3), "ours_ms": round(t_ours, 3),
                 "literal_ms": round(t_literal, 1), "literal_images": args.literal,
                 "ours_over_floor": round(t_ours / t_floor, 2), "literal_over_ours": round(t_literal / t_ours, 1),
                 "best_floor_ms": round(best_floor, 3), "best_ours_ms": round(best_ours, 3),
                 "best_ours_over_best_floor": round(best_ours / best_floor, 2), "rounds": rounds}
    reps = (args.ray_images + len(files) - 1) // len(files)
    many = (files * reps)[: args.ray_images]
    ray_runs = [ray_throughput(many, cpus, cfg) for cpus in (1, 2)]
    path = write("filter", {"per_image": per_image, "ray_data": ray_runs, "preset": args.preset}, args.out)
    print(table([("floor (decode+blur+HSV)", per_image["floor_ms"], "1.00", per_image["best_floor_ms"], "1.00"),
                 ("ours (whole filter)", per_image["ours_ms"], per_image["ours_over_floor"],
                  per_image["best_ours_ms"], per_image["best_ours_over_best_floor"]),
                 (f"literal ({args.literal} images)", per_image["literal_ms"], round(t_literal / t_floor, 1), "", "")],
                ("per image, 1 core", "median ms", "x floor", "best ms", "x best floor")))
    print()
    print(table([(r["cpus"], r["images"], r["seconds"], r["images_per_s"], r["peak_rss_mib"]) for r in ray_runs],
                ("Ray CPUs", "images", "seconds", "images/s", "peak RSS MiB")))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
