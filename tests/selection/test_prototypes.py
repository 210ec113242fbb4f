"""Prototypes, Eq. 8 thresholds by hand for every bound mode and alpha, edge cases, snapshots."""

import numpy as np
import pytest

from activessf.config import PrototypesConfig, SelectConfig
from activessf.selection.prototypes import (
    PrototypeError,
    assign,
    assign_numpy,
    cluster_bounds,
    density_thresholds,
    fit_prototypes,
    load,
    save,
    select,
    with_thresholds,
)

# Three clusters on a line, far apart: members' distances to their centre are known.
#   cluster A at 0:   members 0, +-1, +-3 (n = 5; distances 0, 1, 1, 3, 3)
#   cluster B at 100: members 100, 102, 98  (n = 3; distances 0, 2, 2)
#   cluster C at 200: member 200            (n = 1; distance 0)
POINTS = np.array([0, 1, -1, 3, -3, 100, 102, 98, 200], np.float32)[:, None] * np.array([[1, 0]], np.float32)


def fitted(bound_mode="minmax", alpha=0.5, **kw):
    cfg = SelectConfig(bound_mode=bound_mode, alpha=alpha, **kw)
    return fit_prototypes(POINTS, None, PrototypesConfig(k=3, niter=20), cfg)


def by_centre(proto):
    """Cluster indices ordered by centre position (A, B, C)."""
    return list(np.argsort(proto.centres[:, 0]))


def test_kmeans_finds_the_three_clusters():
    p = fitted()
    a, b, c = by_centre(p)
    np.testing.assert_allclose(p.centres[[a, b, c], 0], [0, 100, 200], atol=1e-5)
    assert p.counts[[a, b, c]].tolist() == [5, 3, 1]


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_eq8_minmax_by_hand(alpha):
    p = fitted("minmax", alpha)
    a, b, c = by_centre(p)
    # A: LB 0, UB 3, n = n_max -> threshold = LB = 0
    # B: LB 0, UB 2, n = 3 -> 0 + 2 * (1 - 3/5) ** alpha
    # C: LB = UB = 0 (one member) -> 0
    assert p.lb[[a, b, c]].tolist() == pytest.approx([0, 0, 0], abs=1e-6)
    assert p.ub[[a, b, c]].tolist() == pytest.approx([3, 2, 0], abs=1e-5)
    assert p.thresholds[[a, b, c]].tolist() == pytest.approx([0, 2 * 0.4**alpha, 0], abs=1e-5)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_eq8_absolute_by_hand(alpha):
    p = fitted("absolute", alpha, lb=15, ub=19)
    a, b, c = by_centre(p)
    expected = [15 + 4 * (1 - n / 5) ** alpha for n in (5, 3, 1)]
    assert p.thresholds[[a, b, c]].tolist() == pytest.approx(expected)
    assert p.lb.tolist() == [15] * 3 and p.ub.tolist() == [19] * 3


def test_eq8_quantile_by_hand():
    p = fitted("quantile", 1.0, q_low=0.25, q_high=0.75)
    a, b, c = by_centre(p)
    d_a = np.array([0, 1, 1, 3, 3])
    lb_a = np.quantile(d_a, 0.25)
    lb_b, ub_b = np.quantile([0, 2, 2], 0.25), np.quantile([0, 2, 2], 0.75)
    assert p.lb[[a, b]].tolist() == pytest.approx([lb_a, lb_b], abs=1e-5)
    assert p.thresholds[[a, b, c]].tolist() == pytest.approx([lb_a, lb_b + (ub_b - lb_b) * 0.4, 0], abs=1e-5)


def test_alpha_zero_gives_every_cluster_its_upper_bound():
    p = fitted("absolute", 0.0, lb=15, ub=19)
    assert p.thresholds.tolist() == [19.0] * 3


def test_lb_equal_ub_gives_lb_whatever_alpha():
    assert density_thresholds(np.array([1, 4]), np.array([7.0, 7.0]), np.array([7.0, 7.0]), 0.3).tolist() == [7, 7]


def test_empty_cluster_has_no_bounds_and_threshold_zero():
    lb, ub = cluster_bounds(np.array([0, 0]), np.array([1.0, 2.0], np.float32), 2, SelectConfig())
    assert lb[0] == 1 and ub[0] == 2 and np.isnan(lb[1]) and np.isnan(ub[1])
    assert density_thresholds(np.array([2, 0]), lb, ub, 0.5).tolist() == [1.0, 0.0]


def test_rare_clusters_get_looser_bounds():
    """NOTES item 4: with shared bounds, the smaller the cluster, the larger its threshold."""
    p = fitted("absolute", 0.5, lb=15, ub=19)
    a, b, c = by_centre(p)
    assert p.thresholds[a] < p.thresholds[b] < p.thresholds[c]


def test_k_larger_than_labelled_set_is_a_clear_error():
    with pytest.raises(PrototypeError, match="K = 11 prototypes need at least 11 labelled samples, got 9"):
        fit_prototypes(POINTS, None, PrototypesConfig(), SelectConfig())


def test_selection_of_candidates_and_of_nothing():
    p = fitted("absolute", 1.0, lb=1, ub=3)
    a, b, c = by_centre(p)
    x = np.array([[0.5, 0], [104, 0], [199, 0], [150, 0]], np.float32)
    out = select(p, x)
    assert out["cluster"].tolist() == [a, b, c, b]
    assert out["distance"].tolist() == pytest.approx([0.5, 4, 1, 50])
    assert out["selected"].tolist() == [True, False, True, False]
    empty = select(p, np.zeros((0, 2), np.float32))
    assert all(len(v) == 0 for v in empty.values())


def test_faiss_assignment_equals_numpy():
    rng = np.random.default_rng(0)
    c, x = rng.normal(size=(11, 64)).astype(np.float32), rng.normal(size=(500, 64)).astype(np.float32)
    ia, da = assign(x, c)
    ib, db = assign_numpy(x, c)
    assert np.array_equal(ia, ib) and np.allclose(da, db, atol=1e-4)


def test_fitting_is_seeded_and_bitwise_repeatable():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 32)).astype(np.float32)
    a = fit_prototypes(x, None, PrototypesConfig(seed=3), SelectConfig())
    b = fit_prototypes(x, None, PrototypesConfig(seed=3), SelectConfig())
    assert a.centres.tobytes() == b.centres.tobytes() and a.digest == b.digest


def test_class_aware_mode_builds_prototypes_per_class():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, (20, 4)), rng.normal(10, 1, (6, 4))]).astype(np.float32)
    labels = np.array(["common"] * 20 + ["rare"] * 6)
    p = fit_prototypes(x, labels, PrototypesConfig(mode="class_aware", per_class=2), SelectConfig())
    assert p.k == 4 and p.classes == ["common", "rare"] and sorted(p.cluster_class.tolist()) == [0, 0, 1, 1]
    assert {row["class"] for row in p.table()} == {"common", "rare"}
    with pytest.raises(PrototypeError, match="need labels"):
        fit_prototypes(x, None, PrototypesConfig(mode="class_aware"), SelectConfig())


def test_new_bounds_without_refit_and_snapshot_roundtrip(tmp_path):
    p = fitted("minmax", 0.5)
    q = with_thresholds(p, SelectConfig(bound_mode="absolute", lb=15, ub=19, alpha=1.0))
    assert np.array_equal(q.centres, p.centres) and q.version == p.version + 1 and q.digest != p.digest
    path = save(q, tmp_path / "proto.npz")
    r = load(path)
    assert r.digest == q.digest and r.version == q.version and r.table() == q.table()
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(PrototypeError, match="no prototype snapshot"):
        load(tmp_path / "missing.npz")
