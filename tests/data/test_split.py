"""`activessf split`: one stratified, seeded, disjoint split of the labelled set into tune.csv and eval.csv."""

import json
import random

import pytest

import conftest
from activessf.data.labelled import cell_id, list_labelled
from activessf.data.split import split_labelled, split_part, write_split

COUNTS = {"A": 20, "B": 12, "C": 3}  # C: too small to give a share to tuning and keep 5 for evaluation


def write_cells(root, counts=COUNTS, seed=0):
    return conftest.write_cells(root, counts, 12, seed)


def by_class(pairs):
    return {c: sum(1 for _, label in pairs if label == c) for c in sorted({label for _, label in pairs})}


def test_the_split_is_stratified_disjoint_and_complete(tmp_path):
    pairs = list_labelled(write_cells(tmp_path / "lab"))
    split = split_labelled(pairs, share=0.3, seed=0, min_per_class=5)
    assert by_class(split.tune) == {"A": 6, "B": 4}  # round(0.3 n) of each class
    assert by_class(split.eval) == {"A": 14, "B": 8, "C": 3} and split.eval_only == {"C": 3}
    tune, ev = {cell_id(p) for p, _ in split.tune}, {cell_id(p) for p, _ in split.eval}
    assert not tune & ev and len(tune | ev) == len(pairs) == 35


def test_the_split_is_deterministic_whatever_the_order_and_follows_its_seed(tmp_path):
    pairs = list_labelled(write_cells(tmp_path / "lab"))
    shuffled = pairs[:]
    random.Random(3).shuffle(shuffled)
    a, b = split_labelled(pairs, seed=0), split_labelled(shuffled, seed=0)
    assert sorted(a.tune) == sorted(b.tune) and sorted(a.eval) == sorted(b.eval)
    assert sorted(split_labelled(pairs, seed=1).tune) != sorted(a.tune)


def test_copies_of_one_image_land_on_one_side(tmp_path):
    root = write_cells(tmp_path / "lab")
    for i in range(20):  # every A cell again under another name
        (root / "A" / f"copy{i:03d}.png").write_bytes((root / "A" / f"{i:03d}.png").read_bytes())
    split = split_labelled(list_labelled(root), seed=0)
    tune, ev = {cell_id(p) for p, _ in split.tune}, {cell_id(p) for p, _ in split.eval}
    assert not tune & ev and by_class(split.tune)["A"] == 12  # 6 cells, each twice


def test_the_files_read_back_and_name_their_part(tmp_path):
    labelled = write_cells(tmp_path / "lab")
    record = write_split(split_labelled(list_labelled(labelled)), tmp_path / "split", {"seed": 0})
    tune, ev = list_labelled(tmp_path / "split" / "tune.csv"), list_labelled(tmp_path / "split" / "eval.csv")
    assert len(tune) == record["tune"]["cells"] == 10 and len(ev) == record["eval"]["cells"] == 25
    assert sorted(tune + ev) == sorted((p.resolve(), label) for p, label in list_labelled(labelled))
    assert json.loads((tmp_path / "split" / "split.json").read_text())["eval_only_classes"] == {"C": 3}
    assert split_part(tmp_path / "split" / "eval.csv") == ("eval", tmp_path / "split")
    assert split_part(tmp_path / "split" / "tune.csv")[0] == "tune" and split_part(labelled) is None


def test_the_command_writes_the_split_and_keeps_an_existing_one(tmp_path, capsys):
    from activessf.cli import main

    labelled = write_cells(tmp_path / "lab")
    args = ["split", "--labelled", str(labelled), "--out", str(tmp_path / "split"), "--share", "0.5"]
    assert main(args) == 0
    assert "evaluated only (too small to split): C" in capsys.readouterr().out
    assert len(list_labelled(tmp_path / "split" / "tune.csv")) == 16  # half of A (10) and of B (6)
    assert main(args) != 0 and "already holds outputs" in capsys.readouterr().err  # a split is made once
    with pytest.raises(ValueError, match="share must be between 0 and 1"):
        split_labelled(list_labelled(labelled), share=1.0)
