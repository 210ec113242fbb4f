"""Repeated stratified k-fold (evaluate.repeats), classes with fewer members than k, and the metrics,
comparisons and report over repeats x k splits, on tiny inputs without Ray."""

import hashlib
import json
import logging

import numpy as np
import pytest

from activessf.evaluation.folds import (assign_folds, fold_coverage, folds_digest, load_folds, repeated_folds,
                                        save_folds)

IDS = [f"s{i:03d}" for i in range(40)]
LABELS = ["a"] * 24 + ["b"] * 13 + ["c"] * 2 + ["d"] * 1  # c and d: fewer members than k = 5


def per_fold_counts(assignment: dict, label: str, k: int) -> list[int]:
    return [sum(1 for i, lab in zip(IDS, LABELS) if lab == label and assignment[i] == f) for f in range(k)]


def test_folds_are_scikit_learns_stratified_k_fold():
    """The folds, hence the digests, of runs made before repeats (which called StratifiedKFold itself)."""
    from sklearn.model_selection import StratifiedKFold

    ids, labels = IDS[:37], LABELS[:37]  # a and b only: scikit-learn takes it
    for seed in (0, 3):
        expected = {}
        for f, (_, test) in enumerate(StratifiedKFold(5, shuffle=True, random_state=seed).split(ids, labels)):
            expected.update({ids[i]: f for i in test})
        assert assign_folds(ids, labels, 5, seed) == expected


def test_repeats_are_deterministic_different_and_each_a_stratified_partition():
    folds = repeated_folds(IDS, LABELS, 5, repeats=3, seed=7)
    assert folds == repeated_folds(IDS, LABELS, 5, 3, 7)
    shuffled = np.random.default_rng(0).permutation(len(IDS))
    assert folds == repeated_folds([IDS[i] for i in shuffled], [LABELS[i] for i in shuffled], 5, 3, 7)
    assert folds[0] == assign_folds(IDS, LABELS, 5, 7) and folds[1] == assign_folds(IDS, LABELS, 5, 8)
    assert folds[0] != folds[1] and folds[1] != folds[2] and folds[0] != folds[2]
    for assignment in folds:
        assert set(assignment) == set(IDS) and set(assignment.values()) == set(range(5))
        for label in "abcd":
            counts = per_fold_counts(assignment, label, 5)
            assert max(counts) - min(counts) <= 1 and sum(counts) == LABELS.count(label)
    digests = {folds_digest(folds), folds_digest(folds[:2]), folds_digest(folds[0])}
    assert len(digests) == 3 and folds_digest(folds[:1]) == folds_digest(folds[0])


def test_save_load_round_trip_and_a_folds_json_from_before_repeats(tmp_path):
    folds = repeated_folds(IDS, LABELS, 5, 2, 0)
    path = save_folds(folds, tmp_path / "folds.json", {"k": 5, "seed": 0})
    loaded, meta = load_folds(path)
    assert loaded == folds and meta["repeats"] == 2 and meta["digest"] == folds_digest(folds)
    # the layout and digest of a single assignment, as written before repeats existed
    old = tmp_path / "old.json"
    digest = hashlib.sha256(json.dumps(sorted(folds[0].items())).encode()).hexdigest()[:16]
    old.write_text(json.dumps({"k": 5, "seed": 0, "labelled": "L", "digest": digest,
                               "folds": dict(sorted(folds[0].items()))}, indent=1))
    assert load_folds(old) == ([folds[0]], {"k": 5, "seed": 0, "labelled": "L", "digest": digest})
    assert folds_digest(folds[0]) == digest
    assert json.loads(save_folds(folds[0], tmp_path / "new.json", {}).read_text())["digest"] == digest
    data = json.loads(path.read_text())
    data["folds"][1]["s000"] = (data["folds"][1]["s000"] + 1) % 5
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="digest mismatch"):
        load_folds(path)


def test_classes_smaller_than_k_are_held_out_in_fewer_folds_and_reported():
    folds = repeated_folds(IDS, LABELS, 5, 2, 0)
    for assignment in folds:
        assert sorted(per_fold_counts(assignment, "c", 5)) == [0, 0, 0, 1, 1]
        assert sorted(per_fold_counts(assignment, "d", 5)) == [0, 0, 0, 0, 1]
    cover = fold_coverage(folds, IDS, LABELS, 5)
    assert cover["small_classes"] == {"c": 2, "d": 1}
    assert set(cover["absent_classes"]) == {"c", "d"}
    assert len(cover["absent_classes"]["c"]) == 2 * 3 and len(cover["absent_classes"]["d"]) == 2 * 4
    for r, f in cover["absent_classes"]["d"]:
        assert per_fold_counts(folds[r], "d", 5)[f] == 0
    # every class smaller than k still works while the set fills the folds; fewer samples than k does not
    tiny = assign_folds(["x1", "x2", "y1", "y2", "z1"], ["x", "x", "y", "y", "z"], 5, 0)
    assert sorted(tiny.values()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="5 samples cannot fill 6 folds"):
        assign_folds(list(tiny), ["x", "x", "y", "y", "z"], 6, 0)


def fake_results(folds: list[dict], y: np.ndarray, skill: float, seed: int) -> list[dict]:
    """Held-out predictions of every (repeat, fold) split, as good as ``skill``."""
    rng, classes, out = np.random.default_rng(seed), int(y.max()) + 1, []
    for r, assignment in enumerate(folds):
        for f in range(5):
            idx = np.array([i for i, s in enumerate(IDS) if assignment[s] == f])
            logits = rng.normal(size=(len(idx), classes)) + skill * np.eye(classes)[y[idx]]
            out.append({"split": (r, f), "idx": idx[::-1], "loss": [1.0],
                        "probs": np.exp(logits[::-1]) / np.exp(logits[::-1]).sum(1, keepdims=True)})
    return out


def test_metrics_comparison_and_report_over_repeats_with_absent_classes(tmp_path):
    from activessf.config import load_config
    from activessf.evaluation.report import compare_runs, format_comparison, write_report
    from activessf.evaluation.stats import corrected_ttest, paired_ttest
    from activessf.stages.finetune import assemble

    classes = ["a", "b", "c", "d"]
    folds = repeated_folds(IDS, LABELS, 5, 2, 0)
    y = np.array([classes.index(lab) for lab in LABELS])
    data = {"y": y, "ids": IDS, "classes": classes, "counts": np.bincount(y), "folds": folds, "k": 5, "repeats": 2,
            "coverage": fold_coverage(folds, IDS, LABELS, 5)}
    ev = load_config().evaluate
    runs = {name: {**assemble(fake_results(folds, y, skill, seed), data, ev), "name": name,
                   "folds_digest": folds_digest(folds)} for name, skill, seed in (("A", 0.5, 1), ("B", 2.0, 2))}
    a, b = runs["A"], runs["B"]
    assert [(m["repeat"], m["fold"]) for m in a["folds"]] == [(r, f) for r in range(2) for f in range(5)]
    assert a["k"] == a["summary"]["k"] == 5 and a["repeats"] == a["summary"]["repeats"] == 2
    assert a["small_classes"] == {"c": 2, "d": 1} and len(a["absent_classes"]["d"]) == 8
    assert len(a["summary"]["pr_auc"]["folds"]) == 10 and len(a["summary"]["pr_auc_per_class"]["d"]["folds"]) == 2
    for r, f in a["absent_classes"]["d"]:
        assert a["folds"][5 * r + f]["pr_auc_per_class"]["d"] is None  # left out of that split only
    b["folds"] = b["folds"][::-1]  # pairing goes by (repeat, fold), not by position
    c = compare_runs(a, b)
    assert c["k"] == 5 and c["repeats"] == 2 and c["metrics"]["pr_auc"]["n"] == 10
    fa = [m["pr_auc"] for m in a["folds"]]
    fb = [m["pr_auc"] for m in sorted(b["folds"], key=lambda m: (m["repeat"], m["fold"]))]
    assert c["metrics"]["pr_auc"]["corrected"] == corrected_ttest(fa, fb, test_train_ratio=1 / 4)
    assert c["metrics"]["pr_auc"]["p"] == paired_ttest(fa, fb)["p"]
    assert c["metrics"]["pr_auc"]["significant"] == (c["metrics"]["pr_auc"]["corrected"]["p"] < 0.05)
    assert c["per_class"]["d"]["n"] == 2 and c["per_class"]["c"]["n"] == 4  # the splits that hold them out
    text = format_comparison(c)
    assert "2 x 5 folds" in text and "PR-AUC d" in text and "nan" not in text.lower()
    paths = write_report(runs, tmp_path, "repeats", {"B": "A"})
    json.dumps(runs, allow_nan=False)  # no NaN in the records ...
    json.loads(paths["md"].with_name("report.json").read_text(), parse_constant=pytest.fail)  # ... nor the report
    assert "nan" not in paths["md"].read_text().lower()


def test_labelled_set_with_repeats_a_single_member_class_and_a_given_folds_file(tmp_path, caplog):
    from activessf.config import load_config
    from activessf.imageio import write_png
    from activessf.stages.finetune import fold_split, labelled_set

    for name, n in (("G-MK", 5), ("CA-MK", 1)):
        for i in range(n):
            write_png(tmp_path / "cells" / name / f"{i}.png", np.full((8, 8, 3), 10 * i, np.uint8))
    cfg = load_config(overrides=["evaluate.folds=3", "evaluate.repeats=2", "finetune.image_size=16"])
    with caplog.at_level(logging.WARNING):
        data = labelled_set(tmp_path / "cells", cfg, None)
    assert data["k"] == 3 and data["repeats"] == 2 and data["coverage"]["small_classes"] == {"CA-MK": 1}
    assert "CA-MK (1)" in caplog.text and "r1-fold" in caplog.text
    _, held = fold_split(data["images"], (1, 2))
    assert sorted(held["idx"].tolist()) == [i for i, s in enumerate(data["ids"]) if data["folds"][1][s] == 2]
    path = save_folds(data["folds"], tmp_path / "folds.json", {"k": 3, "seed": 0})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        given = labelled_set(tmp_path / "cells", load_config(), path)  # evaluate.folds 5, repeats 1: the file decides
    assert (given["k"], given["repeats"], given["folds"]) == (3, 2, data["folds"])
    assert "holds 2 repeat(s) of 3-fold" in caplog.text
