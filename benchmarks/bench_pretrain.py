"""Pretraining overhead: the same tiny MAE epoch through Ray Train (1 and 2 workers) vs a plain torch loop.

    .venv/bin/python benchmarks/bench_pretrain.py [--images 512] [--epochs 3] [--size 64] [--model micro]

Goal (issue 5): Ray Train with 1 worker <= 1.10x the plain loop's epoch time;
then 2 workers vs 1 on this machine. Both paths use the same augmentation,
model, optimiser groups and batch; epoch time is the median over epochs after
the first (which pays start-up).
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
from common import table, write  # noqa: E402


def overrides(args, workers: int) -> list[str]:
    return [f"pretrain.model={args.model}", f"pretrain.image_size={args.size}", "pretrain.patch_size=8",
            f"pretrain.batch_size={args.batch}", f"pretrain.epochs={args.epochs}", "pretrain.warmup_epochs=1",
            f"pretrain.checkpoint_every={args.epochs}", f"pretrain.num_workers={workers}",
            "pretrain.source=filtered"]


def plain_loop(images: np.ndarray, cfg) -> list[float]:
    """What a user writes without Ray: one process, the same model, views and optimiser."""
    import torch

    from activessf.ssl import build_method
    from activessf.ssl.augment import make_views
    from activessf.training.optim import param_groups
    from activessf.training.schedule import lr_at, scaled_lr, set_lr

    p = cfg.pretrain
    torch.manual_seed(0)
    method = build_method(p)
    opt = torch.optim.AdamW(param_groups(method, p.weight_decay, method.no_weight_decay()), betas=(0.9, 0.95))
    views_of = make_views(method, p.image_size)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    steps = len(x_all) // p.batch_size
    times = []
    for epoch in range(p.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(x_all))
        for s in range(steps):
            set_lr(opt, lr_at(epoch + s / steps, scaled_lr(p.base_lr, p.batch_size), p.warmup_epochs, p.epochs))
            loss = method(views_of(x_all[order[s * p.batch_size:(s + 1) * p.batch_size]])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", default="micro")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from activessf.config import load_config
    from activessf.imageio import encode_png
    from activessf.stages.pretrain import run_pretrain, source_size
    from activessf.tracking import init_mlflow

    rng = np.random.default_rng(0)
    size = source_size(args.size)
    images = rng.integers(0, 255, (args.images, size, size, 3), dtype=np.uint8)
    plain = plain_loop(images, load_config(overrides=overrides(args, 1)))
    runs = {"plain": plain}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "regions" / "regions").mkdir(parents=True)
        pq.write_table(pa.table({"region_id": [f"r{i}" for i in range(len(images))],
                                 "crop": [encode_png(im) for im in images]}), tmp / "regions" / "regions" / "p.parquet")
        ray.init(include_dashboard=False, log_to_driver=False)
        init_mlflow(tmp / "work", "bench")
        try:
            for workers in (1, 2):
                cfg = load_config(overrides=overrides(args, workers) + [f"run.work_dir={tmp / 'work'}"])
                run_pretrain(tmp / f"enc{workers}", cfg, regions=tmp / "regions", name=f"bench{workers}",
                             test_hooks={"visualise_every": 0})  # the plain loop draws no pictures either
                hist = json.loads((tmp / f"enc{workers}" / "history.json").read_text())
                runs[f"ray_{workers}"] = [h["epoch_seconds"] for h in hist]
        finally:
            ray.shutdown()
    med = {k: float(np.median(v[1:])) for k, v in runs.items()}
    record = {"images": args.images, "image_size": args.size, "batch": args.batch, "model": args.model,
              "epochs": args.epochs, "epoch_seconds": runs, "median_epoch_seconds": med,
              "ray1_over_plain": round(med["ray_1"] / med["plain"], 3),
              "ray2_over_ray1": round(med["ray_2"] / med["ray_1"], 3)}
    path = write("pretrain", record, args.out)
    print(table([(k, round(v, 2), round(args.images / v, 1)) for k, v in med.items()],
                (f"MAE {args.model} @{args.size}, {args.images} images", "s/epoch", "images/s")))
    print(f"\nRay 1 worker / plain: {record['ray1_over_plain']}x;  2 workers / 1 worker: {record['ray2_over_ray1']}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
