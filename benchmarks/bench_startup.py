"""Ray Train start-up: seconds from ``fit()`` to the first training step, and where they go.

    .venv/bin/python benchmarks/bench_startup.py [--rounds 3]

On one local Ray that is already running (started once, before the first
round), each round runs four 1-worker Ray Train runs, interleaved:

- ``noop_ray_defaults``: a TorchTrainer whose loop only reports, with Ray
  Train's default control loop (workers polled every 2 s, preemption watcher).
- ``noop_platform``: the same loop with the platform's settings
  (``activessf.runtime.TRAIN_ENV``/``LOCAL_TRAIN_ENV``).
- ``pretrain_before``: ``run_pretrain`` (MAE ViT-micro, 32 px, one epoch) as it
  ran before these changes: Ray Data decodes the crops and streams them to
  the worker (``run.inline_data_mb=0``) and Ray Train's default control loop.
- ``pretrain_platform``: ``run_pretrain`` with the platform's defaults (the
  crops travel in memory; the settings above).

Each run's phases come from Ray's own task events (the state API) and from the
marks the pretraining loop records (``record["startup"]``):
``controller_process`` (fit() until the controller actor's process runs),
``controller_init`` (its constructor, which imports torch through
TorchConfig), ``worker_group`` (synchronisation actor, placement-group cleaner
and the worker, each a new process), ``train_context`` (the worker's context;
its torch import), then the loop's own ``imports`` (timm, the SSL method),
``model`` (model, optimiser, tracker, data) and ``first_batch``. JSON goes to
``benchmarks/results/startup.json``; the median over rounds is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write  # noqa: E402

RAY_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}
TINY = ["pretrain.model=micro", "pretrain.image_size=32", "pretrain.patch_size=8", "pretrain.batch_size=8",
        "pretrain.epochs=1", "pretrain.warmup_epochs=0", "pretrain.num_workers=1", "pretrain.source=filtered"]


def noop_loop(config: dict) -> None:
    import ray.train

    Path(config["mark"]).write_text(json.dumps({"loop_start": time.time()}))
    ray.train.report({"done": 1})


def run_noop(root: Path, tag: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    mark = root / f"{tag}.json"
    trainer = TorchTrainer(noop_loop, train_loop_config={"mark": str(mark)},
                           scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name=tag, storage_path=str(root / "ray_results")))
    started = time.time()
    trainer.fit()
    ended = time.time()
    loop = json.loads(mark.read_text())["loop_start"]
    return {"started": started, "ended": ended, "marks": {"loop_start": loop}, "first_step": loop}


def phases(t0: float, t1: float) -> dict:
    """Start-up phases of the one Train run between t0 and t1, from Ray's task events (seconds after t0)."""
    from ray.util.state import list_tasks

    first: dict[str, dict] = {}
    for task in list_tasks(detail=True, limit=10_000, raise_on_missing_output=False):
        events = {e["state"]: e["created_ms"] / 1000 - t0 for e in (task.events or [])}
        if not events or min(events.values()) < -0.5 or max(events.values()) > t1 - t0 + 1:
            continue
        if task.name not in first or min(events.values()) < min(first[task.name].values()):
            first[task.name] = events
    ctrl = first.get("TrainController.__init__", {})
    group = [first.get(n, {}).get("FINISHED") for n in
             ("SynchronizationActor.__init__", "PlacementGroupCleaner.__init__", "RayTrainWorker.__init__")]
    ctx = first.get("RayTrainWorker.init_train_context", {})
    run_fn = first.get("RayTrainWorker.run_train_fn", {})
    if not (ctrl and ctx and run_fn) or None in group:
        return {}
    return {"controller_process": ctrl["RUNNING"], "controller_init": ctrl["FINISHED"] - ctrl["RUNNING"],
            "worker_group": max(group) - ctrl["FINISHED"], "train_context": ctx["FINISHED"] - ctx["RUNNING"],
            "until_train_fn": run_fn["RUNNING"]}


def measure(root: Path, variant: str, rnd: int) -> dict:
    tag = f"{variant}-{rnd}"
    env = RAY_DEFAULTS if variant.endswith(("ray_defaults", "before")) else {}
    saved = {k: os.environ.get(k) for k in RAY_DEFAULTS}
    os.environ.update(env)
    try:
        if variant.startswith("noop"):
            r = run_noop(root, tag)
            fit = r["started"]
            loop_marks = {"loop_start": r["marks"]["loop_start"] - fit}
        else:
            from activessf.config import load_config
            from activessf.stages.pretrain import run_pretrain

            cfg = load_config(overrides=TINY + [f"run.work_dir={root / 'work'}",
                                                f"run.inline_data_mb={0 if variant.endswith('before') else 256}"])
            t = time.time()
            rec = run_pretrain(cfg, root / tag, regions=root / "regions", name=tag)
            ended = time.time()
            fit = rec["startup"]["fit_started"]
            loop_marks = {k.removeprefix("fit_to_"): v for k, v in rec["startup"].items() if k.startswith("fit_to_")}
            r = {"started": t, "ended": ended}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    time.sleep(2)  # task events reach the state API asynchronously
    ph = phases(fit, r["ended"] + 1)
    out = {"variant": variant, "round": rnd, "fit_to_first_step": loop_marks.get("first_step", loop_marks["loop_start"]),
           "fit_to_loop_start": loop_marks["loop_start"], "fit_to_return": r["ended"] - fit,
           "before_fit": fit - r["started"], "phases": ph}
    if "imports_done" in loop_marks:
        out["phases"].update(imports=loop_marks["imports_done"] - loop_marks["loop_start"],
                             model=loop_marks["model_ready"] - loop_marks["imports_done"],
                             first_batch=loop_marks["first_step"] - loop_marks["model_ready"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from activessf.config import SynthConfig, load_config
    from activessf.data import synth
    from activessf.runtime import init_ray, shutdown_ray
    from activessf.stages.filter import run_filter
    from activessf.tracking import init_mlflow

    variants = ["noop_ray_defaults", "noop_platform", "pretrain_before", "pretrain_platform"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth.generate(SynthConfig(images=6, labelled=0, width=512, height=384, workers=1), root / "data",
                       progress=False)
        init_ray()
        run_filter(load_config(overrides=["filter.min_box=40"]), str(root / "data" / "smears"), root / "regions")
        init_mlflow(root / "work", "bench-startup")
        time.sleep(5)  # the local Ray settles (idle workers, dashboard) before the first round
        runs = [measure(root, v, r) for r in range(args.rounds) for v in variants]
        shutdown_ray()

    summary = {}
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        med = lambda key: round(statistics.median(r[key] for r in mine), 2)  # noqa: E731
        keys = sorted({k for r in mine for k in r["phases"]})
        summary[v] = {"fit_to_first_step": med("fit_to_first_step"), "fit_to_return": med("fit_to_return"),
                      "before_fit": med("before_fit"),
                      "phases": {k: round(statistics.median(r["phases"][k] for r in mine if k in r["phases"]), 2)
                                 for k in keys}}
    path = write("startup", {"rounds": args.rounds, "summary": summary, "runs": runs})
    order = ["controller_process", "controller_init", "worker_group", "train_context", "imports", "model",
             "first_batch"]
    rows = [(v, s["before_fit"], *[s["phases"].get(k, "-") for k in order], s["fit_to_first_step"],
             s["fit_to_return"]) for v, s in summary.items()]
    print(table(rows, ("variant", "before fit", *order, "fit->first step", "fit->return")))
    print(f"(medians over {args.rounds} rounds, seconds; JSON: {path})")


if __name__ == "__main__":
    main()
