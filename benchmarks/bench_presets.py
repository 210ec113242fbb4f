"""What a preset costs: measured per-image training times on this machine, then the expected time of a whole
`pipeline` run on a node with more cores, with the arithmetic written out.

    .venv/bin/python benchmarks/bench_presets.py --preset wbc,cpu [--regions 3000] [--labelled 800]
        [--fields 1000] [--cores 8] [--selected-share 0.68]

For the preset's pretraining model (``pretrain.method`` at ``pretrain.model`` / ``image_size``), the classifier
fine-tuning builds from it, and the encoder's embedding pass, the script times a few optimiser steps (forward,
backward, AdamW: the platform's own ``train_one_epoch``) with 1 and with 2 torch threads after a warm-up step.
The speed-up from 1 to 2 threads is taken as the speed-up of every further doubling of cores: a node with
``--cores`` C runs ``log2(C)`` doublings, so seconds per image there = seconds per image with 1 thread /
speedup^log2(C). That is an assumption (more cores usually scale worse than the first two, and fold-parallel
fine-tuning better), so the table also gives the time at 50% parallel efficiency beyond 2 cores (8 cores
2x faster than 2, not 4x); the JSON records both beside the measurements.

The workload is counted in images through each stage:
- filtering: ``--fields`` fields at the measured 124 fields/s per core of docs/benchmarks.md (BCCD-sized);
- bootstrap round 0: every region for ``select.bootstrap_epochs``; embedding: regions + labelled cells, twice
  (round 0's encoder; then prototypes and selection reuse the vectors);
- pretraining: ``--selected-share`` of the regions (BCCD's measured label-free selection kept 255 of 374:
  0.68) for ``pretrain.epochs``;
- fine-tuning: ``evaluate.folds`` folds of (k-1)/k of the labelled cells for ``finetune.epochs``, plus the
  final fit on all of them, plus one evaluation pass per fold;
- a fixed 25 s per Ray Train run (bootstrap, pretraining, one per fold, the final fit) for start-up
  (docs/startup.md).
Writes ``benchmarks/results/presets-<preset>.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write  # noqa: E402

FILTER_FIELDS_PER_CORE_S = 124.0  # docs/benchmarks.md: Ray Data filtering, 1 CPU, BCCD-sized fields
RAY_TRAIN_STARTUP_S = 25.0  # docs/startup.md: one-time cost of a Ray Train run beyond its epochs


def time_steps(model, prepare, loss_fn, batch: int, size: int, steps: int, threads: int) -> float:
    """Seconds per image of ``steps`` optimiser steps after one warm-up step, with ``threads`` torch threads."""
    import torch

    from activessf.training.engine import Schedule, train_one_epoch

    torch.set_num_threads(threads)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    gen = torch.Generator().manual_seed(0)

    def batches(n):
        for _ in range(n):
            yield {"image": torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=gen),
                   "label": torch.randint(0, 11, (batch,), generator=gen)}

    schedule = Schedule(1e-4, 0, 1, steps + 1)
    train_one_epoch(model, opt, scaler, batches(1), 0, schedule, prepare, loss_fn)
    t0 = time.perf_counter()
    train_one_epoch(model, opt, scaler, batches(steps), 0, schedule, prepare, loss_fn)
    return (time.perf_counter() - t0) / (steps * batch)


def time_embed(encoder, size: int, batch: int, steps: int, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(batch, 3, size, size)
    encoder.eval()
    with torch.no_grad():
        encoder(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            encoder(x)
    return (time.perf_counter() - t0) / (steps * batch)


def measure(cfg, steps: int) -> dict:
    """Seconds per image for 1 and 2 threads: pretraining step, fine-tuning step, embedding forward."""
    import torch

    from activessf.finetune.model import create_classifier
    from activessf.ssl import build_method
    from activessf.ssl.augment import classifier_view, make_views
    from activessf.ssl.vit import vit_spec
    from activessf.training.engine import classification_loss, classifier_inputs, ssl_inputs, ssl_loss

    p = cfg.pretrain
    cpu = torch.device("cpu")
    batch = min(p.batch_size, 64)
    out = {}
    for threads in (1, 2):
        torch.manual_seed(0)
        method = build_method(p)
        pre = time_steps(method, ssl_inputs(make_views(method, p.image_size), cpu), ssl_loss, batch, p.image_size,
                         steps, threads)
        spec = vit_spec(p)
        clf = create_classifier(spec["timm_name"], spec["timm_kwargs"], 11, cfg.finetune.drop_path)
        fine = time_steps(clf, classifier_inputs(classifier_view(p.image_size), cpu), classification_loss(),
                          min(cfg.finetune.batch_size, 64), p.image_size, steps, threads)
        emb = time_embed(method.encoder(), p.image_size, 64, steps, threads)
        out[threads] = {"pretrain_s_per_image": pre, "finetune_s_per_image": fine, "embed_s_per_image": emb}
    return out


def expected(cfg, m: dict, args, efficiency: float | None = None) -> tuple[list[tuple], dict]:
    """Per-stage images, seconds per image on ``args.cores`` cores and expected seconds. ``efficiency`` None:
    every doubling of cores gives the measured 1->2 thread speed-up; else the 2-thread time scaled to the
    cores at that parallel efficiency beyond 2 (0.5: 8 cores are 2x faster than 2, not 4x)."""
    speedup = {k: m[1][k] / m[2][k] for k in m[1]}
    if efficiency is None:
        per_image = {k: m[1][k] / speedup[k] ** math.log2(args.cores) for k in m[1]}
    else:
        per_image = {k: m[2][k] / max(args.cores / 2 * efficiency, 1.0) for k in m[2]}
    k, labelled, regions = cfg.evaluate.folds, args.labelled, args.regions
    selected = round(regions * args.selected_share)
    final = 1 if cfg.finetune.final_fit else 0
    work = [
        ("filter", args.fields, args.fields / (FILTER_FIELDS_PER_CORE_S * args.cores), 0),
        ("bootstrap pretraining", regions * cfg.select.bootstrap_epochs,
         regions * cfg.select.bootstrap_epochs * per_image["pretrain_s_per_image"], 1),
        ("embedding (x2)", 2 * (regions + labelled), 2 * (regions + labelled) * per_image["embed_s_per_image"], 0),
        ("pretraining", selected * cfg.pretrain.epochs,
         selected * cfg.pretrain.epochs * per_image["pretrain_s_per_image"], 1),
        ("fine-tuning", round((k * (k - 1) / k + final) * labelled * cfg.finetune.epochs),
         (k * (k - 1) / k + final) * labelled * cfg.finetune.epochs * per_image["finetune_s_per_image"]
         + labelled * per_image["embed_s_per_image"] * 3, k + final),
    ]
    total = sum(sec + r * RAY_TRAIN_STARTUP_S for _, _, sec, r in work)
    return work, {"speedup_1_to_2_threads": speedup, "s_per_image_at_cores": per_image,
                  "stages": [{"stage": s, "images": i, "seconds": round(sec + r * RAY_TRAIN_STARTUP_S, 1),
                              "ray_train_runs": r} for s, i, sec, r in work],
                  "total_minutes": round(total / 60, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="wbc,cpu")
    ap.add_argument("--regions", type=int, default=3000)
    ap.add_argument("--labelled", type=int, default=800)
    ap.add_argument("--fields", type=int, default=1000)
    ap.add_argument("--cores", type=int, default=8)
    ap.add_argument("--selected-share", type=float, default=0.68)
    ap.add_argument("--steps", type=int, default=4, help="timed optimiser steps per measurement")
    args = ap.parse_args()

    from activessf.config import load_config

    cfg = load_config(preset=args.preset)
    m = measure(cfg, args.steps)
    print(table([(f"{t} thread(s)", *(f"{v * 1000:.2f}" for v in m[t].values())) for t in m],
                ("threads", "pretrain ms/img", "fine-tune ms/img", "embed ms/img")))
    work, record = expected(cfg, m, args)
    _, half = expected(cfg, m, args, efficiency=0.5)
    rows = [(w[0], f"{w[1]:,}", f"{a['seconds'] / 60:.1f}", f"{b['seconds'] / 60:.1f}")
            for w, a, b in zip(work, record["stages"], half["stages"])]
    rows.append(("total", "", f"{record['total_minutes']:.1f}", f"{half['total_minutes']:.1f}"))
    print(f"\nexpected on {args.cores} cores ({args.regions:,} regions, {args.labelled:,} labelled cells, "
          f"{args.fields:,} fields), in minutes:")
    print(table(rows, ("stage", "images", "measured scaling", "50% efficiency beyond 2 cores")))
    path = write(f"presets-{args.preset.replace(',', '-')}",
                 {"args": vars(args), "measured": m, **record, "at_half_efficiency": half,
                  "assumptions": {"filter_fields_per_core_s": FILTER_FIELDS_PER_CORE_S,
                                  "ray_train_startup_s": RAY_TRAIN_STARTUP_S,
                                  "scaling": "each doubling of cores gives the measured 1->2 thread speed-up"}})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
