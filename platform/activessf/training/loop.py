"""The training loop each Ray Train worker runs (DDP: gloo on CPU, nccl on GPU).

One loop serves every SSL method: views from the method's augmentation, the
method's loss, AdamW with per-step warm-up + cosine, gradient accumulation,
AMP on GPU, the non-finite guard, checkpoints every ``checkpoint_every``
epochs through ``ray.train.report`` (every worker calls it: it is a barrier),
resumption from ``ray.train.get_checkpoint()``, and MLflow logging on rank 0.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from .checkpoint import load_state, save_state
from .guard import NonFiniteGuard
from .inline import dataset_shard
from .optim import param_groups
from .schedule import lr_at, scaled_lr, set_lr

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


def amp_settings(precision: str, device: torch.device) -> tuple[bool, torch.dtype, bool]:
    """(autocast on?, its dtype, use a GradScaler?) for the configured precision on this device."""
    if device.type != "cuda":
        return precision == "bf16", torch.bfloat16, False
    if precision in ("auto", "bf16"):
        bf16 = torch.cuda.is_bf16_supported()
        return True, torch.bfloat16 if bf16 else torch.float16, not bf16
    if precision == "fp16":
        return True, torch.float16, True
    return False, torch.float32, False


def all_finite(value: torch.Tensor) -> bool:
    """True only if the loss is finite on every worker (so all workers skip or step together)."""
    import torch.distributed as dist

    flag = torch.tensor([1.0 if torch.isfinite(value).all() else 0.0], device=value.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:  # one worker agrees with itself
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class Tracker:
    """MLflow on rank 0 only; a no-op elsewhere or without a run id."""

    def __init__(self, uri: str | None, run_id: str | None, rank: int):
        self.on = bool(uri and run_id and rank == 0)
        self.run_id = run_id
        if self.on:  # importing mlflow and opening its store take ~3 s: done beside the first steps
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow-client")
            self._client = self._pool.submit(_mlflow_client, uri)

    @property
    def client(self):
        """The client, once the background thread has made it (only then may this thread import mlflow:
        two threads importing mlflow's protobuf modules at once can fail to build their descriptors)."""
        return self._client.result()

    def metrics(self, values: dict, step: int) -> None:
        if self.on:  # one batched write per epoch, not one per metric
            client = self.client
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, step) for k, v in values.items()
                     if isinstance(v, (int, float)) and math.isfinite(v)]
            client.log_batch(self.run_id, metrics=batch)

    def artifact(self, path: Path, folder: str | None = None) -> None:
        if self.on:
            self.client.log_artifact(self.run_id, str(path), folder)


def _mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def train_loop_per_worker(config: dict) -> None:
    timeline = {"loop_start": time.time()}  # wall clock, compared with fit()'s start by the caller
    import ray
    import ray.train
    import ray.train.torch

    from ..ssl import build_method
    from ..ssl.augment import make_views

    timeline["imports_done"] = time.time()

    cfg = Config.model_validate(config["cfg"])
    p = cfg.pretrain
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # as many torch threads as CPUs reserved for this worker
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(int(cpus), 1))
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every worker
    method = build_method(p)
    groups = param_groups(method, p.weight_decay, skip=method.no_weight_decay())
    opt = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95))
    use_amp, amp_dtype, use_scaler = amp_settings(p.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    guard = NonFiniteGuard(config.get("max_bad_steps", 5), config.get("max_rollbacks", 3))
    start_epoch, history, resumed_digest, resumed_epoch = 0, [], None, 0

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_state(d)
        method.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        guard.load(state["guard"])
        start_epoch, history = state["epoch"], state["history"]
        resumed_digest, resumed_epoch = optimizer_digest(opt), start_epoch
        log.info("rank %d resumed at epoch %d (optimiser %s)", rank, start_epoch, resumed_digest)
    method.to(device)
    model = ray.train.torch.prepare_model(method, move_to_device=False) if world > 1 else method
    views_of = make_views(method, p.image_size)
    per_worker = max(p.batch_size // (world * p.accum_steps), 1)
    steps_per_epoch = max(config["rows"] // (per_worker * world), 1)
    lr = scaled_lr(p.base_lr, p.batch_size)
    tracker = Tracker(config.get("tracking_uri"), config.get("mlflow_run_id"), rank)
    feed = ShardFeed(dataset_shard(config, "train"), per_worker, config.get("cache_mb", 2048),
                     seed=cfg.run.seed * 1000 + rank)
    inject = set(config.get("inject_nan_steps", []))
    fail_at = config.get("fail_at_epoch")
    good = _snapshot(method, opt, scaler)  # the state a rollback returns to
    timeline["model_ready"] = time.time()

    for epoch in range(start_epoch, p.epochs):
        if fail_at is not None and epoch == fail_at and rank == world - 1 and _first_time(f"{config['marker']}-{epoch}"):
            time.sleep(3)  # test hook: a worker dies mid-run, once, a while after the last checkpoint
            os._exit(1)
        method.train()
        started, seen, losses, step = time.time(), 0, [], 0
        for step, batch in enumerate(feed.batches(epoch)):
            timeline.setdefault("first_batch", time.time())
            x = batch["image"].to(device).permute(0, 3, 1, 2).contiguous()
            views = views_of(x)
            global_step = epoch * steps_per_epoch + step
            set_lr(opt, lr_at(epoch + step / steps_per_epoch, lr, p.warmup_epochs, p.epochs) * guard.lr_factor)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                out = model(views)
            loss = out.loss.float()
            if global_step in inject:
                loss = loss * float("nan")
            action = guard.check(loss.item() if all_finite(loss) else float("nan"), global_step)
            if action == "rollback":
                _restore(good, method, opt, scaler)
                log.warning("rank %d: non-finite losses; rolled back, lr x%g", rank, guard.lr_factor)
            if action != "step":
                opt.zero_grad(set_to_none=True)
                continue
            scaler.scale(loss / p.accum_steps).backward()
            if (step + 1) % p.accum_steps == 0:
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                method.after_step(min((global_step + 1) / (steps_per_epoch * p.epochs), 1.0))
            losses.append(loss.item())
            seen += x.shape[0]
            timeline.setdefault("first_step", time.time())
        elapsed = time.time() - started
        metrics = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                   "lr": opt.param_groups[0]["lr"], "images_per_s": seen * world / max(elapsed, 1e-9),
                   "skipped_steps": guard.skipped, "rollbacks": guard.rollbacks, "epoch_seconds": elapsed,
                   "lr_factor": guard.lr_factor, "cuda_initialized": int(torch.cuda.is_initialized()),
                   "torch_threads": torch.get_num_threads(),
                   "resumed_optimizer": resumed_digest or "", **config.get("report_constants", {})}
        if rank == 0 and config.get("probe"):
            metrics.update(probe_metrics(method, config["probe"], p.image_size, device))
        history.append({k: v for k, v in metrics.items() if k != "resumed_optimizer"})
        tracker.metrics({k: v for k, v in metrics.items() if k != "resumed_optimizer"}, epoch + 1)
        last = epoch + 1 == p.epochs
        if rank == 0 and config.get("visualise_every") and ((epoch + 1) % config["visualise_every"] == 0 or last):
            _visualise(method, views_of, shard_sample(config), epoch + 1, tracker, config.get("viz_dir"))
        if (epoch + 1) % p.checkpoint_every == 0 or last:
            good = _snapshot(method, opt, scaler)
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    save_state(tmp, model=method.state_dict(), optimizer=opt.state_dict(),
                               scaler=scaler.state_dict(), guard=guard.state(), epoch=epoch + 1, history=history,
                               encoder=method.export_encoder(), optimizer_digest=optimizer_digest(opt),
                               timeline=timeline,
                               resumed={"epoch": resumed_epoch, "optimizer_digest": resumed_digest or ""})
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt)
        else:
            ray.train.report(metrics)


class ShardFeed:
    """Batches (dicts of tensors) of this worker's shard, per epoch.

    The first epoch streams from Ray Data and keeps the tensors when the shard
    fits in ``cache_mb``; later epochs then draw shuffled batches from memory
    (a seeded permutation per epoch, or class-balanced sampling with
    ``balance_by``) instead of re-reading the object store. ``prefill`` loads
    the cache before the first epoch. Larger shards stream every epoch.
    """

    def __init__(self, shard, batch_size: int, cache_mb: float, seed: int, prefill: bool = False,
                 balance_by: str | None = None):
        self.shard, self.batch_size, self.limit, self.seed = shard, batch_size, cache_mb * 2**20, seed
        self.balance_by = balance_by
        self.cached: dict[str, torch.Tensor] | None = None
        if prefill:
            for _ in self.batches(-1):
                pass

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + epoch)
        n = len(next(iter(self.cached.values())))
        if self.balance_by is None:
            return torch.randperm(n, generator=g)
        y = self.cached[self.balance_by].long()
        weight = 1.0 / torch.bincount(y).float()[y]  # every class equally likely
        return torch.multinomial(weight, n, replacement=True, generator=g)

    def batches(self, epoch: int):
        if self.cached is not None:
            order = self._order(epoch)
            for i in range(0, len(order) - self.batch_size + 1, self.batch_size):
                yield {k: v[order[i : i + self.batch_size]] for k, v in self.cached.items()}
            return
        kept, size = [], 0
        for batch in self.shard.iter_torch_batches(batch_size=self.batch_size, drop_last=epoch >= 0):
            if kept is not None:
                size += sum(v.numel() * v.element_size() for v in batch.values())
                kept = kept + [batch] if size <= self.limit else None
            if epoch >= 0:
                yield batch
        if kept:
            self.cached = {k: torch.cat([b[k] for b in kept]) for k in kept[0]}
            if epoch < 0:  # prefilled: the first real epoch uses the cache
                return


def _snapshot(method, opt, scaler) -> dict:
    return {"model": copy.deepcopy(method.state_dict()), "optimizer": copy.deepcopy(opt.state_dict()),
            "scaler": scaler.state_dict()}


def _restore(state: dict, method, opt, scaler) -> None:
    method.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])


def _first_time(marker: str) -> bool:
    path = Path(marker)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("failed once")
    return True


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


def shard_sample(config: dict) -> np.ndarray | None:
    return config.get("sample_images")


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
