"""Prototypes and density-aware thresholds (paper Sec. II-C, Eqs. 4-9; NOTES items 4-10).

Pure code: FAISS K-means on the labelled set's embeddings, per-cluster
densities and distance bounds, the threshold of Eq. 8, assignment (Eq. 7) and
selection (Eq. 9). No Ray, no MLflow.

    threshold_i = LB_i + (UB_i - LB_i) * (1 - n_i / n_max) ** alpha      (Eq. 8)

Bound modes (NOTES item 5): ``minmax`` - LB_i, UB_i are the smallest and
largest distance of cluster i's labelled members to its prototype (Sec. II-C);
``absolute`` - one global LB and UB (Sec. III-B: 17 +/- 2); ``quantile`` - the
``q_low`` and ``q_high`` quantiles of the members' distances (an extension).

Defined edge cases: a cluster with one member has LB = UB = that member's
distance (0 for a K-means centre), so its threshold is LB; LB == UB gives
threshold LB whatever alpha; with alpha = 0, (1 - n_i/n_max) ** 0 = 1 for every
cluster (numpy's 0 ** 0 = 1), so every threshold is UB; a cluster left with no
labelled member has no bounds and threshold 0. K larger than the labelled set
is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import PrototypesConfig, SelectConfig
from ..regions.kmeans import init_centres

SNAPSHOT_VERSION = 1


class PrototypeError(ValueError):
    pass


@dataclass(frozen=True)
class Prototypes:
    """Everything selection needs, and everything a person needs to see why."""

    centres: np.ndarray  # (K, D) float32
    counts: np.ndarray  # (K,) int64: n_i, labelled members per cluster
    member_cluster: np.ndarray  # (N,) int64: cluster of each labelled sample
    member_distance: np.ndarray  # (N,) float32: its distance to that prototype
    cluster_class: np.ndarray  # (K,) int64: class of the cluster in class_aware mode, else -1
    lb: np.ndarray  # (K,) float64
    ub: np.ndarray  # (K,) float64
    thresholds: np.ndarray  # (K,) float64 (Eq. 8)
    select: dict  # the SelectConfig values the thresholds came from
    prototypes: dict  # the PrototypesConfig values the centres came from
    classes: list = field(default_factory=list)  # class names in class_aware mode
    backbone: str = ""
    weights_digest: str = ""
    version: int = 1

    @property
    def k(self) -> int:
        return len(self.centres)

    @property
    def digest(self) -> str:
        """Hash of the centres, thresholds and settings: what decides a selection."""
        h = hashlib.sha256()
        for a in (self.centres, self.thresholds):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(json.dumps([self.select, self.prototypes, self.backbone, self.weights_digest],
                            sort_keys=True).encode())
        return h.hexdigest()[:16]

    def table(self) -> list[dict]:
        """Per-cluster record: n_i, LB, UB, threshold (and class in class_aware mode)."""
        rows = []
        for i in range(self.k):
            row = {"cluster": i, "n": int(self.counts[i]), "lb": float(self.lb[i]), "ub": float(self.ub[i]),
                   "threshold": float(self.thresholds[i])}
            if self.cluster_class[i] >= 0:
                row["class"] = self.classes[self.cluster_class[i]]
            rows.append(row)
        return rows


# ------------------------------------------------------------------ K-means (Eqs. 4-6)


def kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """K-means centres (k, D) of ``x`` (N, D): seeded k-means++, then FAISS Lloyd iterations."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if k > len(x):
        raise PrototypeError(
            f"K = {k} prototypes need at least {k} labelled samples, got {len(x)}; "
            "lower prototypes.k (or per_class) or label more cells"
        )
    if k == len(x):  # every sample is its own prototype
        return x.copy()
    seeds = init_centres(x, np.ones(len(x)), k, np.random.default_rng(seed)).astype(np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(x, init_centroids=seeds)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def centre_index(centres: np.ndarray):
    """A FAISS index over ``centres`` (exact L2) for :func:`assign`."""
    import faiss

    index = faiss.IndexFlatL2(centres.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    return index


def assign(x: np.ndarray, centres: np.ndarray, index=None) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 7: nearest prototype and Euclidean distance of each row of ``x`` -> ((M,), (M,)).

    ``index``: a :func:`centre_index` of ``centres`` to reuse (the store keeps one)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    d2, idx = (index if index is not None else centre_index(centres)).search(x, 1)
    return idx[:, 0].astype(np.int64), np.sqrt(np.maximum(d2[:, 0], 0.0)).astype(np.float32)


def assign_numpy(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force reference of :func:`assign` in NumPy (for tests and benchmarks)."""
    c = centres.astype(np.float32)
    d2 = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None]
    idx = d2.argmin(1)
    return idx.astype(np.int64), np.sqrt(np.maximum(d2[np.arange(len(x)), idx], 0.0)).astype(np.float32)


# ------------------------------------------------------------------ bounds and Eq. 8


def cluster_bounds(
    member_cluster: np.ndarray, member_distance: np.ndarray, k: int, cfg: SelectConfig
) -> tuple[np.ndarray, np.ndarray]:
    """LB_i, UB_i per cluster for the configured bound mode; NaN for a cluster with no members."""
    if cfg.bound_mode == "absolute":
        return np.full(k, cfg.lb), np.full(k, cfg.ub)
    lb, ub = np.full(k, np.nan), np.full(k, np.nan)
    for i in range(k):
        d = member_distance[member_cluster == i].astype(np.float64)
        if len(d) == 0:
            continue
        if cfg.bound_mode == "minmax":
            lb[i], ub[i] = d.min(), d.max()
        else:  # quantile
            lb[i], ub[i] = np.quantile(d, cfg.q_low), np.quantile(d, cfg.q_high)
    return lb, ub


def density_thresholds(counts: np.ndarray, lb: np.ndarray, ub: np.ndarray, alpha: float) -> np.ndarray:
    """Eq. 8: LB + (UB - LB) * (1 - n_i / n_max) ** alpha; clusters without bounds get 0."""
    counts = np.asarray(counts, np.float64)
    n_max = counts.max() if len(counts) and counts.max() > 0 else 1.0
    t = lb + (ub - lb) * np.power(1.0 - counts / n_max, alpha)
    return np.where(np.isnan(t), 0.0, t)


# ------------------------------------------------------------------ fitting


def fit_prototypes(
    embeddings: np.ndarray,
    labels: Optional[np.ndarray],
    cfg: PrototypesConfig,
    select_cfg: SelectConfig,
    backbone: str = "",
    weights_digest: str = "",
) -> Prototypes:
    """Prototypes of the labelled set T and their thresholds.

    ``kmeans`` mode (the paper): K-means with K = ``cfg.k`` on all embeddings,
    labels unused (NOTES item 10). ``class_aware`` mode (an extension):
    ``cfg.per_class`` prototypes per class, K-means within each class.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise PrototypeError(f"need a non-empty (N, D) array of labelled embeddings, got shape {x.shape}")
    classes: list = []
    if cfg.mode == "kmeans":
        centres = kmeans(x, cfg.k, cfg.niter, cfg.seed)
        cluster_class = np.full(len(centres), -1, np.int64)
    else:
        if labels is None:
            raise PrototypeError("class_aware prototypes need labels for the labelled embeddings")
        labels = np.asarray(labels).astype(str)
        classes = sorted(set(labels.tolist()))
        parts, owner = [], []
        for c, name in enumerate(classes):
            xc = x[labels == name]
            kc = min(cfg.per_class, len(xc))
            parts.append(kmeans(xc, kc, cfg.niter, cfg.seed))
            owner += [c] * kc
        centres, cluster_class = np.concatenate(parts), np.array(owner, np.int64)
    member_cluster, member_distance = assign(x, centres)
    counts = np.bincount(member_cluster, minlength=len(centres))
    proto = Prototypes(
        centres=centres,
        counts=counts,
        member_cluster=member_cluster,
        member_distance=member_distance,
        cluster_class=cluster_class,
        lb=np.zeros(len(centres)),
        ub=np.zeros(len(centres)),
        thresholds=np.zeros(len(centres)),
        select={},
        prototypes=cfg.model_dump(),
        classes=classes,
        backbone=backbone,
        weights_digest=weights_digest,
    )
    return with_thresholds(proto, select_cfg, bump=False)


def with_thresholds(proto: Prototypes, cfg: SelectConfig, bump: bool = True) -> Prototypes:
    """The same prototypes with bounds and thresholds for new alpha/bounds (no refit)."""
    lb, ub = cluster_bounds(proto.member_cluster, proto.member_distance, proto.k, cfg)
    return replace(
        proto,
        lb=lb,
        ub=ub,
        thresholds=density_thresholds(proto.counts, lb, ub, cfg.alpha),
        select=cfg.model_dump(),
        version=proto.version + (1 if bump else 0),
    )


# ------------------------------------------------------------------ selection (Eq. 9)


def select(proto: Prototypes, x: np.ndarray, index=None) -> dict[str, np.ndarray]:
    """Eq. 7 and Eq. 9 for a batch: cluster, distance, threshold, selected (every row recorded).
    ``index``: a :func:`centre_index` of ``proto.centres`` to reuse."""
    cluster, distance = assign(x, proto.centres, index)
    threshold = proto.thresholds[cluster].astype(np.float32) if len(cluster) else np.zeros(0, np.float32)
    return {"cluster": cluster, "distance": distance, "threshold": threshold, "selected": distance <= threshold}


# ------------------------------------------------------------------ snapshots


def save(proto: Prototypes, path: str | Path) -> Path:
    """Write a snapshot atomically (temp file, then rename); numbers in npz, settings as JSON text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": SNAPSHOT_VERSION,
        "select": proto.select,
        "prototypes": proto.prototypes,
        "classes": proto.classes,
        "backbone": proto.backbone,
        "weights_digest": proto.weights_digest,
        "version": proto.version,
        "digest": proto.digest,
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, centres=proto.centres, counts=proto.counts, member_cluster=proto.member_cluster,
                 member_distance=proto.member_distance, cluster_class=proto.cluster_class, lb=proto.lb,
                 ub=proto.ub, thresholds=proto.thresholds, meta=np.array(json.dumps(meta)))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> Prototypes:
    """Read a snapshot written by :func:`save` (no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise PrototypeError(f"no prototype snapshot at {path}")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k: z[k] for k in ("centres", "counts", "member_cluster", "member_distance", "cluster_class",
                                    "lb", "ub", "thresholds")}
    if meta.get("format") != SNAPSHOT_VERSION:
        raise PrototypeError(f"{path}: unsupported snapshot format {meta.get('format')}")
    proto = Prototypes(**arrays, select=meta["select"], prototypes=meta["prototypes"], classes=meta["classes"],
                       backbone=meta["backbone"], weights_digest=meta["weights_digest"], version=meta["version"])
    if proto.digest != meta["digest"]:
        raise PrototypeError(f"{path}: digest mismatch (file damaged or edited)")
    return proto


def replace_version(proto: Prototypes, version: int) -> Prototypes:
    return replace(proto, version=version)
