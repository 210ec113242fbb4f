"""Table II's full layout (baselines + four SSL methods w/o and w/ ActiveSSF) and Table III, from fold records."""

import numpy as np
import pytest

from activessf.evaluation.metrics import fold_metrics, summarise
from activessf.evaluation.report import write_report
from activessf.ablation import pairs_for, pick_rows, rows_for, table3_rows

CLASSES = ["a", "b", "c"]
FOLDS = 5


def run_record(name: str, skill: float) -> dict:
    """A fine-tuning record on fixed folds whose predictions are as good as ``skill``."""
    folds = []
    for k in range(FOLDS):
        rng = np.random.default_rng(k)  # the same labels in every run: paired folds
        y = rng.integers(0, len(CLASSES), 60)
        logits = rng.normal(size=(60, len(CLASSES))) + skill * np.eye(len(CLASSES))[y]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        folds.append({"repeat": 0, "fold": k, **fold_metrics(y, probs, CLASSES)})
    return {"name": name, "classes": CLASSES, "folds_digest": "same", "folds": folds, "summary": summarise(folds, CLASSES),
            "class_groups": {"a": "common", "b": "medium", "c": "rare"}}


def test_all_four_methods_with_and_without_activessf(tmp_path):
    rows = rows_for(["mae", "mocov3", "convmae", "mixmim"], baselines=["resnet", "vit"])
    assert [r["name"] for r in rows] == [
        "ResNet", "ViT", "MAE", "MAE + CRF", "MAE + CRF + ASS", "MoCo v3", "MoCo v3 + CRF + ASS",
        "ConvMAE", "ConvMAE + CRF + ASS", "MixMIM", "MixMIM + CRF + ASS"]
    assert {r["source"] for r in rows if r["method"]} == {"fields", "filtered", "selected"}
    # the selected rows are the better ones here, strongly so for ConvMAE (the paper's best)
    skill = {"ResNet": 0.5, "ViT": 0.3, "MAE + CRF + ASS": 1.5, "ConvMAE + CRF + ASS": 4.0}
    runs = {r["name"]: run_record(r["name"], skill.get(r["name"], 1.0)) for r in rows}
    pairs = pairs_for(rows)
    assert pairs["ConvMAE + CRF + ASS"] == "ConvMAE" and pairs["MAE + CRF"] == "MAE" and pairs["MAE"] == "ViT"
    labels = {r["name"]: r["table2"] for r in rows if r["table2"]}
    write_report(runs, tmp_path, "layout", pairs, ablation=table3_rows(rows), table2=labels)

    md = (tmp_path / "report.md").read_text()
    table2 = md.split("## Table II")[1].split("## Table III")[0]
    body = [line.split("|")[1].strip() for line in table2.splitlines() if line.startswith("| ") and "Method" not in line]
    assert body == ["ResNet", "ViT", "MAE w/o ActiveSSF", "MAE w/ ActiveSSF", "MoCo v3 w/o ActiveSSF",
                    "MoCo v3 w/ ActiveSSF", "ConvMAE w/o ActiveSSF", "ConvMAE w/ ActiveSSF",
                    "MixMIM w/o ActiveSSF", "MixMIM w/ ActiveSSF"]
    row = {line.split("|")[1].strip(): line for line in table2.splitlines() if line.startswith("| ")}
    assert row["ConvMAE w/ ActiveSSF"].count("*") == 3  # significant on accuracy, PR-AUC and F1
    assert "*" not in row["MixMIM w/ ActiveSSF"] and "*" not in row["ResNet"]  # same skill / no baseline
    table3 = md.split("## Table III")[1].split("```")[0]
    assert table3.count("✓") == 1 + 2 + 3 + 4 and "MoCo" not in table3
    assert "ConvMAE + CRF + ASS vs ConvMAE" in md  # the paired t-test behind the mark
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_unknown_rows_are_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown ablation rows \['simclr'\].*convmae"):
        rows_for(["simclr"])
    with pytest.raises(ValueError, match=r"\['resnet18'\]"):
        rows_for(["mae"], baselines=["resnet18"])


def test_a_subset_of_rows_pairs_with_what_is_there():
    rows = pick_rows(rows_for(["mae"]), ["ViT", "MAE + CRF + ASS"])
    assert [r["name"] for r in rows] == ["ViT", "MAE + CRF + ASS"]  # report order, whatever order asked
    assert pairs_for(rows) == {"MAE + CRF + ASS": "ViT"}  # no w/o-ActiveSSF row here: against the scratch ViT
    assert pairs_for(rows_for(["mae"]))["MAE + CRF + ASS"] == "MAE"
    with pytest.raises(ValueError, match=r"unknown ablation rows \['MAE \+ ASS'\].*'MAE \+ CRF \+ ASS'"):
        pick_rows(rows_for(["mae"]), ["MAE + ASS"])


def test_ablation_rows_pretrain_for_the_steps_the_selected_pool_takes(tmp_path):
    """evaluate.equal_steps: every row gets the optimiser steps of the selected regions at pretrain.epochs
    (pretrain.steps when set; None, i.e. epochs, when switched off); the report lists each row's budget."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from activessf.ablation import equal_budgets, format_budgets, pretrain_steps, row_pretrain
    from activessf.config import ConfigError, load_config

    (tmp_path / "selection").mkdir()
    pq.write_table(pa.table({"region_id": [str(i) for i in range(100)], "selected": [i < 40 for i in range(100)]}),
                   tmp_path / "selection" / "part-0.parquet")
    cfg = load_config(overrides=["pretrain.batch_size=8", "pretrain.epochs=10"])
    assert pretrain_steps(cfg, tmp_path, workers=1) == 50  # 40 selected regions: 5 steps per epoch, 10 epochs
    assert pretrain_steps(load_config(overrides=["pretrain.steps=77"]), tmp_path, 1) == 77
    assert pretrain_steps(load_config(overrides=["pretrain.images=801", "pretrain.batch_size=8"]), tmp_path, 1) == 101
    with pytest.raises(ConfigError, match="keep one"):
        load_config(overrides=["pretrain.images=800", "pretrain.steps=100"])
    assert pretrain_steps(load_config(overrides=["evaluate.equal_steps=false"]), tmp_path, 1) is None
    base = json.loads(json.dumps(cfg.model_dump(mode="json")))
    assert row_pretrain(base, {"method": "mae", "source": "fields"}, 50)["pretrain"]["steps"] == 50
    text = format_budgets({"MAE": {"epochs": 1, "steps": 60, "images_seen": 480},
                           "MAE + CRF + ASS": {"epochs": 10, "steps": 50, "images_seen": 400}}, 50)
    assert "| MAE + CRF + ASS | 10 | 50 | 400 | n/a |" in text and "unequal steps" in text
    # pretrain.steps in whole epochs: a large pool overshoots the target within its last epoch, and that is equal
    close = {"MAE": {"epochs": 2, "steps": 60, "steps_per_epoch": 30, "images_seen": 480, "seconds": 12.5},
             "MAE + CRF + ASS": {"epochs": 10, "steps": 50, "steps_per_epoch": 5, "images_seen": 400}}
    assert equal_budgets(close, 50) and "unequal" not in format_budgets(close, 50)
    assert "at most 20.0% over" in format_budgets(close, 50) and "| MAE | 2 | 60 | 480 | 12.5 |" in format_budgets(close, 50)
    close["MAE"].update(epochs=3, steps=90)  # a whole epoch more than the target needed
    assert not equal_budgets(close, 50) and "unequal steps" in format_budgets(close, 50)


def test_report_shows_pr_curves_and_misclassified_cells_of_the_figure_pair(tmp_path):
    """Fig. 4 from the runs' outputs (predictions.parquet, metrics.json, folds.json naming the cells); a run
    without an output directory, or without predictions, is left out."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from activessf.imageio import read_rgb, write_png

    cells = tmp_path / "cells"
    for c in CLASSES:
        write_png(cells / c / "0.png", np.full((16, 16, 3), 120, np.uint8))
    runs = {name: run_record(name, skill) for name, skill in (("base", 0.2), ("ours", 2.0), ("other", 1.0))}
    dirs = {}
    for name in ("base", "ours"):
        d = dirs[name] = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(runs[name]))
        (d / "folds.json").write_text(json.dumps({"labelled": str(cells)}))
        probs = np.eye(3)[[1, 2, 0]] * 0.8 + 0.1 if name == "base" else np.eye(3) * 0.8 + 0.1  # base: all wrong
        pq.write_table(pa.table({"id": [f"{c}/0.png" for c in CLASSES], "label": CLASSES,
                                 **{f"p_{c}": probs[:, i] for i, c in enumerate(CLASSES)}}), d / "predictions.parquet")
    dirs["other"] = tmp_path / "empty"  # no predictions: no pictures
    write_report(runs, tmp_path / "r", "fig4", {"ours": "base"}, run_dirs=dirs)
    md = (tmp_path / "r" / "report.md").read_text()
    links = [line for line in md.split("## Fig. 4")[1].splitlines() if line.startswith("![")]
    assert links == ["![base: pr curves](pictures/base_pr_curves.png)",
                     "![base: misclassified](pictures/base_misclassified.png)",
                     "![ours: pr curves](pictures/ours_pr_curves.png)",
                     "![ours: misclassified](pictures/ours_misclassified.png)"]
    wide = {p: read_rgb(tmp_path / "r" / "pictures" / f"{p}_misclassified.png").shape[1] for p in ("base", "ours")}
    assert wide == {"base": 6 + 3 * 118, "ours": 360}  # ours made no mistake: a note instead
    assert (tmp_path / "r" / "report.html").read_text().count("data:image/png;base64,") == 5
    write_report(runs, tmp_path / "plain", "no dirs", {"ours": "base"})
    assert "Fig. 4" not in (tmp_path / "plain" / "report.md").read_text()

