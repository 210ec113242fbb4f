"""Pretraining overhead: the same MAE epoch through Ray Train (1 and 2 workers) vs a plain torch loop.

    .venv/bin/python benchmarks/bench_pretrain.py [--config micro64] [--rounds 4] [--images N] [--epochs N] ...
    .venv/bin/python benchmarks/bench_pretrain.py --config small224 [--rounds 3]

``--config`` picks a preset (``CONFIGS`` below); any other argument overrides the preset's value.
``micro64`` is ViT-micro at 64 px with patch 8, all five variants, about 2.5 min a round here;
``small224`` is ViT-small/16 at 224 px (the platform's ``pretrain.model=small``), 6 steps of 16 images an
epoch, only ``plain``, ``plain_in_ray_task`` and ``ray_1`` (about 3 min a round on 2 cores).
Ray is started as the platform starts it (``activessf.runtime.init_ray``: dashboard on, Ray Train's
control-loop settings), not with a bare ``ray.init``.

Goal (issue 5): Ray Train with 1 worker <= 1.10x the plain loop's epoch time;
then 2 workers vs 1 on this machine. Both paths run the same training step
(``activessf.training.engine.train_one_epoch``: augmentation, model, optimiser
groups, non-finite guard) on the same batches. Epoch time is the median over the epochs
after the first ``--warmup`` (the first streams from Ray Data into the worker's
cache; the next few overlap Ray's one-time start-up of the Train and Data
actors, which import torch and Ray in their own processes on the same 2 cores).
That start-up is a per-run cost, reported separately as ``startup_seconds``
(wall time of the whole run minus the steady epochs). This shared VM drifts by
10-20% over minutes, so the variants run in interleaved rounds (plain, Ray 1,
Ray 2, plain, ...) and the ratios are taken within each round; the result is the
median round's ratio.

Each run also records a profile: the CPU seconds of every process of this process tree by kind (this
driver, Ray workers by the task or actor they run, each Ray daemon: ``common.TreeSampler``) and the
machine's context switches per second over the whole run (start-up included).

Two more variants split the gap. `plain_ray_up` runs the plain loop again while
the local Ray (raylet, GCS, log monitor, idle workers) is up but unused: on 2
cores the Ray runtime's own background work competes with the 2 torch threads.
`plain_in_ray_task` runs the very same plain loop as a Ray task holding 2 CPUs,
i.e. inside a Ray worker process (its gRPC, timer and event threads beside the
compute) but without Ray Train or Ray Data: the floor for any training that runs
inside a Ray worker. Ray Train's own cost is `ray_1` over that floor.
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
from common import TreeSampler, table, write  # noqa: E402


VARIANTS = ("plain", "plain_ray_up", "plain_in_ray_task", "ray_1", "ray_2")
# presets: argparse defaults that any explicit argument overrides
CONFIGS = {
    "micro64": dict(model="micro", size=64, patch=8, batch=32, images=2048, epochs=8, warmup=3, rounds=4,
                    variants=",".join(VARIANTS)),
    # ~9 s an epoch here (MAE, 75% masked: the encoder sees 49 of 196 patches, the decoder all 196)
    "small224": dict(model="small", size=224, patch=16, batch=16, images=96, epochs=5, warmup=2, rounds=3,
                     variants="plain,plain_in_ray_task,ray_1"),
}


def context_switches() -> int:
    """Context switches of the whole machine since boot (``ctxt`` in /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    return 0


def overrides(args, workers: int) -> list[str]:
    return [f"pretrain.model={args.model}", f"pretrain.image_size={args.size}", f"pretrain.patch_size={args.patch}",
            f"pretrain.batch_size={args.batch}", f"pretrain.epochs={args.epochs}", "pretrain.warmup_epochs=1",
            f"pretrain.checkpoint_every={args.epochs}", f"pretrain.num_workers={workers}",
            "pretrain.source=filtered"]


def plain_loop(images: np.ndarray, cfg) -> list[float]:
    """What a user writes without Ray: one process, the same model, views, optimiser and training step
    (``train_one_epoch``, the very function the Ray Train workers call, with the same guard)."""
    import torch

    from activessf.ssl import build_method
    from activessf.ssl.augment import make_views
    from activessf.training.engine import Schedule, snapshot, ssl_inputs, ssl_loss, train_one_epoch
    from activessf.training.guard import NonFiniteGuard
    from activessf.training.optim import layer_decay_groups
    from activessf.training.schedule import scaled_lr

    p = cfg.pretrain
    torch.manual_seed(0)
    method = build_method(p)
    groups = layer_decay_groups(method, p.weight_decay, p.layer_decay, method.encoder(), method.no_weight_decay())
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # as the platform's CPU workers
    prepare = ssl_inputs(make_views(method, p.image_size), torch.device("cpu"))
    x_all = torch.from_numpy(images)  # uint8 (N, S, S, 3), as the workers' feed yields it
    steps = len(x_all) // p.batch_size
    schedule = Schedule(scaled_lr(p.base_lr, p.batch_size), p.warmup_epochs, p.epochs, steps)
    guard, good = NonFiniteGuard(), snapshot(method, opt, scaler)
    times = []
    for epoch in range(p.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(x_all))
        batches = ({"image": x_all[order[s * p.batch_size:(s + 1) * p.batch_size]]} for s in range(steps))
        train_one_epoch(method, opt, scaler, batches, epoch, schedule, prepare, ssl_loss, guard=guard,
                        last_good=good, after_step=method.after_step)
        times.append(time.perf_counter() - t0)
    return times


def in_ray_task(images: np.ndarray, cfg) -> list[float]:
    """The plain loop inside a Ray worker process holding 2 CPUs, as many torch threads as the Train worker."""
    import torch

    torch.set_num_threads(2)
    return plain_loop(images, cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="micro64",
                    help="preset for the arguments below; each one given explicitly wins")
    ap.add_argument("--images", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--warmup", type=int, help="epochs left out of the steady-state median")
    ap.add_argument("--size", type=int)
    ap.add_argument("--patch", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--model")
    ap.add_argument("--rounds", type=int, help="interleaved rounds of the variants")
    ap.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, help="default benchmarks/results/pretrain[_CONFIG].json")
    args = ap.parse_args()
    for key, value in CONFIGS[args.config].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    chosen = [v for v in args.variants.split(",") if v]
    if unknown := set(chosen) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    if args.warmup >= args.epochs:
        ap.error("--warmup must be below --epochs (the steady median needs at least one epoch)")

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from activessf.runtime import init_ray, shutdown_ray
    from activessf.config import load_config
    from activessf.imageio import encode_png
    from activessf.data.resize import source_size
    from activessf.stages.pretrain import run_pretrain
    from activessf.tracking import init_mlflow

    rng = np.random.default_rng(0)
    size = source_size(args.size)
    images = rng.integers(0, 255, (args.images, size, size, 3), dtype=np.uint8)
    cfg_plain = load_config(overrides=overrides(args, 1))
    runs: dict[str, list[list[float]]] = {k: [] for k in VARIANTS if k in chosen}
    walls: dict[str, list[float]] = {k: [] for k in runs}  # whole run: start-up, every epoch, checkpoint

    profiles: dict[str, list[dict]] = {k: [] for k in runs}  # per run: CPU seconds by process, switches/s

    def timed(key, fn):
        with TreeSampler(every=0.5) as sampler:
            switches = context_switches()
            t0 = time.perf_counter()
            result = fn()
            wall = time.perf_counter() - t0
            switches = context_switches() - switches
        walls[key].append(wall)
        profiles[key].append({"cpu_seconds": sampler.cpu_seconds, "context_switches_per_s": round(switches / wall)})
        return result

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "regions" / "regions").mkdir(parents=True)
        pq.write_table(pa.table({"region_id": [f"r{i}" for i in range(len(images))],
                                 "crop": [encode_png(im) for im in images],
                                 "config_digest": ["bench"] * len(images)}),  # the run logs the regions digest
                       tmp / "regions" / "regions" / "p.parquet")
        init_mlflow(tmp / "work", "bench")
        for r in range(args.rounds):
            if "plain" in runs:  # no Ray running at all
                runs["plain"].append(timed("plain", lambda: plain_loop(images, cfg_plain)))
            init_ray(quiet=True)  # as the CLI starts it (Ray Train's control-loop settings, dashboard)
            try:
                if "plain_ray_up" in runs:  # Ray idle
                    runs["plain_ray_up"].append(timed("plain_ray_up", lambda: plain_loop(images, cfg_plain)))
                if "plain_in_ray_task" in runs:
                    task = ray.remote(num_cpus=2)(in_ray_task)
                    runs["plain_in_ray_task"].append(timed("plain_in_ray_task",
                                                           lambda: ray.get(task.remote(images, cfg_plain))))
                for workers in [w for w in (1, 2) if f"ray_{w}" in runs]:
                    cfg = load_config(overrides=overrides(args, workers) + [f"run.work_dir={tmp / 'work'}"])
                    out = tmp / f"enc{workers}_{r}"
                    timed(f"ray_{workers}", lambda: run_pretrain(  # the plain loop draws no pictures either
                        cfg, out, regions=tmp / "regions", name=f"bench{workers}-{r}", test_hooks={"visualise_every": 0}))
                    history = json.loads((out / "history.json").read_text())
                    runs[f"ray_{workers}"].append([h["epoch_seconds"] for h in history])
            finally:
                shutdown_ray()
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {np.median(v[-1][args.warmup:]):.2f} s" for k, v in runs.items()), flush=True)
    per_round = {k: [float(np.median(epochs[args.warmup:])) for epochs in v] for k, v in runs.items()}
    # what a run costs beyond its epochs at the steady pace: Ray start-up, data streaming, checkpoints, teardown
    startup = {k: [w - args.epochs * m for w, m in zip(walls[k], per_round[k])] for k in runs}
    med = {k: float(np.median(v)) for k, v in per_round.items()}
    record = {"config": args.config, "images": args.images, "image_size": args.size, "patch_size": args.patch,
              "batch": args.batch, "model": args.model, "ray_start": "activessf.runtime.init_ray",
              "epochs": args.epochs, "warmup_epochs": args.warmup, "rounds": args.rounds, "epoch_seconds": runs,
              "run_wall_seconds": walls, "startup_seconds_per_round": startup,
              "startup_seconds": {k: round(float(np.median(v)), 2) for k, v in startup.items()},
              "median_epoch_seconds_per_round": per_round, "median_epoch_seconds": med, "profiles": profiles}
    ratios = {"ray1_over_plain": ("ray_1", "plain"), "ray2_over_ray1": ("ray_2", "ray_1"),
              "ray1_over_plain_ray_up": ("ray_1", "plain_ray_up"), "plain_ray_up_over_plain": ("plain_ray_up", "plain"),
              "plain_in_ray_task_over_plain": ("plain_in_ray_task", "plain"),
              "ray1_over_plain_in_ray_task": ("ray_1", "plain_in_ray_task")}
    for name, (num, den) in ratios.items():  # within each round, then the median round
        if num not in runs or den not in runs:
            continue
        per = [a / b for a, b in zip(per_round[num], per_round[den])]
        record[f"{name}_per_round"] = [round(x, 3) for x in per]
        record[name] = round(float(np.median(per)), 3)
    path = write("pretrain" if args.config == "micro64" else f"pretrain_{args.config}", record, args.out)
    print(table([(k, round(v, 2), round(args.images / v, 1), record["startup_seconds"][k]) for k, v in med.items()],
                (f"MAE {args.model} @{args.size}, {args.images} images", "s/epoch", "images/s", "start-up s")))
    print()
    for name in ratios:
        if name in record:
            print(f"{name}: {record[name]}x (rounds: {record[name + '_per_round']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
