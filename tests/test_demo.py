"""The demo's synthetic dataset. The demo itself runs end to end as the Ray job in test_job_submit.py
(one full run proves both: `ray job submit` with token auth, and every stage of the demo)."""

import pytest

from activessf.config import SynthConfig
from activessf.demo import ensure_synthetic


def test_dataset_is_reused_when_settings_match_and_replaced_when_not(tmp_path):
    cfg = SynthConfig(images=1, labelled=0, width=256, height=256, megakaryocytes=(1, 1))
    first = ensure_synthetic(cfg, tmp_path / "data", progress=False)
    stamp = (tmp_path / "data" / "smears" / "field_00000.png").stat().st_mtime_ns
    assert ensure_synthetic(cfg.model_copy(update={"workers": 2}), tmp_path / "data", progress=False) == first
    assert (tmp_path / "data" / "smears" / "field_00000.png").stat().st_mtime_ns == stamp
    other = ensure_synthetic(cfg.model_copy(update={"seed": 3}), tmp_path / "data", progress=False)
    assert other["seed"] == 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        ensure_synthetic(cfg, tmp_path / "mine", progress=False)
