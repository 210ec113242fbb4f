"""The pictures of issue 18 on tiny arrays: valid PNGs of plausible size, and the edge cases (one class, no
misclassified cell, no selected region, one prototype, missing cell images)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from activessf import viz
from activessf.evaluation.pictures import confident_mistakes, prediction_arrays, write_pictures
from activessf.imageio import read_rgb, write_png

PNG = b"\x89PNG\r\n\x1a\n"


def png_shape(path):
    data = path.read_bytes()
    assert data[:8] == PNG, f"{path} is not a PNG"
    return read_rgb(path).shape


def test_region_overlay_draws_kept_green_and_rejected_red_and_scales_down():
    rgb = np.full((300, 2000, 3), 255, np.uint8)
    out = viz.region_overlay(rgb, kept=[(100, 100, 200, 100)], rejected=[(1000, 50, 300, 200)], title="f.png",
                             max_side=1000)
    assert out.shape == (40 + 150, 1000, 3)  # halved, plus the caption strip
    body = out[40:]
    green = (body[..., 1] > 150) & (body[..., 0] < 80) & (body[..., 2] < 80)
    red = (body[..., 0] > 180) & (body[..., 1] < 100)
    assert green[45:105, 45:155].any() and not green[:, 450:].any()  # kept box at (50, 50) after scaling
    assert red[20:130, 495:655].any() and not red[:, :400].any()
    empty = viz.region_overlay(rgb[:50, :60], kept=[], rejected=[])
    assert empty.shape == (90, 60, 3)
    with pytest.raises(ValueError, match="RGB image"):
        viz.region_overlay(np.zeros((10, 10), np.uint8), [])


def test_pr_curves_one_class_absent_class_and_perfect_scores(tmp_path):
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.1, 0.9, 0.0]])
    aps = viz.pr_curves_figure(y, probs, ["a", "b", "c"], tmp_path / "pr.png")
    assert aps == {"a": 1.0, "b": 1.0, "c": None}  # perfect ranking; c has no positive
    h, w, _ = png_shape(tmp_path / "pr.png")
    assert 300 < h < 1000 and 400 < w < 1200
    assert viz.pr_curves_figure(np.zeros(3, int), np.ones((3, 1)), ["only"], tmp_path / "one.png") == {"only": 1.0}
    with pytest.raises(ValueError, match="2 probability columns for 3 classes"):
        viz.pr_curves_figure(y, probs[:, :2], ["a", "b", "c"], tmp_path / "x.png")


def test_captioned_grid_lays_out_rows_and_says_when_empty():
    tiles = [np.zeros((20, 30, 3), np.uint8)] * 7
    sheet = viz.captioned_grid(tiles, ["true a\npred b\nconf 0.90"] * 7, columns=3, thumb=40)
    assert sheet.shape[1] == 6 + 3 * 46 and sheet.shape[0] == 6 + 3 * (40 + 46 + 6)
    empty = viz.captioned_grid([], [], empty="no misclassified cells")
    assert empty.shape[:2] == (60, 360) and (empty < 200).any()  # the sentence is written
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        viz.captioned_grid(tiles[:2], ["x"])


def test_embedding_map_edge_cases(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    centres = x[:3] + 0.1
    # nothing selected, labelled cells of one class, regions subsampled
    info = viz.embedding_map(tmp_path / "m.png", x, np.zeros(40, bool), centres, np.array([0.5, 0.0, 2.0]),
                             distance_ratio=np.full(40, np.inf), labelled=x[:5], labels=["a"] * 5, max_regions=10)
    assert info["regions_drawn"] == 10 and info["labelled"] == 5 and len(info["explained_variance"]) == 2
    h, w, _ = png_shape(tmp_path / "m.png")
    assert w > 2 * h * 0.9 and h > 300  # two panels side by side
    # one prototype, no regions, no labelled set: one panel, no PCA axis to fit
    info = viz.embedding_map(tmp_path / "one.png", np.zeros((0, 8)), np.zeros(0, bool), centres[:1], np.ones(1))
    assert info["regions_drawn"] == 0 and info["explained_variance"] == []
    assert png_shape(tmp_path / "one.png")[0] > 300
    # the same inputs draw the same picture (seeded sample, deterministic PCA)
    a = viz.embedding_map(tmp_path / "a.png", x, x[:, 0] > 0, centres, np.ones(3), max_regions=10)
    b = viz.embedding_map(tmp_path / "b.png", x, x[:, 0] > 0, centres, np.ones(3), max_regions=10)
    assert a == b and (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with pytest.raises(ValueError, match="40 regions but 3 selected"):
        viz.embedding_map(tmp_path / "x.png", x, np.ones(3, bool), centres, np.ones(3))


def predictions(tmp_path, rows, classes):
    table = pa.table({"id": [r[0] for r in rows], "label": [r[1] for r in rows], "repeat": [0] * len(rows),
                      "fold": [0] * len(rows), **{f"p_{c}": [r[2][i] for r in rows] for i, c in enumerate(classes)}})
    pq.write_table(table, tmp_path / "predictions.parquet")
    return tmp_path / "predictions.parquet"


def test_confident_mistakes_rank_by_confidence_once_per_cell(tmp_path):
    classes = ["a", "b"]
    rows = [("a/1.png", "a", [0.2, 0.8]), ("a/1.png", "a", [0.4, 0.6]), ("b/2.png", "b", [0.95, 0.05]),
            ("b/3.png", "b", [0.1, 0.9]), ("a/4.png", "a", [0.7, 0.3])]
    ids, y, probs = prediction_arrays(pq.read_table(predictions(tmp_path, rows, classes)), classes)
    assert y.tolist() == [0, 0, 1, 1, 0] and probs.shape == (5, 2)
    assert confident_mistakes(ids, y, probs) == [("b/2.png", 1, 0, 0.95), ("a/1.png", 0, 1, 0.8)]
    assert confident_mistakes(ids, y, probs, n=1) == [("b/2.png", 1, 0, 0.95)]
    assert confident_mistakes([], np.zeros(0, int), np.zeros((0, 2))) == []


def test_finetune_pictures_from_predictions_with_and_without_mistakes(tmp_path):
    classes = ["a", "b"]
    cells = tmp_path / "cells"
    write_png(cells / "a" / "1.png", np.full((24, 24, 3), (200, 0, 200), np.uint8))
    rows = [("a/1.png", "a", [0.1, 0.9]), ("b/missing.png", "b", [0.7, 0.3]), ("a/5.png", "a", [0.9, 0.1])]
    out = tmp_path / "out"
    out.mkdir()
    info = write_pictures(out, predictions(tmp_path, rows, classes), classes, cells)
    assert info["misclassified_cells"] == 2 and info["shown"] == 2 and set(info["pooled_ap"]) == {"a", "b"}
    gallery = read_rgb(out / "misclassified.png")
    assert gallery.shape[1] == 6 + 2 * (112 + 6)  # two tiles, one row
    assert ((gallery[..., 0] == 200) & (gallery[..., 1] == 0)).sum() > 100  # the real cell is shown first
    assert png_shape(out / "pr_curves.png")[0] > 300
    right = [("a/1.png", "a", [0.9, 0.1]), ("b/2.png", "b", [0.2, 0.8])]
    info = write_pictures(out, predictions(tmp_path, right, classes), classes, cells, prefix="ok_")
    assert info["misclassified_cells"] == 0 and info["pooled_ap"] == {"a": 1.0, "b": 1.0}
    assert read_rgb(out / "ok_misclassified.png").shape[:2] == (60, 360)


def test_the_number_of_overlays_is_not_part_of_the_filter_digest():
    from activessf.config import FilterConfig

    assert FilterConfig(overlays=0).digest() == FilterConfig().digest() != FilterConfig(fill_rate=0.5).digest()
    assert FilterConfig().digest() == "1722fd1a444786da"  # the defaults' digest before the field existed
