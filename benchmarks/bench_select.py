"""Selection speed: nearest-prototype assignment (FAISS vs NumPy) and embedding throughput (Ray Data vs torch).

    .venv/bin/python benchmarks/bench_select.py [--vectors 1000000] [--dim 2048] [--k 11]
        [--images 256] [--backbone resnet18] [--batch 32]

1. Assign N x D float32 vectors to K prototypes (Eq. 7): FAISS IndexFlatL2 vs
   NumPy brute force (broadcast differences, in chunks) and vs NumPy with the
   |x|^2 - 2x.c + |c|^2 expansion. Goal (issue 4): FAISS >= 5x brute force.
2. Embed the same crops with `run_embed` (Ray Data actor pool) and with a plain
   torch loop at the same batch size in one process. Goal: Ray >= 0.8x.
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
    import ray
    import torch

    from activessf.config import SynthConfig, load_config
    from activessf.data import synth
    from activessf.data.labelled import list_labelled
    from activessf.features.backbone import embed, load_backbone
    from activessf.imageio import read_rgb
    from activessf.stages.embed import run_embed

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth.generate(SynthConfig(images=1, labelled=images, workers=2), tmp / "d", progress=False)
        cfg = load_config(overrides=[f"embed.backbone={backbone}", f"embed.batch_size={batch}",
                                     f"embed.image_size={size}"])
        pairs = list_labelled(tmp / "d" / "labelled")
        model = load_backbone(backbone)
        t0 = time.perf_counter()
        for i in range(0, len(pairs), batch):  # what a user would write without Ray
            embed(model, [read_rgb(p) for p, _ in pairs[i : i + batch]], size, cfg.embed.mean, cfg.embed.std)
        plain = time.perf_counter() - t0
        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            run_embed(cfg, "labelled", tmp / "d" / "labelled", tmp / "warm")  # workers and model files warm
            t0 = time.perf_counter()
            meta = run_embed(cfg, "labelled", tmp / "d" / "labelled", tmp / "e")
            ray_s = time.perf_counter() - t0
        finally:
            ray.shutdown()
    return {"images": len(pairs), "backbone": backbone, "batch": batch, "image_size": size,
            "torch_threads": torch.get_num_threads(), "plain_torch_s": round(plain, 2),
            "plain_images_per_s": round(len(pairs) / plain, 2), "ray_data_s": round(ray_s, 2),
            "ray_images_per_s": round(len(pairs) / ray_s, 2), "ray_map_images_per_s": meta["images_per_s"],
            "ray_over_plain": round(plain / ray_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--k", type=int, default=11)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    a = assignment(args.vectors, args.dim, args.k)
    e = embedding(args.images, args.backbone, args.batch, args.size)
    path = write("select", {"assignment": a, "embedding": e}, args.out)
    print(table([(name, s) for name, s in a["seconds"].items()], (f"assign {args.vectors}x{args.dim} to {args.k}",
                                                                  "seconds")))
    print(f"FAISS vs NumPy brute force: {a['faiss_speedup_vs_broadcast']}x; vs NumPy |x|^2-2x.c+|c|^2: "
          f"{a['faiss_speedup_vs_expanded']}x; labels agree {a['label_agreement']:.4f}\n")
    print(table([("plain torch loop", e["plain_torch_s"], e["plain_images_per_s"]),
                 ("Ray Data actor pool", e["ray_data_s"], e["ray_images_per_s"])],
                (f"embed {e['images']} crops, {e['backbone']} @{e['image_size']}", "seconds", "images/s")))
    print(f"Ray / plain: {e['ray_over_plain']}x\n\nwrote {path}")


if __name__ == "__main__":
    main()
