"""Colour K-means: the histogram trick is exact, seeding is deterministic, merging is as documented."""

import numpy as np
import pytest

from activessf.regions.kmeans import assign, init_centres, lloyd, merge_closest


def straightforward_lloyd(points: np.ndarray, centres: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Textbook Lloyd on every point (no weights, no tricks)."""
    c = centres.copy()
    labels = np.argmin(((points[:, None] - c[None]) ** 2).sum(-1), 1)
    for _ in range(max_iter):
        for j in range(len(c)):
            if (labels == j).any():
                c[j] = points[labels == j].mean(0)
        new = np.argmin(((points[:, None] - c[None]) ** 2).sum(-1), 1)
        if (new == labels).all():
            break
        labels = new
    return c


def test_weighted_lloyd_on_unique_points_equals_lloyd_on_every_point():
    rng = np.random.default_rng(0)
    unique = rng.integers(0, 32, (300, 3)).astype(float) * 8 + 3.5
    unique = np.unique(unique, axis=0)
    counts = rng.integers(1, 40, len(unique))
    every = np.repeat(unique, counts, axis=0)  # what the image's pixels look like
    seeds = init_centres(unique, counts.astype(float), 8, np.random.default_rng(1))
    fast, labels = lloyd(unique, counts.astype(float), seeds)
    slow = straightforward_lloyd(every, seeds)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(labels, assign(unique, fast))


def test_seeding_is_seeded_and_picks_distinct_points():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(200, 3)), rng.uniform(1, 5, 200)
    a = init_centres(x, w, 10, np.random.default_rng(7))
    b = init_centres(x, w, 10, np.random.default_rng(7))
    c = init_centres(x, w, 10, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(np.unique(a, axis=0)) == 10
    with pytest.raises(ValueError, match="cannot seed 300 centres from 200"):
        init_centres(x, w, 300, np.random.default_rng(0))


def test_seeding_with_fewer_distinct_colours_than_clusters():
    x = np.array([[0.0, 0, 0], [255, 255, 255]])
    c = init_centres(x, np.array([5.0, 1.0]), 2, np.random.default_rng(0))
    assert {tuple(r) for r in c} == {(0, 0, 0), (255, 255, 255)}


def test_merge_closest_by_hand():
    c = np.array([[0.0, 0, 0], [1, 0, 0], [10, 0, 0], [11, 0, 0], [30, 0, 0]])
    w = np.array([1.0, 3, 1, 1, 5])
    merged, weights, mapping = merge_closest(c, w, 3)
    np.testing.assert_allclose(merged[:, 0], [0.75, 10.5, 30.0])  # count-weighted means
    assert weights.tolist() == [4, 2, 5] and mapping.tolist() == [0, 0, 1, 1, 2]
    merged, weights, mapping = merge_closest(c, w, 1)
    np.testing.assert_allclose(merged[0, 0], (0 + 3 + 10 + 11 + 150) / 11)
    assert mapping.tolist() == [0] * 5


def test_merge_is_a_no_op_when_already_small_enough_and_ties_go_to_lowest_pair():
    c = np.array([[0.0, 0, 0], [2, 0, 0], [4, 0, 0]])
    merged, _, mapping = merge_closest(c, np.ones(3), 3)
    assert np.array_equal(merged, c) and mapping.tolist() == [0, 1, 2]
    merged, _, mapping = merge_closest(c, np.ones(3), 2)  # (0,1) and (1,2) tie: (0,1) merges
    assert mapping.tolist() == [0, 0, 1]
