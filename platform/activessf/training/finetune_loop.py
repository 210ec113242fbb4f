"""The fine-tuning loop each Ray Train worker runs for one fold.

Same engine as pretraining (AdamW, per-step warm-up + cosine, AMP on GPU,
DDP via Ray Train, rank-0 MLflow), with layer-wise lr decay, cross-entropy
(optionally class-weighted), optional class-balanced sampling. At the end the
held-out fold's class probabilities (gathered from every worker) and, for the
final fit on all samples, the model's weights travel back in the last
checkpoint, so that nothing depends on a disk the workers and the caller share.
"""

from __future__ import annotations

import logging
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..ssl.augment import classifier_view, eval_view
from .checkpoint import save_state
from .inline import dataset_shard
from .loop import ShardFeed, Tracker, amp_settings
from .schedule import lr_at, scaled_lr, set_lr

log = logging.getLogger(__name__)


def finetune_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    from ..finetune.model import build_classifier, layer_decay_groups

    cfg = Config.model_validate(config["cfg"])
    ft = cfg.finetune
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)), 1))
    torch.manual_seed(cfg.run.seed)
    model, _ = build_classifier(ft, config["num_classes"], cfg.run.seed)
    opt = torch.optim.AdamW(layer_decay_groups(model, ft.weight_decay, ft.layer_decay), betas=(0.9, 0.999))
    use_amp, amp_dtype, use_scaler = amp_settings(ft.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    model.to(device)
    net = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    counts = torch.tensor(config["class_counts"], dtype=torch.float32)
    class_weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device) if ft.class_weights else None
    per_worker = max(ft.batch_size // world, 1)
    feed = ShardFeed(dataset_shard(config, "train"), per_worker, config.get("cache_mb", 4096),
                     seed=cfg.run.seed * 1000 + rank, prefill=True, balance_by="label" if ft.class_balanced else None)
    steps = max(config["train_rows"] // (per_worker * world), 1)
    lr = scaled_lr(ft.base_lr, ft.batch_size)
    view, tracker = classifier_view(ft.image_size), Tracker(config.get("tracking_uri"), config.get("mlflow_run_id"), rank)
    history = []
    for epoch in range(ft.epochs):
        model.train()
        started, seen, losses, correct = time.time(), 0, [], 0
        for step, batch in enumerate(feed.batches(epoch)):
            set_lr(opt, lr_at(epoch + step / steps, lr, ft.warmup_epochs, ft.epochs))
            x = torch.stack([view(img) for img in batch["image"].permute(0, 3, 1, 2)]).to(device)
            y = batch["label"].long().to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y, weight=class_weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        metrics = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                   "train_accuracy": correct / max(seen, 1), "lr": opt.param_groups[-1]["lr"],
                   "epoch_seconds": time.time() - started}
        history.append(metrics)
        tracker.metrics(metrics, epoch + 1)
        if epoch + 1 < ft.epochs:
            ray.train.report(metrics)
    result = {"loss": torch.tensor([h["loss"] for h in history])}
    if config.get("has_val", True):
        idx, probs = gather(*predict(model, dataset_shard(config, "val"), eval_view(ft.image_size), device))
        result.update(idx=torch.from_numpy(idx), probs=torch.from_numpy(probs))
    if config.get("export_model"):
        result["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            save_state(tmp, **result)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


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
