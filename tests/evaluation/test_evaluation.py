"""Folds, metrics and statistics of the evaluation protocol, on hand-checked numbers."""

import numpy as np
import pytest

from activessf.evaluation.folds import assign_folds, folds_digest, load_folds, save_folds
from activessf.evaluation.metrics import class_groups, fold_metrics, summarise
from activessf.evaluation.stats import mark, paired_ttest


def test_folds_are_stratified_deterministic_and_order_independent(tmp_path):
    ids = [f"s{i:03d}" for i in range(50)]
    labels = ["a"] * 30 + ["b"] * 15 + ["c"] * 5
    f1 = assign_folds(ids, labels, 5, seed=0)
    f2 = assign_folds(ids[::-1], labels[::-1], 5, seed=0)
    assert f1 == f2  # the same folds whatever order the samples come in
    assert f1 != assign_folds(ids, labels, 5, seed=1)
    for fold in range(5):
        members = [lab for i, lab in zip(ids, labels) if f1[i] == fold]
        assert members.count("a") == 6 and members.count("b") == 3 and members.count("c") == 1
    path = save_folds(f1, tmp_path / "folds.json", {"k": 5, "seed": 0})
    assert load_folds(path) == ([f1], {"k": 5, "seed": 0, "repeats": 1, "digest": folds_digest(f1)})
    with pytest.raises(ValueError, match="50 samples cannot fill 51 folds: .* lower evaluate.folds"):
        assign_folds(ids, labels, 51, seed=0)


def test_metrics_by_hand():
    classes = ["a", "b", "c"]
    y = [0, 0, 1, 2]
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    m = fold_metrics(y, probs, classes)
    assert m["accuracy"] == 0.75
    # class a: scores [.8,.3,.2,.1], positives idx 0,1 -> AP = (1/1 + 2/2) / 2 = 1.0
    # class b: scores [.1,.6,.7,.2], positive idx 2 (top score) -> AP = 1.0
    # class c: positive idx 3 has the top score .7 -> AP = 1.0
    assert m["pr_auc_per_class"] == {"a": 1.0, "b": 1.0, "c": 1.0} and m["pr_auc"] == 1.0
    # predictions [a, b, b, c]: F1 a = 2/3, b = 2/3, c = 1 -> macro 7/9
    assert m["f1"] == pytest.approx(7 / 9)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    s = summarise([m, {**m, "accuracy": 0.25}], classes)
    assert s["accuracy"]["mean"] == 0.5 and s["accuracy"]["std"] == pytest.approx(np.std([0.75, 0.25], ddof=1))
    assert s["confusion"][0] == [2, 2, 0]


def test_absent_class_is_left_out_of_the_macro_pr_auc():
    m = fold_metrics([0, 0, 1], np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0]]), ["a", "b", "c"])
    assert m["pr_auc_per_class"]["c"] is None and m["pr_auc"] == 1.0


def test_paired_ttest_matches_scipy_on_fixed_numbers():
    from scipy.stats import ttest_rel

    a = [0.7845, 0.7912, 0.7733, 0.8001, 0.7890]
    b = [0.8012, 0.8103, 0.7902, 0.8150, 0.8020]
    r = paired_ttest(a, b)
    ref = ttest_rel(b, a)
    assert r["t"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue)
    assert r["mean_diff"] == pytest.approx(np.mean(np.subtract(b, a)))
    assert mark(r["p"]) == "*" and mark(0.2) == ""
    assert paired_ttest(a, a)["p"] == 1.0
    with pytest.raises(ValueError, match="equal-length"):
        paired_ttest(a, b[:3])


def test_class_groups_from_frequency():
    groups = class_groups({"G-MK": 50, "N-MK": 20, "CA-MK": 2, "S-MK": 28}, rare_share=0.03, common_share=0.3)
    assert groups == {"G-MK": "common", "N-MK": "medium", "CA-MK": "rare", "S-MK": "medium"}


def test_corrected_resampled_ttest_against_hand_computed_numbers():
    """3 repeats of 2-fold CV, differences 0.01 0.03 0.02 0.04 0.00 0.02: mean 0.02, sample variance
    0.001 / 5 = 0.0002; 2-fold means n_test / n_train = 1, so se = sqrt((1/6 + 1) * 0.0002) = 0.015275
    and t = 1.3093 with 5 degrees of freedom, where the plain paired test says t = 3.4641."""
    import pytest
    from scipy.stats import t as student

    from activessf.evaluation.stats import corrected_ttest, paired_ttest

    a = [0.50, 0.50, 0.50, 0.50, 0.50, 0.50]
    b = [0.51, 0.53, 0.52, 0.54, 0.50, 0.52]
    r = corrected_ttest(a, b, test_train_ratio=1.0)
    assert r["t"] == pytest.approx(0.02 / (0.0002 * 7 / 6) ** 0.5, rel=1e-9) == pytest.approx(1.3093, abs=1e-4)
    assert r["p"] == pytest.approx(2 * student.sf(1.3093, 5), abs=1e-4) and 0.2 < r["p"] < 0.3
    assert r["ci"][0] == pytest.approx(0.02 - 2.5706 * 0.0152753, abs=1e-4) and r["ci"][0] < 0 < r["ci"][1]
    assert paired_ttest(a, b)["t"] == pytest.approx(3.4641, abs=1e-4)  # the uncorrected test: "significant"
    assert corrected_ttest(a, a, 1.0)["p"] == 1.0


def test_finetune_num_classes_when_set_must_match_the_labelled_set(tmp_path):
    import numpy as np
    import pytest

    from activessf.config import load_config
    from activessf.imageio import write_png
    from activessf.stages.finetune import labelled_set

    for name in ("G-MK", "S-MK"):
        for i in range(2):
            write_png(tmp_path / name / f"{i}.png", np.full((8, 8, 3), 100 + i, np.uint8))
    with pytest.raises(ValueError, match="has 2 classes .* finetune.num_classes is 11"):
        labelled_set(tmp_path, load_config(overrides=["finetune.num_classes=11"]), None)
    data = labelled_set(tmp_path, load_config(overrides=["evaluate.folds=2"]), None)  # None: as they come
    assert data["classes"] == ["G-MK", "S-MK"] and data["k"] == 2
