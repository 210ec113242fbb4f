"""Evaluation refuses the labelled cells that the features or the sweep behind its selection learned from.

The records are the stages' own files (features' label_ids.json, a selection's config.yaml and report.json,
an encoder's encoder.json), written here by hand or by the real `features` command; nothing trains on Ray.
"""

import json

import pytest
import yaml

from activessf.config import load_config
import conftest
from activessf.data.labelled import list_labelled
from activessf.data.split import split_labelled, write_split
from activessf.evaluation.provenance import (LabelLeak, check_evaluation, label_ids_record, selection_sources,
                                             weights_sources, write_label_ids)
from activessf.features.backbone import file_digest


def write_cells(root, counts={"A": 20, "B": 12, "C": 3}, seed=0):
    """35 distinct cells."""
    return conftest.write_cells(root, counts, 24, seed)


def features(folder, learned_from):
    """What `activessf features` leaves: weights and label_ids.json of the cells of ``learned_from``."""
    folder.mkdir(parents=True)
    (folder / "net_supervised_on_T.pt").write_bytes(b"weights of " + str(folder).encode())
    write_label_ids(folder, label_ids_record(list_labelled(learned_from), "supervised features", learned_from))
    return folder / "net_supervised_on_T.pt"


def selection(folder, weights=None, tuned_on=(), digest=None):
    """What `activessf select` leaves: config.yaml (embed.weights, sweep.tuned_on) and report.json."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"embed": {"weights": weights and str(weights)},
                                                        "sweep": {"tuned_on": [str(t) for t in tuned_on]}}))
    digest = digest or (file_digest(weights) if weights else "random-init")
    (folder / "report.json").write_text(json.dumps({"prototypes": {"weights_digest": digest}}))
    return folder


def encoder(folder, selected_from):
    """What `activessf pretrain` leaves, pretrained on the regions of a selection."""
    folder.mkdir(parents=True)
    (folder / "encoder.pt").write_bytes(b"encoder of " + str(folder).encode())
    (folder / "encoder.json").write_text(json.dumps({"source": "selected", "selection": str(selected_from)}))
    return folder


@pytest.fixture
def labelled(tmp_path):
    return write_cells(tmp_path / "labelled")


@pytest.fixture
def split(labelled, tmp_path):
    write_split(split_labelled(list_labelled(labelled), share=0.3, seed=0), tmp_path / "split", {})
    return tmp_path / "split"


def test_features_trained_on_the_evaluated_cells_are_refused_with_the_fix(labelled, tmp_path):
    enc = encoder(tmp_path / "enc", selection(tmp_path / "sel", features(tmp_path / "f", labelled)))
    with pytest.raises(LabelLeak, match=r"35 of the 35 cells evaluated .* supervised features .*activessf split"):
        check_evaluation(labelled, weights_sources(str(enc)))
    cfg = load_config(overrides=[f"finetune.init={enc}", f"run.work_dir={tmp_path / 'w'}"])
    from activessf.stages.finetune import run_finetune

    with pytest.raises(LabelLeak, match="tune.csv"):  # the stage refuses before anything trains or is written
        run_finetune(cfg, labelled, tmp_path / "ft")
    assert not (tmp_path / "ft").exists()
    allowed = check_evaluation(labelled, weights_sources(str(enc)), allow_leak=True)
    assert allowed["status"] == "leak allowed" and allowed["leaked_cells"] == 35


def test_a_proper_split_passes_and_is_recorded(split, tmp_path):
    enc = encoder(tmp_path / "enc", selection(tmp_path / "sel", features(tmp_path / "f", split / "tune.csv")))
    record = check_evaluation(split / "eval.csv", weights_sources(str(enc)))
    assert record["status"] == "disjoint" and record["leaked_cells"] == 0 and record["evaluated_cells"] == 25
    assert record["sources"][0]["cells"] == 10 and record["sources"][0]["record"].endswith("label_ids.json")
    with pytest.raises(LabelLeak, match="10 of the 35"):  # the whole set includes the tune part
        check_evaluation(split.parent / "labelled", weights_sources(str(enc)))


def test_a_sweep_tuned_on_the_evaluated_cells_is_refused(labelled, split, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_label_ids(sweep, label_ids_record(list_labelled(labelled), "selection sweep probe", labelled))
    sel = selection(tmp_path / "sel", tuned_on=[sweep / "label_ids.json"])  # random-init features
    with pytest.raises(LabelLeak, match=r"25 of the 25 cells .* selection sweep"):
        check_evaluation(split / "eval.csv", selection_sources(sel))
    write_label_ids(sweep, label_ids_record(list_labelled(split / "tune.csv"), "selection sweep probe", "tune"))
    assert check_evaluation(split / "eval.csv", selection_sources(sel))["status"] == "disjoint"


def test_bootstrap_rounds_are_followed_back_to_the_features(labelled, tmp_path):
    """Round 1 embeds with round 0's encoder, which was pretrained on a selection made with supervised features."""
    round0 = encoder(tmp_path / "r0" / "enc", selection(tmp_path / "r0" / "sel", features(tmp_path / "f", labelled)))
    round1 = selection(tmp_path / "r1" / "sel", weights=round0, digest=file_digest(round0 / "encoder.pt"))
    with pytest.raises(LabelLeak, match="supervised features"):
        check_evaluation(labelled, selection_sources(round1))


def test_what_cannot_be_traced_is_warned_about_not_refused(labelled, tmp_path, caplog):
    foreign = tmp_path / "imagenet.pt"
    foreign.write_bytes(b"weights from elsewhere")
    sel = selection(tmp_path / "sel", foreign)
    assert check_evaluation(labelled, selection_sources(sel))["status"] == "untraced"
    assert "no record of the cells they were trained on" in caplog.text
    moved = selection(tmp_path / "sel2", features(tmp_path / "f", labelled), digest="0123456789abcdef")
    assert check_evaluation(labelled, selection_sources(moved))["status"] == "untraced"  # not the file it used
    assert "not the file selection" in caplog.text
    assert check_evaluation(labelled, selection_sources(selection(tmp_path / "sel3")))["status"] == "no labels learned from"
    old = tmp_path / "old_enc"
    old.mkdir()
    (old / "encoder.json").write_text(json.dumps({"source": "selected"}))
    assert check_evaluation(labelled, weights_sources(str(old)))["status"] == "untraced"


def test_the_ablation_refuses_before_pretraining(labelled, tmp_path):
    from activessf.ablation import run_ablation

    sel = selection(tmp_path / "sel", features(tmp_path / "f", labelled))
    cfg = load_config(overrides=[f"run.work_dir={tmp_path / 'w'}"])
    with pytest.raises(LabelLeak, match="supervised features"):
        run_ablation(cfg, labelled, tmp_path / "abl", regions=tmp_path / "none", selection=sel, fields="none")
    assert not (tmp_path / "abl").exists()


def test_features_record_their_cells_and_refuse_the_evaluation_part(split, tmp_path):
    """`activessf features` on tune.csv: label_ids.json and an MLflow run; on eval.csv: refused."""
    import mlflow

    from activessf.cli import main
    from activessf.features.supervised import train_supervised
    from activessf.tracking import init_mlflow

    work = tmp_path / "w"
    args = ["features", "--labelled", str(split / "tune.csv"), "--out", str(tmp_path / "f"), "--epochs", "1",
            "--size", "32", "--set", "embed.backbone=test_resnet", "--work-dir", str(work)]
    assert main(args) == 0
    labels = json.loads((tmp_path / "f" / "label_ids.json").read_text())
    assert labels["cells"] == 10 and labels["learned_by"] == "supervised features"
    init_mlflow(work, load_config().run.experiment)
    run = mlflow.search_runs(filter_string="tags.`activessf.stage` = 'features'", search_all_experiments=True).iloc[0]
    assert run["params.label_ids_digest"] == labels["digest"] and run["metrics.labelled_cells"] == 10
    with pytest.raises(LabelLeak, match="evaluation part of the split"):
        train_supervised(split / "eval.csv", tmp_path / "f2", load_config(overrides=["embed.backbone=test_resnet"]))


def test_a_sweep_refuses_the_evaluation_part(split, tmp_path):
    from activessf.stages.sweep import run_sweep

    space = tmp_path / "space.yaml"
    space.write_text("kind: selection\nspace:\n  select.alpha: {grid: [0.5]}\n")
    with pytest.raises(LabelLeak, match="give it .*tune.csv"):
        run_sweep(load_config(), space, tmp_path / "out", regions=tmp_path, embeddings=tmp_path,
                  labelled_embeddings=tmp_path, labelled=split / "eval.csv")
    assert not (tmp_path / "out").exists()
