"""Selection evidence: enrichment and distractor shares, and the random baseline."""

import numpy as np
import pytest

from activessf.selection.evaluate import DISTRACTOR, selection_evidence


def test_enrichment_and_distractors_by_hand():
    classes = np.array(["rare", "common", "common", "common", DISTRACTOR, DISTRACTOR], dtype=object)
    selected = np.array([True, True, False, False, True, False])
    e = selection_evidence(classes, selected, {"rare"}, draws=200)
    assert e["rare_share_filtered"] == pytest.approx(1 / 4)  # among real cells
    assert e["rare_share_selected"] == pytest.approx(1 / 2)
    assert e["rare_enrichment"] == pytest.approx(2.0)
    assert e["distractor_share_filtered"] == pytest.approx(2 / 6)
    assert e["distractor_share_selected"] == pytest.approx(1 / 3)
    assert e["counts_selected"] == {"common": 1, "distractor": 1, "rare": 1}
    r = e["random"]
    assert r["draws"] == 200 and r["distractor_share_mean"] == pytest.approx(1 / 3, abs=0.05)
    assert r["rare_share_p2_5"] <= r["rare_share_mean"] <= r["rare_share_p97_5"]


def test_random_baseline_is_seeded_and_empty_selection_is_defined():
    classes = np.array(["a", "b"] * 20, dtype=object)
    sel = np.arange(40) % 3 == 0
    assert selection_evidence(classes, sel, {"a"}, seed=1) == selection_evidence(classes, sel, {"a"}, seed=1)
    e = selection_evidence(classes, np.zeros(40, bool), {"a"})
    assert e["selected"] == 0 and np.isnan(e["rare_share_selected"]) and e["random"]["draws"] == 0
