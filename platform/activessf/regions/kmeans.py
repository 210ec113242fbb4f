"""Two-stage colour K-means (Sec. II-B, Eqs. 2-3; NOTES item 2), run on a colour histogram.

Clustering every pixel is the literal reading and costs ~0.3-0.6 s per
640x480 image. The same Lloyd iterations run on the *occupied bins* of a
colour histogram, each bin weighted by its pixel count, give exactly the
clustering of the binned pixels at a fraction of the cost: a pixel's colour
only enters K-means through its bin. ``tests/regions`` checks this against
scikit-learn's per-pixel K-means from the same initial centres.
"""

from __future__ import annotations

import numpy as np


def _sqdist(xt: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances (M,) from the columns of ``xt`` (D, M) to one point ``c`` (D,)."""
    out = (xt[0] - c[0]) ** 2
    for d in range(1, len(c)):
        out += (xt[d] - c[d]) ** 2
    return out


def init_centres(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted k-means++ seeding: ``k`` rows of ``x`` (M, D) with weights ``w`` (M,) -> (k, D)."""
    if k > len(x):
        raise ValueError(f"cannot seed {k} centres from {len(x)} distinct points")
    xt = np.ascontiguousarray(x.T, dtype=np.float64)
    centres = np.empty((k, x.shape[1]), np.float64)
    cdf = np.cumsum(w, dtype=np.float64)
    centres[0] = x[min(int(np.searchsorted(cdf, rng.uniform() * cdf[-1], "right")), len(x) - 1)]
    d2 = _sqdist(xt, centres[0])
    for i in range(1, k):
        cdf = np.cumsum(w * d2)
        if cdf[-1] <= 0:  # fewer distinct colours than clusters: reuse the heaviest
            centres[i] = x[int(np.argmax(w))]
            continue
        j = min(int(np.searchsorted(cdf, rng.uniform() * cdf[-1], "right")), len(x) - 1)
        centres[i] = x[j]
        np.minimum(d2, _sqdist(xt, centres[i]), out=d2)
    return centres


def assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for each row of ``x`` (M, D) (Eq. 3, squared Euclidean)."""
    return _assign_t(np.ascontiguousarray(x.T, dtype=np.float64), centres)


def _assign_t(xt: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # argmin_j |x - c_j|^2 = argmin_j (|c_j|^2 - 2 c_j . x): |x|^2 does not change the winner
    d = centres @ xt  # (k, M)
    d *= -2.0
    d += (centres * centres).sum(1)[:, None]
    return d.argmin(0)


def lloyd(x: np.ndarray, w: np.ndarray, centres: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Lloyd iterations until the assignment stops changing (or ``max_iter``).

    Returns ``(centres (k, D), labels (M,))``. An emptied cluster keeps its centre.
    """
    xt = np.ascontiguousarray(x.T, dtype=np.float64)
    wx = xt * w  # (D, M) weighted coordinates, summed per cluster for Eq. 2
    centres = centres.astype(np.float64).copy()
    labels = _assign_t(xt, centres)
    k = len(centres)
    for _ in range(max_iter):
        mass = np.bincount(labels, weights=w, minlength=k)
        for d in range(len(xt)):  # Eq. 2: weighted mean of each cluster
            np.divide(np.bincount(labels, weights=wx[d], minlength=k), mass, out=centres[:, d], where=mass > 0)
        new = _assign_t(xt, centres)
        if np.array_equal(new, labels):
            break
        labels = new
    return centres, labels


def merge_closest(centres: np.ndarray, weights: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adaptive merging (NOTES item 2): merge the two closest centres until ``target`` remain.

    The merged centre is the weight-averaged mean. Deterministic: ties go to the
    lowest index pair. Returns ``(centres (t, D), weights (t,), mapping (k,))``
    where ``mapping[i]`` is the merged cluster of original cluster ``i``.
    """
    c = centres.astype(np.float64).copy()
    w = weights.astype(np.float64).copy()
    k = len(c)
    owner = np.arange(k)  # which surviving slot each original cluster now belongs to
    alive = np.ones(k, bool)
    d2 = ((c[:, None] - c[None]) ** 2).sum(-1)
    d2[np.tril_indices(k)] = np.inf
    for _ in range(k - max(target, 1)):
        i, j = np.unravel_index(int(np.argmin(d2)), d2.shape)  # i < j
        total = w[i] + w[j]
        if total > 0:
            c[i] = (c[i] * w[i] + c[j] * w[j]) / total
        w[i], alive[j] = total, False
        owner[owner == j] = i
        d2[j, :] = d2[:, j] = np.inf
        new = ((c - c[i]) ** 2).sum(1)  # distances of the merged centre to the others
        d2[:i, i] = np.where(alive[:i], new[:i], np.inf)
        d2[i, i + 1 :] = np.where(alive[i + 1 :], new[i + 1 :], np.inf)
    slots = np.flatnonzero(alive)
    return c[slots], w[slots], np.searchsorted(slots, owner)
