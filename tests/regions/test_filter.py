"""The fast region filter equals a slow straightforward version, and behaves as configured."""

import cv2
import numpy as np
import pytest

from activessf.config import FilterConfig, SynthConfig
from activessf.data.synth import paint_field
from activessf.regions.filter import components, filter_image, hsv_keep, normalise
from activessf.regions.kmeans import init_centres, merge_closest
from activessf.regions.literal import filter_image_literal

from test_kmeans import straightforward_lloyd

SMALL = SynthConfig(width=256, height=256, rbc_coverage=0.25)


def small_field(seed: int, subtypes=("G-MK", "N-MK")):
    return paint_field(SMALL, np.random.default_rng([seed, 9]), list(subtypes))


def straightforward_mask(rgb: np.ndarray, cfg: FilterConfig) -> np.ndarray:
    """The filter's algorithm written per pixel, with no histogram and no look-up tables."""
    blurred = cv2.GaussianBlur(normalise(rgb, cfg.normalize), (cfg.blur_kernel,) * 2, cfg.blur_sigma)
    step = 1 << (8 - cfg.colour_bits)
    q = (blurred >> (8 - cfg.colour_bits)).reshape(-1, 3).astype(np.int64)
    colour = q * step + (step - 1) / 2.0  # every pixel at its bin's colour
    kb = cfg.kmeans_bits  # K-means runs on cells this coarse, each at its pixels' mean colour
    cell = (q >> (cfg.colour_bits - kb)) @ np.array([1 << (2 * kb), 1 << kb, 1])
    cells, inverse, counts = np.unique(cell, return_inverse=True, return_counts=True)
    cell_mean = np.stack([np.bincount(inverse, colour[:, d]) / counts for d in range(3)], 1)
    k = min(cfg.kmeans_clusters, len(cells))
    seeds = init_centres(cell_mean, counts.astype(float), k, np.random.default_rng(cfg.seed))
    centres = straightforward_lloyd(cell_mean[inverse], seeds, cfg.kmeans_max_iter)
    labels = np.argmin(((colour[:, None] - centres[None]) ** 2).sum(-1), 1)
    merged, _, mapping = merge_closest(centres, np.bincount(labels, minlength=k).astype(float), cfg.merged_clusters)
    palette = np.clip(np.rint(merged), 0, 255).astype(np.uint8)
    denoised = palette[mapping[labels]].reshape(rgb.shape)  # G'
    hsv = cv2.cvtColor(denoised, cv2.COLOR_RGB2HSV)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    for lo, hi in list(cfg.purple) + list(cfg.deep_blue):
        mask |= cv2.inRange(hsv, np.array(lo, np.uint8), np.array(hi, np.uint8))
    return (mask > 0).astype(np.uint8)


def reference_regions(mask: np.ndarray, cfg: FilterConfig):
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = []
    for x, y, w, h, area in stats[1:]:
        if w >= cfg.min_box and h >= cfg.min_box and area / (w * h) >= cfg.fill_rate:
            out.append((x, y, w, h, area))
    return sorted(out, key=lambda r: (r[1], r[0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_filter_equals_the_straightforward_version(seed):
    rgb = small_field(seed).image[:128, :128].copy()
    cfg = FilterConfig(min_box=20, seed=seed)
    fast = filter_image(rgb, cfg, keep_mask=True)
    slow_mask = straightforward_mask(rgb, cfg)
    assert np.array_equal(fast.mask, slow_mask)
    assert [(r.x, r.y, r.w, r.h, r.area) for r in fast.regions] == reference_regions(slow_mask, cfg)


def test_fast_filter_agrees_with_the_literal_scikit_learn_reading():
    """The literal reading (scikit-learn K-means on every raw pixel) differs only as K-means runs differ."""
    cfg = FilterConfig()
    fast_vs_literal, literal_vs_literal = [], []
    for seed in (3, 5, 7):
        rgb = small_field(seed, ("HL-MK", "S-MK")).image
        fast = filter_image(rgb, cfg, keep_mask=True).mask
        lit = [filter_image_literal(rgb, cfg.model_copy(update={"seed": s})).mask for s in (0, 1)]
        fast_vs_literal.append((fast == lit[0]).mean())
        literal_vs_literal.append((lit[0] == lit[1]).mean())
    assert min(fast_vs_literal) >= 0.98
    assert np.mean(fast_vs_literal) >= np.mean(literal_vs_literal) - 0.01


@pytest.mark.parametrize("seed", range(4))
def test_components_equal_opencv_labelling(seed):
    rng = np.random.default_rng(seed)
    mask = (cv2.GaussianBlur(rng.uniform(0, 1, (200, 240)).astype(np.float32), (0, 0), 3) > 0.5).astype(np.uint8)
    cv2.circle(mask, (120, 100), 60, 1, 8)  # a ring with a component nested in its hole
    cv2.circle(mask, (120, 100), 10, 1, -1)
    for min_box in (1, 8, 30):
        stats, small = components(mask, min_box)
        n, _, ref, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        big = ref[1:][(ref[1:, 2] >= min_box) & (ref[1:, 3] >= min_box)]
        assert sorted(map(tuple, stats.tolist())) == sorted(map(tuple, big.tolist()))
        assert small == n - 1 - len(big)


def test_filter_is_deterministic_and_finds_the_megakaryocyte():
    field = small_field(4, ("G-MK",))
    a = filter_image(field.image, FilterConfig())
    b = filter_image(field.image, FilterConfig())
    assert a.regions == b.regions and np.array_equal(a.palette, b.palette)
    (mk,) = [c for c in field.cells if c.type == "megakaryocyte"]
    from activessf.regions.evaluate import iou_matrix

    boxes = np.array([(r.x, r.y, r.w, r.h) for r in a.regions])
    assert len(boxes) and iou_matrix(np.array([mk.box]), boxes).max() > 0.7
    for r in a.regions:
        assert r.w >= 70 and r.h >= 70 and r.fill_rate >= 0.7
        x, y, w, h = r.crop_box
        assert x == max(r.x - 8, 0) and y == max(r.y - 8, 0)


def test_thresholds_reject_with_reasons():
    field = small_field(4, ("G-MK",))
    big = filter_image(field.image, FilterConfig(min_box=250))
    assert big.regions == [] and big.rejected["too_small"] > 0
    strict = filter_image(field.image, FilterConfig(fill_rate=1.0))
    assert strict.regions == [] and strict.rejected["low_fill"] >= 1 and len(strict.low_fill) >= 1


def test_hsv_ranges_are_inclusive_and_ored():
    palette = cv2.cvtColor(np.array([[[30, 100, 0], [140, 255, 255], [29, 200, 200], [100, 99, 200]]], np.uint8),
                           cv2.COLOR_HSV2RGB)[0]
    keep = hsv_keep(palette, [((30, 100, 0), (140, 255, 255))])
    hsv_back = cv2.cvtColor(palette.reshape(1, -1, 3), cv2.COLOR_RGB2HSV)[0]
    expected = [(30 <= h <= 140) and s >= 100 for h, s, _ in hsv_back.tolist()]
    assert keep.tolist() == expected
    assert hsv_keep(palette, [((0, 0, 0), (10, 10, 10)), ((0, 0, 0), (179, 255, 255))]).all()


def test_normalisation_modes():
    rgb = np.random.default_rng(0).integers(50, 200, (20, 30, 3), dtype=np.uint8)
    mm = normalise(rgb, "minmax")
    assert mm.min() == 0 and mm.max() == 255
    pc = normalise(rgb, "percentile")
    assert pc.dtype == np.uint8 and pc.max() == 255
    assert normalise(rgb, "none") is rgb


def test_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match="RGB uint8"):
        filter_image(np.zeros((10, 10), np.uint8), FilterConfig())


def test_absorbance_keeps_what_absorbs_red_whatever_the_exposure():
    """Colours made from optical densities against a yellowish background: a purple nucleus is kept; a pink
    red cell (absorbs green and blue), pale cytoplasm and the background are not; dimming the whole
    image (background included) changes nothing."""
    from activessf.regions.filter import absorbance_keep

    bg = np.array([240.0, 235.0, 200.0])

    def colour(od):
        return np.clip((bg + 1) * 10 ** -np.array(od) - 1, 0, 255)

    ods = [[0.5, 0.8, 0.3], [0.03, 0.19, 0.12], [0.0, 0.0, 0.0], [0.1, 0.3, 0.4], [0.25, 0.3, 0.45]]
    palette = np.stack([colour(od) for od in ods])
    expected = [True, False, False, False, False]  # the last absorbs red, but blue more: a pink-violet
    assert absorbance_keep(palette.astype(np.uint8), bg, 0.2, 0.7).tolist() == expected
    dim = 0.6
    assert absorbance_keep((palette * dim).astype(np.uint8), bg * dim, 0.2, 0.7).tolist() == expected


def test_sizes_in_micrometres_become_pixels_and_need_a_scale():
    from pydantic import ValidationError

    f = FilterConfig(um_per_px=0.1, min_box_um=5.0, closing_um=2.0).in_pixels()
    assert (f.min_box, f.closing_kernel) == (50, 20)
    assert FilterConfig(min_box=70).in_pixels().min_box == 70  # no micrometres: pixels as given
    with pytest.raises(ValidationError, match="need filter.um_per_px"):
        FilterConfig(min_box_um=5.0)
    with pytest.raises(ValidationError, match="above the 63 allowed"):
        FilterConfig(um_per_px=0.01, closing_um=2.0)


def test_wide_closings_run_at_reduced_resolution_and_join_the_same_lobes():
    """Two lobes 20 px apart: a 34-px closing joins them into one component, like the full-resolution
    disk; a narrow closing is the plain one; nothing of the mask is lost."""
    from activessf.regions.filter import close

    mask = np.zeros((200, 240), np.uint8)
    cv2.circle(mask, (80, 100), 30, 1, -1)
    cv2.circle(mask, (160, 100), 30, 1, -1)
    full = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (34, 34)))
    fast = close(mask, 34)
    assert (fast >= mask).all() and cv2.connectedComponents(fast)[0] - 1 == 1 == cv2.connectedComponents(full)[0] - 1
    assert np.abs(fast.astype(int) - full).sum() < 0.05 * full.sum()  # the outline moves by at most f - 1 = 1 px
    small = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    assert (close(mask, 9) == small).all() and close(mask, 0) is mask
