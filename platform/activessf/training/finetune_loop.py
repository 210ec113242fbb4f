"""The fine-tuning loop each Ray Train worker runs for a lane: one or more splits (folds, the final fit).

The same step as pretraining (:func:`engine.train_one_epoch`: AdamW, per-step
warm-up + cosine, AMP on GPU; DDP via Ray Train, rank-0 MLflow), with
layer-wise lr decay, cross-entropy (optionally class-weighted) and optional
class-balanced sampling. The loop's config is ``{"splits": [...]}``, each split's
dict a :class:`loop_config.FinetuneLoopConfig`; the splits are fitted one after
another in the same worker processes, each a fresh model from the same seed (what
a run of its own would train), so that a Ray Train run's start-up is paid once per
lane rather than once per split. At the end each held-out fold's class
probabilities (gathered from every worker) and, for the final fit on all samples,
the model's weights travel back in the last checkpoint (``splits``, in order), so
that nothing depends on a disk the workers and the caller share.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..ssl.augment import classifier_view, eval_view
from .engine import Schedule, classification_loss, classifier_inputs, inverse_frequency, train_one_epoch
from .inline import dataset_shard
from .loop_config import FinetuneLoopConfig
from .progress import EpochProgress
from .schedule import scaled_lr
from .worker import ShardFeed, Tracker, Worker, report, worker_setup

log = logging.getLogger(__name__)


def finetune_loop_per_worker(config: dict) -> None:
    """A lane: ``config["splits"]`` fitted one after another; the last report's checkpoint holds their results."""
    splits = [FinetuneLoopConfig.from_dict(c) for c in config["splits"]]
    w = worker_setup(splits[0].cfg.run.seed, splits[0].cfg.finetune.precision)
    results = []
    for i, lc in enumerate(splits):
        metrics, result = fit_split(lc, w, last=i == len(splits) - 1)
        results.append(result)
    report(metrics, w.rank, lambda: {"splits": results})  # every worker: the held-out predictions are gathered


def fit_split(lc: FinetuneLoopConfig, w: Worker, last: bool) -> tuple[dict, dict]:
    """One split, from the state a run of its own starts in (seed, GradScaler); reports every epoch but the
    lane's ``last`` one (whose report carries the checkpoint). Returns its last metrics and its result."""
    from ..finetune.model import build_classifier, layer_decay_groups

    ft = lc.cfg.finetune
    torch.manual_seed(lc.cfg.run.seed)
    scaler = torch.amp.GradScaler("cuda", enabled=w.scaler.is_enabled())
    model, _ = build_classifier(ft, lc.num_classes, lc.cfg.run.seed)
    opt = torch.optim.AdamW(layer_decay_groups(model, ft.weight_decay, ft.layer_decay), betas=(0.9, 0.999))
    net = w.wrap(model)
    weight = inverse_frequency(torch.tensor(lc.class_counts)).to(w.device) if ft.class_weights else None
    loss_fn = classification_loss(weight)
    per_worker = max(ft.batch_size // w.world, 1)
    feed = ShardFeed(shard(lc, "train"), per_worker, lc.cache_mb, seed=lc.cfg.run.seed * 1000 + w.rank,
                     prefill=True, balance_by="label" if ft.class_balanced else None)
    schedule = Schedule(scaled_lr(ft.base_lr, ft.batch_size), ft.warmup_epochs, ft.epochs,
                        steps_per_epoch=max(lc.train_rows // (per_worker * w.world), 1))
    prepare = classifier_inputs(classifier_view(ft.image_size), w.device)
    tracker = Tracker(lc.tracking_uri, lc.mlflow_run_id, w.rank)
    history = []
    progress = EpochProgress(ft.epochs, 0, lc.progress_label or "finetune",
                             enabled=w.rank == 0 and not lc.cfg.run.quiet)
    for epoch in range(ft.epochs):
        stats = train_one_epoch(net, opt, scaler, feed.batches(epoch), epoch, schedule, prepare, loss_fn,
                                amp=w.amp)
        metrics = {"epoch": epoch + 1, "loss": stats["loss"], "train_accuracy": stats.get("train_accuracy", 0.0),
                   "lr": opt.param_groups[-1]["lr"], "epoch_seconds": stats["epoch_seconds"]}
        progress.update(epoch, stats["loss"], metrics["lr"],
                        stats["images"] * w.world / max(stats["epoch_seconds"], 1e-9))
        history.append(metrics)
        tracker.metrics(metrics, epoch + 1)
        if not (last and epoch + 1 == ft.epochs):
            report(metrics, w.rank)
    return metrics, fold_result(model, history, lc, w)


def shard(lc: FinetuneLoopConfig, name: str):
    """This worker's share of the split's ``name`` set ("train", "val"): in memory, or the Ray dataset
    ``name + dataset_suffix`` (one lane's splits are named apart)."""
    return dataset_shard(lc.inline, name if name in lc.inline else name + lc.dataset_suffix)


def fold_result(model, history: list[dict], lc: FinetuneLoopConfig, w: Worker) -> dict:
    """What the last checkpoint carries: the loss per epoch, the held-out fold's predictions (from every
    worker) and, for the final fit, the model's weights."""
    result = {"loss": torch.tensor([h["loss"] for h in history])}
    if lc.has_val:
        idx, probs = gather(*predict(model, shard(lc, "val"), eval_view(lc.cfg.finetune.image_size), w.device))
        result.update(idx=torch.from_numpy(idx), probs=torch.from_numpy(probs))
    if lc.export_model:
        result["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return result


@torch.no_grad()
def predict(model, shard, view, device) -> tuple[np.ndarray, np.ndarray]:
    """(sample indices (n,), class probabilities (n, C)) of this worker's share of the held-out fold."""
    model.eval()
    idx, probs = [], []
    for batch in shard.iter_torch_batches(batch_size=64, drop_last=False):
        x = torch.stack([view(img) for img in batch["image"].permute(0, 3, 1, 2)]).to(device)
        probs.append(torch.softmax(model(x).float(), dim=1).cpu().numpy())
        idx.append(batch["idx"].numpy())
    return (np.concatenate(idx) if idx else np.zeros(0, np.int64),
            np.concatenate(probs) if probs else np.zeros((0, 0), np.float32))


def gather(idx: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every worker's predictions, concatenated (on every rank); itself when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return idx, probs
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (idx, probs))
    return (np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts if p[1].size]) if any(p[1].size for p in parts) else probs)
