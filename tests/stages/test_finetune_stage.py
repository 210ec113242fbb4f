"""Fine-tuning and evaluation: k folds on Ray Train, identical folds, compare, report, MLflow runs.

The runs checked here are the demo job's (the session's ``demo_job`` fixture, run on a token-auth head):
its pipeline fine-tuned the stage-4 encoder on 2 folds plus a final fit on every sample (A), and its
ablation fine-tuned the ViT from scratch on A's folds (B). One full run proves the demo, the pipeline,
`ray job submit` and this stage; the ablation's layout is tested on fold records in
tests/evaluation/test_report_layout.py.
"""

import json

import pytest

from activessf.data import synth
from activessf.data.labelled import list_labelled
from activessf.evaluation.folds import assign_folds, folds_digest
from activessf.evaluation.report import compare_runs, load_run, write_report

pytestmark = pytest.mark.own_ray


@pytest.fixture(scope="module")
def runs(demo_job) -> dict:
    work = demo_job["work"]
    a, b = work / "finetune" / "activessf", work / "ablation" / "vit" / "finetune"
    return {"a": a, "b": b, "A": load_run(a), "B": load_run(b), "work": work, "cfg": demo_job["cfg"]}


def test_two_fold_runs_on_the_same_folds_compare_and_report(runs, tmp_path, capsys):
    from activessf.cli import main

    a, b = runs["A"], runs["B"]
    assert [f["fold"] for f in a["folds"]] == [0, 1] and sum(f["n"] for f in a["folds"]) == 55
    for key in ("accuracy", "pr_auc", "f1"):
        assert 0 <= a["summary"][key]["mean"] <= 1 and len(a["summary"][key]["folds"]) == 2
    assert list(a["classes"]) == list(synth.SUBTYPES) and set(a["class_groups"].values()) <= {"rare", "medium", "common"}
    folds = json.loads((runs["a"] / "folds.json").read_text())
    assert b["folds_digest"] == a["folds_digest"] == folds["digest"]  # B was given A's folds
    # an independent assignment with the same seed gives the same folds
    base = runs["work"] / "data" / "labelled"
    ids, labels = zip(*[(str(p.relative_to(base)), lab) for p, lab in list_labelled(base)])
    assert folds_digest(assign_folds(ids, labels, 2, runs["cfg"].evaluate.seed)) == a["folds_digest"]
    c = compare_runs(b, a)
    assert set(c["metrics"]) == {"accuracy", "pr_auc", "f1"} and all(0 <= r["p"] <= 1 for r in c["metrics"].values())
    assert all(r["corrected"]["p"] >= r["p"] or r["mean_diff"] == 0 for r in c["metrics"].values())  # never surer
    with pytest.raises(ValueError, match="different folds"):  # folds from another seed are not comparable
        compare_runs(a, {**b, "folds_digest": folds_digest(assign_folds(ids, labels, 2, 7))})
    paths = write_report({"A": a, "B": b}, tmp_path / "report", "test", {"A": "B"},
                         run_dirs={"A": runs["a"], "B": runs["b"]})
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "Table I" in md and "Table II" in md and "| A |" in md and "| B |" in md
    # Fig. 4: each run's PR curves and misclassified cells, linked from the Markdown and inlined in the HTML
    pictures = [f"pictures/{r}_{p}" for r in ("b", "a") for p in ("pr_curves.png", "misclassified.png")]
    links = [line.split("(")[1][:-1] for line in md.split("## Fig. 4")[1].splitlines() if line.startswith("![")]
    assert links == pictures
    assert all((tmp_path / "report" / p).read_bytes()[:4] == b"\x89PNG" for p in pictures)
    assert page.count("data:image/png;base64,") == 1 + 4
    assert "data:image/png;base64," in page and paths["figure"].stat().st_size > 10_000
    assert main(["compare", str(runs["b"]), str(runs["a"])]) == 0
    out = capsys.readouterr().out
    assert "paired t-test" in out and "PR-AUC HL-MK" in out and "corrected p" in out


def test_each_fold_and_the_final_fit_are_nested_mlflow_runs(runs):
    import mlflow

    from activessf.tracking import init_mlflow

    init_mlflow(runs["work"], runs["cfg"].run.experiment)
    a = runs["A"]
    run = mlflow.get_run(a["mlflow_run_id"])
    assert run.data.metrics["pr_auc_mean"] == pytest.approx(a["summary"]["pr_auc"]["mean"])
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
                                  experiment_ids=[run.info.experiment_id])
    assert sorted(children["tags.mlflow.runName"]) == [f"{a['name']}-{s}" for s in ("final", "fold0", "fold1")]
    folds = children[children["tags.mlflow.runName"] != f"{a['name']}-final"]
    arts = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"metrics.json", "pr_curves.png", "misclassified.png"} <= arts
    assert sorted(folds["metrics.pr_auc"]) == sorted(a["summary"]["pr_auc"]["folds"])


def test_pr_curves_and_the_misclassified_gallery_come_with_the_run(runs):
    from activessf.evaluation.pictures import confident_mistakes, prediction_arrays
    from activessf.imageio import read_rgb

    import pyarrow.parquet as pq

    h, w, _ = read_rgb(runs["a"] / "pr_curves.png").shape
    assert 400 < h < 700 and 500 < w < 900
    ids, y, probs = prediction_arrays(pq.read_table(runs["a"] / "predictions.parquet"), runs["A"]["classes"])
    shown = len(confident_mistakes(ids, y, probs))  # 1 epoch on 55 cells: mistakes, up to 24 of them shown
    gallery = read_rgb(runs["a"] / "misclassified.png")
    rows = (shown + 5) // 6
    assert shown > 0 and gallery.shape[0] == 6 + rows * (112 + 46 + 6)


def test_the_final_fit_exports_a_model_trained_on_every_sample(runs):
    spec = json.loads((runs["a"] / "model" / "model.json").read_text())
    assert spec["trained_on"].startswith("every labelled sample") and spec["folds_digest"] == runs["A"]["folds_digest"]
    assert spec["classes"] == list(synth.SUBTYPES) and spec["cv_summary"]["pr_auc"] == runs["A"]["summary"]["pr_auc"]
    assert "model" not in runs["B"] and not (runs["b"] / "model").exists()  # cross-validation only
