"""The champion policy on fixed numbers: no champion, better, not better, other folds, same weights, --force."""

import pytest
from scipy.stats import ttest_rel

from activessf.serving.promotion import Evidence, decide, evidence_from_metrics

CHAMP = Evidence((0.70, 0.72, 0.69, 0.71, 0.70), "folds-a", "1", "w1")


def test_no_champion_promotes():
    d = decide(Evidence((0.5, 0.6), "folds-a", "1", "w1"), None)
    assert d.promote and d.reason == "no champion yet" and not d.forced


def test_a_consistent_gain_on_the_same_folds_promotes_with_scipys_p():
    cand = Evidence((0.74, 0.75, 0.73, 0.76, 0.74), "folds-a", "2", "w2")
    d = decide(cand, CHAMP, level=0.05)
    expected = ttest_rel(cand.pr_auc_folds, CHAMP.pr_auc_folds).pvalue
    assert d.promote and d.p_value == pytest.approx(expected) and d.p_value < 0.05
    assert d.mean_diff == pytest.approx(0.744 - 0.704) and d.champion_version == "1"
    assert "beats the champion" in d.reason


def test_a_noisy_or_negative_difference_keeps_the_champion():
    noisy = Evidence((0.80, 0.65, 0.75, 0.66, 0.72), "folds-a", "2", "w2")  # higher mean, p > 0.05
    d = decide(noisy, CHAMP)
    assert not d.promote and d.p_value > 0.05 and "does not beat" in d.reason
    worse = Evidence((0.60, 0.61, 0.62, 0.60, 0.61), "folds-a", "3", "w3")
    d = decide(worse, CHAMP)
    assert not d.promote and d.mean_diff < 0


def test_other_folds_are_not_comparable_unless_forced():
    other = Evidence((0.9, 0.9, 0.9, 0.9, 0.91), "folds-b", "2", "w2")
    d = decide(other, CHAMP)
    assert not d.promote and "different folds" in d.reason and "--folds" in d.reason
    forced = decide(other, CHAMP, force=True)
    assert forced.promote and forced.forced and "--force" in forced.reason


def test_the_same_weights_are_not_promoted_again():
    d = decide(Evidence(CHAMP.pr_auc_folds, "folds-a", "2", "w1"), CHAMP)
    assert not d.promote and "same weights" in d.reason


def test_evidence_from_a_metrics_record():
    ev = evidence_from_metrics({"summary": {"pr_auc": {"folds": [0.5, 0.7]}}, "folds_digest": "abc",
                                "model": {"digest": "d"}}, "4")
    assert ev == Evidence((0.5, 0.7), "abc", "4", "d") and ev.mean == pytest.approx(0.6)
