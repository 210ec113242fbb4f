"""Selection speed: nearest-prototype assignment (FAISS vs NumPy) and embedding throughput (Ray Data vs torch).

    .venv/bin/python benchmarks/bench_select.py [--vectors 1000000] [--dim 2048] [--k 11]
        [--images 2000] [--backbone resnet18] [--batch 32] [--only assignment|embedding]

1. Assign N x D float32 vectors to K prototypes (Eq. 7): FAISS IndexFlatL2 vs
   NumPy brute force (broadcast differences, in chunks) and vs NumPy with the
   |x|^2 - 2x.c + |c|^2 expansion. Goal (issue 4): FAISS >= 5x brute force.
2. Embed synthetic crops with `run_embed` (Ray Data actor pool, on a local Ray started as the platform
   starts it) and with a plain torch loop at the same batch size in one process, both in steady state
   (see `embedding`); Ray's start-up is reported apart. Goal (issue 20): Ray >= 0.9x on >= 2,000 crops.
The selection stage end to end over a million regions: bench_select_scale.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write  # noqa: E402

CHUNK = 1 << 15


def numpy_broadcast(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.empty(len(x), np.int64)
    for i in range(0, len(x), CHUNK):
        out[i : i + CHUNK] = ((x[i : i + CHUNK, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    return out


def numpy_expanded(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.empty(len(x), np.int64)
    cc = (c * c).sum(1)
    for i in range(0, len(x), CHUNK):
        out[i : i + CHUNK] = (cc[None] - 2.0 * x[i : i + CHUNK] @ c.T).argmin(1)
    return out


def assignment(n: int, dim: int, k: int) -> dict:
    from activessf.selection.prototypes import assign

    rng = np.random.default_rng(0)
    x = np.empty((n, dim), np.float32)
    for i in range(0, n, CHUNK):
        x[i : i + CHUNK] = rng.standard_normal((min(CHUNK, n - i), dim), dtype=np.float32)
    c = rng.standard_normal((k, dim), dtype=np.float32)
    times, labels = {}, {}
    for name, fn in (("faiss", lambda: assign(x, c)[0]), ("numpy_expanded", lambda: numpy_expanded(c, x)),
                     ("numpy_broadcast", lambda: numpy_broadcast(c, x))):
        t0 = time.perf_counter()
        labels[name] = fn()
        times[name] = time.perf_counter() - t0
    agree = float((labels["faiss"] == labels["numpy_broadcast"]).mean())
    return {"vectors": n, "dim": dim, "k": k, "seconds": {k2: round(v, 2) for k2, v in times.items()},
            "faiss_speedup_vs_broadcast": round(times["numpy_broadcast"] / times["faiss"], 1),
            "faiss_speedup_vs_expanded": round(times["numpy_expanded"] / times["faiss"], 2),
            "label_agreement": agree}


def embedding(images: int, backbone: str, batch: int, size: int) -> dict:
    """Steady-state images/s of a plain torch loop and of ``run_embed`` on Ray Data, and their start-up.

    The plain loop is timed after one warm-up batch. ``run_embed`` runs on ``images // 2`` crops and then on
    ``images // 2 + images`` (a CSV of the first rows of one synthetic set): the difference of the two run
    times is what ``images`` more crops cost once the actors are up, so start-up, reading and writing that
    do not grow with the set cancel out; start-up is reported apart (the smaller run's time less its crops
    at the steady rate)."""
    import csv

    import torch

    from activessf.config import SynthConfig, load_config
    from activessf.data import synth
    from activessf.data.labelled import list_labelled
    from activessf.features.backbone import embed, load_backbone
    from activessf.imageio import read_rgb
    from activessf.runtime import init_ray, shutdown_ray
    from activessf.stages.embed import normalised, run_embed

    small = images // 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth.generate(SynthConfig(images=1, labelled=small + images, workers=2), tmp / "d", progress=False)
        pairs = list_labelled(tmp / "d" / "labelled")[: small + images]
        specs = {}
        for name, n in (("small", small), ("large", small + images)):
            specs[name] = tmp / f"{name}.csv"
            with open(specs[name], "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["path", "label"])
                w.writerows([(str(p), lab) for p, lab in pairs[:n]])
        cfg = load_config(overrides=[f"embed.backbone={backbone}", f"embed.batch_size={batch}",
                                     f"embed.image_size={size}", f"run.work_dir={tmp / 'work'}", "run.quiet=true",
                                     "run.inline_data_mb=0"])  # on Ray Data however small
        model = load_backbone(backbone)
        norm, _ = normalised(cfg.embed)  # the mean and std run_embed resolves (the model's own by default)
        steady = pairs[small:]
        embed(model, [read_rgb(p) for p, _ in steady[:batch]], size, norm.mean, norm.std)  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(steady), batch):  # what a user would write without Ray
            embed(model, [read_rgb(p) for p, _ in steady[i : i + batch]], size, norm.mean, norm.std)
        plain = time.perf_counter() - t0
        init_ray(quiet=True)
        try:
            runs = {}
            for name in ("small", "large"):
                t0 = time.perf_counter()
                run_embed(cfg, "labelled", specs[name], tmp / name)
                runs[name] = time.perf_counter() - t0
        finally:
            shutdown_ray()
    ray_steady = runs["large"] - runs["small"]
    record = {"images": images, "backbone": backbone, "batch": batch, "image_size": size,
              "torch_threads": torch.get_num_threads(), "plain_torch_s": round(plain, 2),
              "plain_images_per_s": round(images / plain, 2), "ray_small_run_s": round(runs["small"], 2),
              "ray_large_run_s": round(runs["large"], 2), "ray_small_images": small,
              "ray_whole_run_images_per_s": round((small + images) / runs["large"], 2),
              "ray_steady_s": None, "ray_images_per_s": None, "ray_over_plain": None, "ray_startup_s": None}
    if ray_steady < 0.2 * runs["small"]:  # within this VM's noise: no steady rate to derive
        print(f"warning: {small + images} crops took {runs['large']:.1f} s and {small} took {runs['small']:.1f} s: "
              "too few crops to separate start-up from the steady rate; give --images 1000 or more",
              file=sys.stderr)
        return record
    return {**record, "ray_steady_s": round(ray_steady, 2), "ray_images_per_s": round(images / ray_steady, 2),
            "ray_over_plain": round(plain / ray_steady, 2),
            "ray_startup_s": round(runs["small"] - small * ray_steady / images, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--k", type=int, default=11)
    ap.add_argument("--images", type=int, default=2000, help="crops whose steady-state embedding is timed")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--only", choices=("assignment", "embedding"), help="run one part (the JSON gets its own name)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    record = {}
    if args.only != "embedding":
        a = record["assignment"] = assignment(args.vectors, args.dim, args.k)
        print(table([(name, s) for name, s in a["seconds"].items()],
                    (f"assign {args.vectors}x{args.dim} to {args.k}", "seconds")))
        print(f"FAISS vs NumPy brute force: {a['faiss_speedup_vs_broadcast']}x; vs NumPy |x|^2-2x.c+|c|^2: "
              f"{a['faiss_speedup_vs_expanded']}x; labels agree {a['label_agreement']:.4f}\n")
    if args.only != "assignment":
        e = record["embedding"] = embedding(args.images, args.backbone, args.batch, args.size)
        print(table([("plain torch loop (after a warm-up batch)", e["plain_torch_s"], e["plain_images_per_s"]),
                     ("run_embed on Ray Data, steady state", e["ray_steady_s"] or "n/a",
                      e["ray_images_per_s"] or "n/a")],
                    (f"embed {e['images']} crops, {e['backbone']} @{e['image_size']}", "seconds", "images/s")))
        print(f"Ray / plain, steady state: {e['ray_over_plain'] or 'n/a '}x (goal >= 0.9x); Ray start-up, reading "
              f"and writing {e['ray_startup_s'] or 'n/a '} s per run; a whole run of "
              f"{e['ray_small_images'] + e['images']} "
              f"crops {e['ray_whole_run_images_per_s']} images/s\n")
    path = write("select" if not args.only else f"select_{args.only}", record, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
