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


def init_centres(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted k-means++ seeding: ``k`` rows of ``x`` (M, D) with weights ``w`` (M,) -> (k, D).

    Squared distances come from |x|^2 - 2 x.c + |c|^2, one matrix-vector product
    per seed, so it serves 3-D colours and 2048-D embeddings alike.
    """
    if k > len(x):
        raise ValueError(f"cannot seed {k} centres from {len(x)} distinct points")
    x64 = np.asarray(x, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x64, x64)
    u = rng.uniform(size=k)
    last = len(x) - 1

    def sqdist(j: int) -> np.ndarray:
        return np.maximum(sq - 2.0 * (x64 @ x64[j]) + sq[j], 0.0)

    cdf = np.cumsum(w, dtype=np.float64)
    chosen = [min(int(np.searchsorted(cdf, u[0] * cdf[-1], "right")), last)]
    d2 = sqdist(chosen[0])
    for i in range(1, k):
        cdf = np.cumsum(w * d2)
        if cdf[-1] <= 0:  # fewer distinct points than clusters: reuse the heaviest
            chosen.append(int(np.argmax(w)))
            continue
        j = min(int(np.searchsorted(cdf, u[i] * cdf[-1], "right")), last)
        chosen.append(j)
        np.minimum(d2, sqdist(j), out=d2)
    return x64[chosen].copy()


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
    dead = np.zeros(k, bool)
    d2 = ((c[:, None] - c[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    for _ in range(k - max(target, 1)):
        i, j = divmod(int(d2.argmin()), k)  # first minimum in row-major order: the lowest pair
        total = w[i] + w[j]
        if total > 0:
            c[i] = (c[i] * w[i] + c[j] * w[j]) / total
        w[i], dead[j] = total, True
        owner[owner == j] = i
        new = ((c - c[i]) ** 2).sum(1)
        new[dead] = np.inf
        new[i] = np.inf
        d2[i], d2[:, i] = new, new
        d2[j], d2[:, j] = np.inf, np.inf
    slots = np.flatnonzero(~dead)
    return c[slots], w[slots], np.searchsorted(slots, owner)
