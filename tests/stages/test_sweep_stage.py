"""Ray Tune sweeps on a real local Ray and MLflow store: selection (Ray Train inside trials) and filter."""

import json

import pandas as pd
import pytest

from activessf.config import load_config
from activessf.stages.sweep import run_sweep
from conftest import EMBED_TINY

pytestmark = pytest.mark.ray

TINY = EMBED_TINY + ["pretrain.model=micro", "pretrain.image_size=32", "pretrain.patch_size=8",
                     "pretrain.batch_size=4", "pretrain.warmup_epochs=0", "evaluate.folds=2",
                     "sweep.pretrain_epochs=2", "sweep.num_samples=3", "sweep.probe=knn"]


@pytest.fixture(scope="module")
def data(embedded):
    """The session's filtered and embedded synthetic set (made with TINY's embed and filter settings)."""
    return embedded


@pytest.fixture
def store(tmp_path):
    from activessf.tracking import init_mlflow

    init_mlflow(tmp_path / "w", "sweep")
    return tmp_path / "w"


def space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def children_of(run_id):
    import mlflow

    run = mlflow.get_run(run_id)
    return mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                              experiment_ids=[run.info.experiment_id])


def test_selection_sweep_trains_inside_trials_and_writes_the_best_config(data, tmp_path, store):
    import mlflow

    # alpha 0 gives every cluster its UB and keeps most regions; alpha 60 gives all but the rarest
    # cluster its LB (~nothing kept): a trial that cannot train, which must fail alone and clearly
    sp = space(tmp_path, "kind: selection\nspace:\n"
                         "  select.alpha: {grid: [0.0, 0.5, 60.0]}\n"
                         "  select.bound_mode: {choice: [quantile]}\n  select.q_high: {uniform: [0.99, 1.0]}\n"
                         "  prototypes.k: {choice: [4, 6]}\n")
    cfg = load_config(overrides=TINY + [f"run.work_dir={store}", "sweep.num_samples=1"])
    best = run_sweep(cfg, sp, tmp_path / "out", regions=data["regions"], embeddings=data["emb_regions"],
                     labelled_embeddings=data["emb_labelled"], labelled=data["data"] / "labelled", name="sel")
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(trials) == 3 and sorted(trials["select.alpha"]) == [0.0, 0.5, 60.0]  # the grid, once each
    ok, failed = trials[trials.status == "OK"], trials[trials.status == "ERROR"]
    assert sorted(ok["select.alpha"]) == [0.0, 0.5] and ok["probe_pr_auc"].between(0, 1).all()
    assert (ok["selected"] >= 4).all() and ok["iterations"].between(1, 2).all()
    assert list(failed["select.alpha"]) == [60.0] and "fewer than one batch" in failed["error"].iloc[0]
    assert best["score"] == pytest.approx(ok["probe_pr_auc"].max()) and best["metric"] == "probe_pr_auc"
    best_cfg = load_config(tmp_path / "out" / "best.yaml")  # ready to use with --config
    assert best_cfg.select.alpha == best["values"]["select.alpha"] and best_cfg.prototypes.k == best["values"]["prototypes.k"]
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 5_000
    parent = mlflow.search_runs(filter_string="tags.mlflow.runName = 'sel'", experiment_names=["sweep"]).iloc[0]
    kids = children_of(parent.run_id)
    assert len(kids) == 3 and set(kids["params.select.alpha"].astype(float)) == {0.0, 0.5, 60.0}
    assert kids["metrics.probe_pr_auc"].notna().sum() == len(ok)
    # lineage: the trial runs carry the code version, the sweep's run lists the data it tuned on
    assert (kids["tags.activessf.version"] == parent["tags.activessf.version"]).all()
    assert {d.dataset.name for d in mlflow.get_run(parent.run_id).inputs.dataset_inputs} == {"labelled", "regions"}
    assert parent["metrics.best_probe_pr_auc"] == pytest.approx(best["score"])
    # the probe's cells are recorded, and best.yaml carries them to what is selected with it
    labels = json.loads((tmp_path / "out" / "label_ids.json").read_text())
    assert labels["cells"] == 55 and parent["params.label_ids_digest"] == labels["digest"]
    assert best_cfg.sweep.tuned_on == [str((tmp_path / "out" / "label_ids.json").resolve())]
    assert best["tuned_on"]["cells"] == 55


def test_filter_sweep_scores_f1_against_the_boxes(data, tmp_path, store):
    sp = space(tmp_path, "kind: filter\nspace:\n  filter.min_box: {grid: [40, 300]}\n"
                         "  filter.fill_rate: {uniform: [0.5, 0.7]}\n")
    cfg = load_config(overrides=TINY + [f"run.work_dir={store}", "sweep.num_samples=1"])
    best = run_sweep(cfg, sp, tmp_path / "out", images=str(data["data"] / "smears"), boxes=data["data"], name="flt")
    trials = pd.read_csv(tmp_path / "out" / "trials.csv").set_index("filter.min_box")
    assert trials.loc[300, "f1"] == 0.0 and trials.loc[300, "regions"] == 0  # no cell is 300 px wide
    assert trials.loc[40, "f1"] > 0.3 and best["values"]["filter.min_box"] == 40
    assert json.loads((tmp_path / "out" / "best.json").read_text())["score"] == pytest.approx(trials.loc[40, "f1"])
    assert load_config(tmp_path / "out" / "best.yaml").filter.min_box == 40


def test_a_bad_space_fails_before_any_trial(data, tmp_path, store):
    from activessf.config import ConfigError

    sp = space(tmp_path, "kind: filter\nspace:\n  filter.min_bx: {grid: [40]}\n")
    with pytest.raises(ConfigError, match="Did you mean 'filter.min_box'"):
        run_sweep(load_config(overrides=TINY), sp, tmp_path / "out", images=str(data["data"] / "smears"), boxes=data["data"])
    assert not (tmp_path / "out").exists()
