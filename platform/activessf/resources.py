"""One function turns the cluster and the configuration into a stage's resources: :func:`plan`.

No other module does this arithmetic. Data stages (filter, embed) get tasks or
actors; training stages (pretrain, finetune, sweep trials) get Ray Train workers
and how many runs go at once. GPUs are used when the cluster has them unless
the stage's ``use_gpu`` says otherwise; on CPU the workers share the machine's
cores.

On a cluster whose nodes carry a type label (``placement.label``, e.g. ``ray start
--labels node-type=cpu``), each stage's work goes to the nodes of its type
(``placement.data``, ``.store``, ``.train``) and is sized by those nodes alone;
when the cluster has no node of that type, the work runs anywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional

from .config import Config

log = logging.getLogger(__name__)

STAGES = ("filter", "embed", "predict", "pretrain", "finetune", "sweep-selection", "sweep-filter", "store")


@dataclass(frozen=True)
class Node:
    node_id: str
    labels: tuple  # (key, value) pairs
    cpus: int
    gpus: int

    def label(self, key: str) -> Optional[str]:
        return dict(self.labels).get(key)


@dataclass(frozen=True)
class Cluster:
    cpus: int
    gpus: int
    nodes: tuple = ()  # Node, alive ones; empty when unknown (a Cluster made by hand)

    def typed(self, label: str, kind: str) -> tuple["Cluster", Optional[dict]]:
        """The part of the cluster whose nodes have ``label`` = ``kind``, and the label selector that
        sends work there; the whole cluster and no selector when no node has that type (or ``kind`` is "")."""
        if not kind or not label:
            return self, None
        mine = [n for n in self.nodes if n.label(label) == kind]
        if not mine:
            types = sorted({n.label(label) for n in self.nodes} - {None})
            if types:  # a typed cluster without this type: most likely a typo in the config
                log.warning("no node has %s=%s (the cluster's types: %s); the work runs on any node",
                            label, kind, ", ".join(types))
            return self, None
        return Cluster(sum(n.cpus for n in mine), sum(n.gpus for n in mine), tuple(mine)), {label: kind}


@dataclass(frozen=True)
class Resources:
    """``workers`` per run (Ray Train workers; for data stages, tasks or actors at once), each with
    ``cpus_per_worker`` CPUs (and one GPU when ``use_gpu``), ``concurrent`` runs at once (folds or
    trials; 1 for the other stages), ``blocks`` the data stages split their input into."""

    use_gpu: bool
    workers: int
    cpus_per_worker: float
    concurrent: int = 1
    blocks: int = 1
    label_selector: Optional[dict] = None  # the node type the work must run on (None: any node)

    def scaling_config(self):
        """Ray Train's ScalingConfig for one run."""
        from ray.train import ScalingConfig

        return ScalingConfig(num_workers=self.workers, use_gpu=self.use_gpu, label_selector=self.label_selector,
                             resources_per_worker=None if self.use_gpu else {"CPU": self.cpus_per_worker})

    def remote_args(self) -> dict:
        """Keyword arguments for ``map_batches`` / ``.options``: the label selector, when there is one."""
        return {"label_selector": dict(self.label_selector)} if self.label_selector else {}


def cluster() -> Cluster:
    """The CPUs and GPUs of the Ray cluster this process is attached to, and its alive nodes."""
    import ray

    res = ray.cluster_resources()
    nodes = tuple(Node(n["NodeID"], tuple(sorted((n.get("Labels") or {}).items())),
                       int(n["Resources"].get("CPU", 0)), int(n["Resources"].get("GPU", 0)))
                  for n in ray.nodes() if n.get("Alive"))
    return Cluster(max(int(res.get("CPU", 1)), 1), int(res.get("GPU", 0)), nodes)


def plan(stage: str, cfg: Config, where: Optional[Cluster] = None, cpus_per_task: float = 1.0) -> Resources:
    """The resources of ``stage`` (one of ``STAGES``) on ``where`` (default: the attached cluster)."""
    whole = where or cluster()
    res = _plan(stage, cfg, whole, cpus_per_task)
    kind = {"store": cfg.placement.store}.get(stage, cfg.placement.train if res.use_gpu or stage in TRAIN
                                              else cfg.placement.data)
    part, selector = whole.typed(cfg.placement.label, kind)
    if selector is None:
        return res
    return replace(_plan(stage, cfg, replace(part, cpus=max(part.cpus, 1)), cpus_per_task), label_selector=selector)


TRAIN = ("pretrain", "finetune", "sweep-selection")


def _plan(stage: str, cfg: Config, c: Cluster, cpus_per_task: float) -> Resources:
    if stage == "store":  # the prototype store actor: a quarter CPU (it serves small batched calls)
        return Resources(False, 1, 0.25)
    if stage == "filter":
        return Resources(False, max(int(c.cpus / cpus_per_task), 1), cpus_per_task, blocks=4 * c.cpus)
    if stage == "embed":  # an actor per GPU, else per CPU
        return Resources(c.gpus > 0, c.gpus or c.cpus, 1, blocks=4 * (c.gpus or c.cpus))
    if stage == "predict":  # an actor per GPU (the model stays on it), else CPU tasks like the filter's
        if c.gpus:
            return Resources(True, c.gpus, 1, blocks=4 * c.gpus)
        return Resources(False, max(int(c.cpus / cpus_per_task), 1), cpus_per_task, blocks=4 * c.cpus)
    if stage == "pretrain":
        use_gpu = _use_gpu(cfg.pretrain.use_gpu, c)
        workers = cfg.pretrain.num_workers or (c.gpus if use_gpu else min(2, c.cpus))
        return Resources(use_gpu, workers, 1 if use_gpu else max(1, c.cpus // workers))
    if stage == "finetune":  # folds run side by side while the cluster has room
        per_fold = cfg.finetune.num_workers
        parallel = cfg.finetune.parallel_folds or max(1, (c.gpus or c.cpus) // per_fold)
        cpus = 1 if c.gpus else max(1, c.cpus // (parallel * per_fold))
        return Resources(_use_gpu(cfg.finetune.use_gpu, c), per_fold, cpus, concurrent=parallel)
    if stage == "sweep-selection":
        return Resources(c.gpus > 0, cfg.sweep.num_workers, 1, concurrent=_trials(cfg, c))
    if stage == "sweep-filter":
        return Resources(False, 1, 1, concurrent=cfg.sweep.max_concurrent_trials or c.cpus)
    raise ValueError(f"unknown stage {stage!r}; stages with resources: {', '.join(STAGES)}")


def _use_gpu(setting: Optional[bool], c: Cluster) -> bool:
    return setting if setting is not None else c.gpus > 0


def _trials(cfg: Config, c: Cluster) -> int:
    """Selection trials at once. Each trial's Ray Train run reserves ``sweep.num_workers`` GPUs (or CPUs
    on a CPU-only cluster); on CPU one core stays free for the Ray Data tasks that feed the trials: with
    every core held by a trainer's placement group, the next trial's data could never be computed and
    its trainer would wait for a placement group forever."""
    if cfg.sweep.max_concurrent_trials:
        return cfg.sweep.max_concurrent_trials
    if c.gpus >= cfg.sweep.num_workers:
        return c.gpus // cfg.sweep.num_workers
    return max(1, (c.cpus - 1) // cfg.sweep.num_workers)
