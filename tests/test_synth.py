"""The synthetic smear generator: determinism, class mix, ground truth, morphology."""

import filecmp
import json

import cv2
import numpy as np
import pytest

from activessf.config import SynthConfig
from activessf.data import synth
from activessf.data.cells import _grid, nucleus_mask, render_cell
from activessf.data.morphology import megakaryocyte_style
from activessf.imageio import read_rgb
from activessf.subtypes import SUBTYPES

SMALL = dict(images=5, width=512, height=384, labelled=55, megakaryocytes=(1, 3), rbc_coverage=0.2)


def small(**kw) -> SynthConfig:
    return SynthConfig(**{**SMALL, **kw})


def tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tmp_path):
    a = synth.generate(small(workers=1), tmp_path / "a", progress=False)
    b = synth.generate(small(workers=2), tmp_path / "b", progress=False)
    assert a == b
    files = tree(tmp_path / "a")
    assert files == tree(tmp_path / "b")
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert not mismatch and not errors and len(match) == len(files)
    c = synth.generate(small(seed=1, workers=1), tmp_path / "c", progress=False)
    assert (tmp_path / "c" / "smears" / "field_00000.png").read_bytes() != (
        tmp_path / "a" / "smears" / "field_00000.png").read_bytes()
    assert c != a


def test_layout_and_ground_truth(tmp_path):
    cfg = small()
    rec = synth.generate(cfg, tmp_path, progress=False)
    assert len(list((tmp_path / "smears").glob("field_*.png"))) == cfg.images
    assert rec == json.loads((tmp_path / "ground_truth.json").read_text())
    for f in rec["fields"]:
        img = read_rgb(tmp_path / f["file"])
        assert img.shape == (cfg.height, cfg.width, 3)
        types = {c["type"] for c in f["cells"]}
        assert {"megakaryocyte", "rbc"} <= types
        for c in f["cells"]:
            x, y, w, h = c["box"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= cfg.width and y + h <= cfg.height
            if c["type"] == "megakaryocyte":
                assert c["subtype"] in SUBTYPES and min(w, h) >= 60
            if c["type"] in ("leukocyte", "platelet"):
                assert max(w, h) < 70  # distractors below the paper's 70 px box
    # labelled crops: ImageFolder layout plus a CSV of path,label
    lines = (tmp_path / "labelled.csv").read_text().splitlines()
    assert lines[0] == "path,label" and len(lines) == 1 + len(rec["labelled"]) == 1 + cfg.labelled
    for row in rec["labelled"]:
        assert row["file"].startswith(f"labelled/{row['subtype']}/")
        assert read_rgb(tmp_path / row["file"]).shape[0] >= 60
    assert (tmp_path / "config.yaml").is_file()


def test_refuses_to_write_over_a_dataset(tmp_path):
    synth.generate(small(images=1, labelled=0), tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="already holds"):
        synth.generate(small(images=1, labelled=0), tmp_path, progress=False)


def test_class_mix_is_exact_over_the_dataset():
    cfg = SynthConfig(images=400)
    plan = synth.plan_field_subtypes(cfg, 0)
    names = [n for field in plan for n in field]
    lo, hi = cfg.megakaryocytes
    assert all(lo <= len(f) <= hi for f in plan)
    counts = np.array([names.count(n) for n in SUBTYPES])
    expected = synth.allocate(list(cfg.mix.values()), len(names))
    assert (counts == expected).all()
    share = dict(zip(SUBTYPES, counts / counts.sum()))
    assert share["G-MK"] == max(share.values()) and share["G-MK"] > 0.25  # dominant
    assert 0.01 <= share["CA-MK"] <= 0.02 and 0.01 <= share["HL-MK"] <= 0.02  # rare


def test_labelled_counts_keep_the_tail_and_a_floor():
    counts = synth.labelled_counts(SynthConfig(labelled=240))
    assert sum(counts.values()) == 240
    assert min(counts.values()) == 5 and max(counts, key=counts.get) == "G-MK"
    custom = synth.labelled_counts(SynthConfig(labelled=110, mix={"G-MK": 1.0}))
    assert custom["G-MK"] == 110 - 50 and all(custom[n] == 5 for n in SUBTYPES if n != "G-MK")


def test_allocate_sums_and_rounds_fairly():
    assert synth.allocate([0.5, 0.25, 0.25], 5).tolist() == [3, 1, 1]
    assert synth.allocate([1, 1, 1], 10).sum() == 10


def _cells(subtype, n=30, seed=0):
    rng = np.random.default_rng(seed)
    return [render_cell(rng, megakaryocyte_style(rng, subtype)) for _ in range(n)]


def _diameter(mask):
    ys, xs = np.nonzero(mask > 0.5)
    return ((ys.max() - ys.min()) + (xs.max() - xs.min())) / 2


def test_sizes_follow_the_subtype_names():
    size = {s: np.mean([_diameter(m) for _, m in _cells(s)]) for s in ("mMK", "S-MK", "N-MK", "HL-MK")}
    assert size["mMK"] < size["S-MK"] < size["N-MK"] < size["HL-MK"], size


def _nuclear_parts(kind, lobes, seed):
    rng = np.random.default_rng(seed)
    style = megakaryocyte_style(rng, {"multi": "MR-MK", "hyper": "HL-MK"}[kind])
    dy, dx = _grid(220)
    m = nucleus_mask(rng, dy, dx, style.__class__(**{**style.__dict__, "nucleus": kind, "lobes": lobes}),
                     style.diameter / 2, (0.0, 0.0))
    n, _ = cv2.connectedComponents((m > 0.5).astype(np.uint8))
    return n - 1


@pytest.mark.parametrize("lobes", [2, 4, 7])
def test_multinucleated_cells_have_separate_nuclei(lobes):
    assert all(_nuclear_parts("multi", lobes, seed) == lobes for seed in range(5))


def test_naked_nuclei_have_no_cytoplasm():
    rng = np.random.default_rng(0)
    style = megakaryocyte_style(rng, "NN-MK")
    assert float(style.cyto_od.sum()) == 0.0
    od, mask = render_cell(rng, style)
    # every covered pixel is dark nucleus: green OD of the nucleus stain, not pale cytoplasm
    assert np.median(od[mask > 0.5][:, 1]) > 0.6


def test_colour_alone_does_not_classify():
    """Subtypes differ by morphology, not a colour code: mean colour gives a poor classifier."""
    feats, labels = [], []
    for k, s in enumerate(SUBTYPES):
        for od, m in _cells(s, n=20, seed=k):
            feats.append((240 * np.exp(-np.log(10) * od))[m > 0.5].mean(0))
            labels.append(k)
    x, y = np.array(feats), np.array(labels)
    train = np.arange(len(y)) % 2 == 0
    centres = np.stack([x[train & (y == k)].mean(0) for k in range(len(SUBTYPES))])
    pred = np.argmin(((x[~train, None] - centres[None]) ** 2).sum(-1), 1)
    assert (pred == y[~train]).mean() < 0.5
