"""The prototype store: a named Ray actor holding the FAISS index, prototypes and thresholds.

A thin wrapper over :mod:`activessf.selection.prototypes`. Every change
(fit, new bounds) is snapshotted atomically before it is acknowledged; a
restarted actor (``max_restarts=-1``) reloads its last snapshot in
``__init__``, and Ray retries the interrupted calls (``max_task_retries=-1``),
so a crash mid-selection changes nothing in the result.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import PrototypesConfig, SelectConfig
from ..runtime import node_id
from . import prototypes as P

log = logging.getLogger(__name__)

NAMESPACE = "activessf"


class PrototypeStore:
    """Actor body (also usable as a plain object in tests)."""

    def __init__(self, snapshot: str):
        self.snapshot_path = Path(snapshot)
        self.proto: Optional[P.Prototypes] = None
        self.index = None
        self.calls = 0  # assign calls served by this incarnation of the actor,
        self.assigned = 0  # the rows they held,
        self.busy_seconds = 0.0  # and the time spent in them
        if self.snapshot_path.is_file():
            self._install(P.load(self.snapshot_path))
            log.info("prototype store: reloaded version %d from %s", self.proto.version, self.snapshot_path)
        self._event("start", reloaded_version=self.proto.version if self.proto else None)

    def _event(self, kind: str, **fields) -> None:
        """Append to ``<snapshot>.events.jsonl``: every start (and so every restart) is on record."""
        import json

        self.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.events_path, "a") as fh:
            fh.write(json.dumps({"event": kind, "time": time.time(), "pid": os.getpid(), "node": node_id(),
                                 **fields}) + "\n")

    @property
    def events_path(self) -> Path:
        return events_path(self.snapshot_path)

    # -------------------------------------------------------------- state
    def _install(self, proto: P.Prototypes) -> None:
        import faiss

        index = faiss.IndexFlatL2(proto.centres.shape[1])
        if faiss.get_num_gpus() > 0:  # a GPU node: search on the GPU
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        index.add(np.ascontiguousarray(proto.centres, dtype=np.float32))
        self.proto, self.index = proto, index

    def _commit(self, proto: P.Prototypes) -> dict:
        P.save(proto, self.snapshot_path)  # durable before it is in use
        self._install(proto)
        self._event("commit", version=proto.version, digest=proto.digest)
        return self.info()

    # -------------------------------------------------------------- API
    def fit(self, embeddings: np.ndarray, labels: Optional[np.ndarray], proto_cfg: dict, select_cfg: dict,
            backbone: str = "", weights_digest: str = "") -> dict:
        proto = P.fit_prototypes(embeddings, labels, PrototypesConfig(**proto_cfg), SelectConfig(**select_cfg),
                                 backbone, weights_digest)
        if self.proto is not None:
            proto = P.replace_version(proto, self.proto.version + 1)
        return self._commit(proto)

    def set_bounds(self, select_cfg: dict) -> dict:
        """New alpha / bound mode / bounds without refitting the prototypes."""
        self._need()
        return self._commit(P.with_thresholds(self.proto, SelectConfig(**select_cfg)))

    def assign(self, embeddings: np.ndarray) -> dict:
        """Eq. 7 and Eq. 9 for a batch (``prototypes.select`` on the store's index); also returns the
        version that decided it."""
        self._need()
        started = time.perf_counter()
        out = {**P.select(self.proto, embeddings, self.index), "version": self.proto.version,
               "digest": self.proto.digest}
        self.calls, self.assigned = self.calls + 1, self.assigned + len(embeddings)
        self.busy_seconds += time.perf_counter() - started
        return out

    def snapshot(self) -> str:
        self._need()
        P.save(self.proto, self.snapshot_path)
        return str(self.snapshot_path)

    def info(self) -> dict:
        """State and load of this incarnation of the store (counters start again after a restart)."""
        load = {"calls": self.calls, "assigned": self.assigned, "busy_seconds": round(self.busy_seconds, 6),
                "node": node_id(), "snapshot": str(self.snapshot_path)}
        if self.proto is None:
            return {"fitted": False, **load}
        return {"fitted": True, **load, "version": self.proto.version, "digest": self.proto.digest,
                "k": self.proto.k, "table": self.proto.table()}

    def prototypes(self) -> P.Prototypes:
        self._need()
        return self.proto

    def _need(self) -> None:
        if self.proto is None:
            raise P.PrototypeError(f"the prototype store has no prototypes yet (no snapshot at {self.snapshot_path}); "
                                   "fit it first")


def events_path(snapshot: str | Path) -> Path:
    """The store's event log beside its snapshot: ``prototypes.npz`` -> ``prototypes.events.jsonl``."""
    return Path(snapshot).with_name(Path(snapshot).stem + ".events.jsonl")


def store_history(snapshot: str | Path) -> dict:
    """Where the store actor of ``snapshot`` ran: ``starts`` (1 + restarts) and the Ray ``nodes`` of each
    start, in order, from its events file."""
    import json

    events = events_path(snapshot)
    lines = events.read_text().splitlines() if events.is_file() else []
    starts = [e for e in map(json.loads, lines) if e["event"] == "start"]
    return {"starts": len(starts), "nodes": [e.get("node", "") for e in starts]}


def store_actor(name: str, snapshot: str | Path, detached: bool = False, num_gpus: float = 0.0,
                label_selector: Optional[dict] = None):
    """The named store actor: created on first use, found by name afterwards; on a node matching
    ``label_selector`` when given (a restart goes to another such node)."""
    import ray

    cls = ray.remote(PrototypeStore)
    return cls.options(
        **({"label_selector": label_selector} if label_selector else {}),
        name=name,
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached" if detached else None,
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0.25,
        num_gpus=num_gpus,
    ).remote(str(snapshot))
