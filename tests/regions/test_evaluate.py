"""Scoring regions against boxes: IoU, one-to-one matching, VOC and synthetic ground truth."""

import json

import numpy as np
import pytest

from activessf.data.annotations import image_key, load_boxes, read_voc
from activessf.regions.evaluate import evaluate, iou_matrix, match


def test_iou_by_hand():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 10, 10], [0, 0, 10, 10], [20, 20, 5, 5]])
    np.testing.assert_allclose(iou_matrix(a, b), [[50 / 150, 1.0, 0.0]])


def test_matching_is_one_to_one_and_greedy_by_iou():
    regions = np.array([[0, 0, 10, 10], [1, 0, 10, 10]])
    truth = np.array([[0, 0, 10, 10]])
    assert match(regions, truth, 0.3) == [(0, 0, 1.0)]  # the second region cannot reuse the box
    assert match(regions, np.zeros((0, 4)), 0.3) == []


def test_recall_precision_and_distractors():
    truth = {
        "a": [("WBC", (0, 0, 100, 100), "neutrophil"), ("RBC", (200, 200, 50, 50), None)],
        "b": [("WBC", (0, 0, 100, 100), "basophil")],
    }
    regions = {"a": [(5, 5, 100, 100), (200, 200, 50, 50)], "b": [(500, 500, 10, 10)], "c": [(0, 0, 5, 5)]}
    r = evaluate(regions, truth, "WBC", 0.3)
    assert (r.truth_boxes, r.regions, r.matched) == (2, 3, 1)
    assert r.recall == 0.5 and r.precision == pytest.approx(1 / 3)
    assert r.unmatched_regions_by_overlap == {"RBC": 1, "none": 1}
    assert r.regions_outside_annotations == 1
    assert r.mean_matched_iou == pytest.approx(95 * 95 / (2 * 100 * 100 - 95 * 95))
    assert r.recall_by_subtype == {"basophil": 0.0, "neutrophil": 1.0}


def test_voc_and_synthetic_ground_truth(tmp_path):
    (tmp_path / "img_1.xml").write_text(
        "<annotation><object><name>WBC</name><bndbox><xmin>11</xmin><ymin>21</ymin>"
        "<xmax>60</xmax><ymax>80</ymax></bndbox></object></annotation>")
    assert read_voc(tmp_path / "img_1.xml") == [("WBC", (10, 20, 50, 60), None)]
    assert load_boxes(tmp_path) == {"img_1": [("WBC", (10, 20, 50, 60), None)]}
    gt = {"fields": [{"file": "smears/field_00003.png", "cells": [
        {"type": "megakaryocyte", "subtype": "G-MK", "box": [1, 2, 3, 4]}]}]}
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "ground_truth.json").write_text(json.dumps(gt))
    assert load_boxes(tmp_path / "s") == {"field_00003": [("megakaryocyte", (1, 2, 3, 4), "G-MK")]}
    assert image_key("s3://bucket/x/field_00003.png") == "field_00003"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no VOC"):
        load_boxes(tmp_path / "empty")


def test_masks_give_one_box_per_cell_and_the_report_gives_the_iou_spread(tmp_path):
    import cv2
    import numpy as np

    from activessf.data.annotations import load_masks

    m = np.zeros((60, 80), np.uint8)
    m[10:30, 5:25] = 128  # cytoplasm
    m[15:20, 10:15] = 255  # its nucleus: the same cell
    m[40:55, 50:70] = 255  # a second cell
    m[0, 79] = 255  # a speck, ignored
    cv2.imwrite(str(tmp_path / "img_1.png"), m)
    truth = load_masks(tmp_path)
    assert truth == {"img_1": [("cell", (5, 10, 20, 20), None), ("cell", (50, 40, 20, 15), None)]}
    rep = evaluate({"img_1": [(10, 15, 5, 5)]}, truth, "cell", 0.05)  # a nucleus-sized region in cell 1
    assert rep.matched == 1 and rep.best_iou_quantiles["q90"] == pytest.approx(0.0625 * 0.9, abs=1e-3)  # of [0, 0.0625]
    assert rep.best_iou_quantiles["q10"] < 0.01  # cell 2: no region, IoU 0
