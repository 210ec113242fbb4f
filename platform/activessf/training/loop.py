"""The pretraining loop each Ray Train worker runs (DDP: gloo on CPU, nccl on GPU).

One loop serves every SSL method: views from the method's augmentation, the
method's loss, AdamW with per-step warm-up + cosine, gradient accumulation,
AMP on GPU and the non-finite guard (all in :func:`engine.train_one_epoch`);
checkpoints every ``checkpoint_every`` epochs through ``ray.train.report``
(every worker calls it: it is a barrier), resumption from
``ray.train.get_checkpoint()``, and MLflow logging on rank 0. What it reads
from its config dict is :class:`loop_config.PretrainLoopConfig`.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_state
from .engine import Schedule, snapshot, ssl_inputs, ssl_loss, train_one_epoch
from .faults import fault_hooks
from .guard import NonFiniteGuard
from .inline import dataset_shard
from .loop_config import PretrainLoopConfig
from .optim import layer_decay_groups
from .progress import EpochProgress
from .schedule import scaled_lr
from .worker import ShardFeed, Tracker, Worker, report, worker_setup

log = logging.getLogger(__name__)


def optimizer_digest(opt: torch.optim.Optimizer) -> str:
    """Hash of the optimiser's tensors and step counts: equal states give equal digests."""
    h = hashlib.sha256()
    for pid, st in sorted(opt.state_dict()["state"].items()):
        for key in sorted(st):
            v = st[key]
            h.update(f"{pid}.{key}".encode())
            h.update(v.detach().cpu().numpy().tobytes() if torch.is_tensor(v) else repr(v).encode())
    return h.hexdigest()[:16]


@dataclass
class Resumed:
    """Where a run continues: the epoch, the history so far and the optimiser's digest (None = a fresh start)."""

    epoch: int = 0
    history: list = field(default_factory=list)
    digest: str | None = None
    placements: list = field(default_factory=list)  # per start: the epoch it started at and the ranks' nodes


def resume(checkpoint, method, opt, scaler, guard: NonFiniteGuard, rank: int) -> Resumed:
    """Load Ray Train's latest checkpoint (if any) into the method, optimiser, scaler and guard."""
    if checkpoint is None:
        return Resumed()
    with checkpoint.as_directory() as d:
        state = load_state(d)
    method.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    guard.load(state["guard"])
    run = Resumed(state["epoch"], state["history"], optimizer_digest(opt), state.get("placements", []))
    log.info("rank %d resumed at epoch %d (optimiser %s)", rank, run.epoch, run.digest)
    return run


def train_loop_per_worker(config: dict) -> None:
    timeline = {"loop_start": time.time()}  # wall clock, compared with fit()'s start by the caller
    import ray.train
    import ray.train.torch  # before the imports_done mark, as the set-up uses it

    from ..ssl import build_method
    from ..ssl.augment import make_views

    timeline["imports_done"] = time.time()
    lc = PretrainLoopConfig.from_dict(config)
    p = lc.cfg.pretrain
    w = worker_setup(lc.cfg.run.seed, p.precision)
    method = build_method(p, lc.method_class)
    groups = layer_decay_groups(method, p.weight_decay, p.layer_decay, encoder=method.encoder(),
                                skip=method.no_weight_decay())
    opt = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95))
    guard = NonFiniteGuard(lc.max_bad_steps, lc.max_rollbacks)
    run = resume(ray.train.get_checkpoint(), method, opt, w.scaler, guard, w.rank)
    run.placements.append({"from_epoch": run.epoch, "nodes": list(w.nodes)})
    model = w.wrap(method)
    views_of = make_views(method, p.image_size)
    per_worker = max(p.batch_size // (w.world * p.accum_steps), 1)
    schedule = Schedule(scaled_lr(p.base_lr, p.batch_size), p.warmup_epochs, p.epochs,
                        steps_per_epoch=max(lc.rows // (per_worker * w.world), 1))
    tracker = Tracker(lc.tracking_uri, lc.mlflow_run_id, w.rank)
    feed = ShardFeed(dataset_shard(lc.inline, "train"), per_worker, lc.cache_mb, seed=lc.cfg.run.seed * 1000 + w.rank)
    hooks = fault_hooks(lc.inject_nan_steps, lc.fail_at_epoch, lc.marker, w.rank, w.world,
                        lc.pause_at_epoch, lc.pause_seconds)
    prepare = ssl_inputs(views_of, w.device)
    good = snapshot(method, opt, w.scaler)  # the state a rollback returns to
    progress = EpochProgress(p.epochs, run.epoch, lc.progress_label or f"pretrain {p.method}",
                             enabled=w.rank == 0 and not lc.cfg.run.quiet)
    timeline["model_ready"] = time.time()

    for epoch in range(run.epoch, p.epochs):
        stats = train_one_epoch(model, opt, w.scaler, feed.batches(epoch), epoch, schedule, prepare, ssl_loss,
                                amp=w.amp, accum_steps=p.accum_steps, guard=guard, last_good=good,
                                after_step=method.after_step, hooks=hooks, timeline=timeline)
        metrics = epoch_metrics(stats, epoch, opt, guard, w.world, run, lc.report_constants)
        progress.update(epoch, metrics["loss"], metrics["lr"], metrics["images_per_s"])
        if w.rank == 0 and lc.probe:
            metrics.update(probe_metrics(method, lc.probe, p.image_size, w.device))
        logged = {k: v for k, v in metrics.items() if k != "resumed_optimizer"}
        run.history.append(logged)
        tracker.metrics(logged, epoch + 1)
        last = epoch + 1 == p.epochs
        if w.rank == 0 and lc.visualise_every and ((epoch + 1) % lc.visualise_every == 0 or last):
            _visualise(method, views_of, lc.sample_images, epoch + 1, tracker, lc.viz_dir)
        if (epoch + 1) % p.checkpoint_every == 0 or last:
            good = snapshot(method, opt, w.scaler)
            report(metrics, w.rank, partial(checkpoint_state, method, opt, w, guard, epoch + 1, run, timeline))
        else:
            report(metrics, w.rank)


def epoch_metrics(stats: dict, epoch: int, opt, guard: NonFiniteGuard, world: int, run: Resumed,
                  constants: dict) -> dict:
    """What every epoch reports (to Ray Train, MLflow and the history)."""
    elapsed = stats["epoch_seconds"]
    return {"epoch": epoch + 1, "loss": stats["loss"], "lr": max(g["lr"] for g in opt.param_groups),  # full rate
            "images_per_s": stats["images"] * world / max(elapsed, 1e-9), "skipped_steps": guard.skipped,
            "rollbacks": guard.rollbacks, "epoch_seconds": elapsed, "lr_factor": guard.lr_factor,
            "cuda_initialized": int(torch.cuda.is_initialized()), "torch_threads": torch.get_num_threads(),
            "resumed_optimizer": run.digest or "", **constants}


def checkpoint_state(method, opt, w: Worker, guard: NonFiniteGuard, epoch: int, run: Resumed,
                     timeline: dict) -> dict:
    """A checkpoint's contents (``stages.pretrain`` reads the encoder, guard, history and timeline)."""
    return {"model": method.state_dict(), "optimizer": opt.state_dict(), "scaler": w.scaler.state_dict(),
            "guard": guard.state(), "epoch": epoch, "history": run.history, "encoder": method.export_encoder(),
            "optimizer_digest": optimizer_digest(opt), "timeline": timeline, "placements": run.placements,
            "resumed": {"epoch": run.epoch, "optimizer_digest": run.digest or ""}}


@torch.no_grad()
def probe_metrics(method, probe: dict, size: int, device) -> dict:
    """The sweep's objective: a probe on the encoder's frozen features of held-out labelled cells.

    ``probe``: images uint8 (N, S, S, 3), labels (N,), test (N,) bool (the held-out fold),
    num_classes, kind (``linear`` or ``knn``). Returns ``probe_pr_auc`` and friends.
    """
    from ..evaluation.probe import probe_scores
    from ..ssl.augment import eval_view

    encoder, view = method.encoder(), eval_view(size)
    was_training = encoder.training
    encoder.eval()
    x = torch.as_tensor(np.asarray(probe["images"])).permute(0, 3, 1, 2)
    feats = torch.cat([encoder(torch.stack([view(im) for im in x[i:i + 64]]).to(device)).float().cpu()
                       for i in range(0, len(x), 64)]).numpy()
    encoder.train(was_training)
    y, test = np.asarray(probe["labels"]), np.asarray(probe["test"], bool)
    scores = probe_scores(feats[~test], y[~test], feats[test], y[test], probe["num_classes"], probe["kind"])
    return {f"probe_{k}": v for k, v in scores.items()}


@torch.no_grad()
def _visualise(method, views_of, sample, epoch: int, tracker: Tracker, viz_dir: str | None = None) -> None:
    """Originals / masked / reconstructions (MAE-like methods) as a PNG, logged to MLflow
    (and kept in ``viz_dir`` when this worker can write there, e.g. on a single machine)."""
    if sample is None or not hasattr(method, "reconstruction"):
        return
    from ..viz import reconstruction_grid

    method.eval()
    device = next(method.parameters()).device
    x = torch.as_tensor(np.asarray(sample)).to(device).permute(0, 3, 1, 2).contiguous()
    torch.manual_seed(epoch)
    imgs = views_of(x)[0]
    try:
        out = method([imgs])
    except ValueError as exc:  # e.g. too few sample images for the method: no picture, the run goes on
        log.warning("no reconstruction picture at epoch %d: %s", epoch, exc)
        return
    finally:
        method.train()
    masked, recon = method.reconstruction(imgs, out.extras["pred"], out.extras["mask"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"reconstruction_epoch{epoch:04d}.png"
        reconstruction_grid(imgs, masked, recon, path)
        tracker.artifact(path, "reconstructions")
        if viz_dir:
            try:
                Path(viz_dir).mkdir(parents=True, exist_ok=True)
                (Path(viz_dir) / path.name).write_bytes(path.read_bytes())
            except OSError:
                pass
