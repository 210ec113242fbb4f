"""What every Ray Train worker sets up before its first step, how it is fed, and how it reports.

:func:`worker_setup`: rank and world size, the device, as many torch threads as
CPUs reserved for the worker, the seed (identical initial weights on every
worker), the AMP settings and the GradScaler. :meth:`Worker.wrap` puts a model
on the device, in DDP when there is more than one worker. :class:`ShardFeed`
batches the worker's shard; :class:`Tracker` logs to MLflow on rank 0;
:func:`report` reports an epoch (every worker calls it: it is a barrier).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import save_state
from .engine import Amp, amp_settings


@dataclass(frozen=True)
class Worker:
    rank: int
    world: int
    device: torch.device
    amp: Amp
    scaler: torch.amp.GradScaler
    nodes: tuple = ()  # the Ray node of each rank, in rank order

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` on this worker's device; DDP-wrapped (Ray Train's ``prepare_model``) when world > 1."""
        import ray.train.torch

        model.to(self.device)
        return ray.train.torch.prepare_model(model, move_to_device=False) if self.world > 1 else model


def worker_setup(seed: int, precision: str) -> Worker:
    """This Ray Train worker's rank, device, threads, seed and mixed-precision settings."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # as many torch threads as CPUs reserved for this worker
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(int(cpus), 1))
    torch.manual_seed(seed)  # identical initial weights on every worker
    use_amp, amp_dtype, use_scaler = amp_settings(precision, device)
    return Worker(ctx.get_world_rank(), ctx.get_world_size(), device, Amp(use_amp, amp_dtype, device.type),
                  torch.amp.GradScaler("cuda", enabled=use_scaler), rank_nodes(ctx.get_world_size()))


def rank_nodes(world: int) -> tuple:
    """The Ray node of every rank (one all-gather at start-up), so that a run records where it ran."""
    import torch.distributed as dist

    from ..runtime import node_id

    mine = node_id()
    if world == 1 or not dist.is_initialized():
        return (mine,)
    nodes = [None] * world
    dist.all_gather_object(nodes, mine)
    return tuple(nodes)


def report(metrics: dict, rank: int, state: Callable[[], dict] | None = None) -> None:
    """``ray.train.report(metrics)`` on every worker; with ``state``, rank 0 attaches ``state()`` as a
    checkpoint (plain tensors and numbers, :func:`checkpoint.save_state`)."""
    import ray.train

    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            save_state(tmp, **state())
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


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
