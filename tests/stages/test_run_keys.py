"""Ray Train runs are named by their inputs: a rerun resumes only what trained on the same data and settings.

A bootstrap round or an ablation row that reuses a run name on another selection must start afresh, not
resume (and so silently return) the encoder or the folds of the run that trained on the first selection.
"""

import pyarrow as pa
import pyarrow.parquet as pq

from activessf.config import load_config
from activessf.stages.finetune import inputs_key as finetune_key
from activessf.stages.pretrain import inputs_key as pretrain_key


def selection(root, keep):
    (root / "selection").mkdir(parents=True)
    pq.write_table(pa.table({"region_id": [str(i) for i in range(10)], "selected": [i in keep for i in range(10)]}),
                   root / "selection" / "part-0.parquet")
    return root


def test_a_pretraining_run_is_keyed_by_its_selection_settings_and_source(tmp_path):
    p = load_config(overrides=["pretrain.source=selected"]).pretrain
    a, b = selection(tmp_path / "a", {1, 2, 3}), selection(tmp_path / "b", {1, 2, 4})
    same = selection(tmp_path / "same", {3, 2, 1})
    key = pretrain_key(p, tmp_path / "regions", a, None, 3)
    assert key == pretrain_key(p, tmp_path / "regions", same, None, 3)  # the same regions kept: resumes
    assert key != pretrain_key(p, tmp_path / "regions", b, None, 3)  # another selection: a new run
    assert key != pretrain_key(p.model_copy(update={"epochs": 7}), tmp_path / "regions", a, None, 3)
    filtered = p.model_copy(update={"source": "filtered"})
    assert pretrain_key(filtered, tmp_path / "regions", None, None, 10) != \
        pretrain_key(filtered, tmp_path / "other", None, None, 10)


def test_a_fine_tuning_run_is_keyed_by_its_settings_cells_and_splits():
    ft = load_config().finetune
    data = {"folds": {"x": 0, "y": 1}, "ids": ["x", "y"]}
    assert finetune_key(ft, data) == finetune_key(ft, {"folds": {"y": 1, "x": 0}, "ids": ["y", "x"]})
    assert finetune_key(ft, data) != finetune_key(ft, {"folds": {"x": 1, "y": 0}, "ids": ["x", "y"]})
    assert finetune_key(ft, data) != finetune_key(ft.model_copy(update={"epochs": 3}), data)
