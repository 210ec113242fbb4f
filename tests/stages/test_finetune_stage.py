"""Fine-tuning and evaluation on a real local Ray: k folds, identical folds, compare, report, ablation."""

import json
import subprocess
import sys

import pytest

from activessf.config import SynthConfig, load_config
from activessf.data import synth
from activessf.evaluation.report import compare_runs, load_run, write_report

pytestmark = pytest.mark.ray

VIT = ["finetune.backbone=vit_tiny_patch16_224", "finetune.image_size=32", "finetune.epochs=2",
       "finetune.warmup_epochs=1", "finetune.batch_size=8", "evaluate.folds=2",
       "finetune.backbone_kwargs={img_size: 32, patch_size: 8, embed_dim: 64, depth: 2, num_heads: 2}"]


@pytest.fixture(scope="module")
def data(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    synth.generate(SynthConfig(images=3, labelled=55, width=512, height=384, workers=1), root / "d", progress=False)
    return root / "d"


@pytest.fixture
def store(tmp_path):
    from activessf.tracking import init_mlflow

    init_mlflow(tmp_path / "w", "ft")
    return tmp_path / "w"


def config(tmp_path, *extra):
    return load_config(overrides=VIT + [f"run.work_dir={tmp_path / 'w'}", *extra])


def test_two_fold_run_compare_and_report(data, tmp_path, store):
    import mlflow

    from activessf.stages.finetune import run_finetune

    a = run_finetune(data / "labelled", tmp_path / "a", config(tmp_path), name="A")
    assert [f["fold"] for f in a["folds"]] == [0, 1] and sum(f["n"] for f in a["folds"]) == 55
    for key in ("accuracy", "pr_auc", "f1"):
        assert 0 <= a["summary"][key]["mean"] <= 1 and len(a["summary"][key]["folds"]) == 2
    assert list(a["classes"]) == list(synth.SUBTYPES) and set(a["class_groups"].values()) <= {"rare", "medium", "common"}
    folds = json.loads((tmp_path / "a" / "folds.json").read_text())
    # an independent run with the same seed gets the same folds; --folds reuses them explicitly
    b = run_finetune(data / "labelled", tmp_path / "b", config(tmp_path, "finetune.class_weights=true"),
                     folds_file=tmp_path / "a" / "folds.json", name="B")
    assert b["folds_digest"] == a["folds_digest"] == folds["digest"]
    c = compare_runs(load_run(tmp_path / "a"), load_run(tmp_path / "b"))
    assert set(c["metrics"]) == {"accuracy", "pr_auc", "f1"} and all(0 <= r["p"] <= 1 for r in c["metrics"].values())
    paths = write_report({"A": a, "B": b}, tmp_path / "report", "test", {"B": "A"})
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "Table I" in md and "Table II" in md and "| A |" in md and "| B |" in md
    assert "data:image/png;base64," in page and paths["figure"].stat().st_size > 10_000
    run = mlflow.get_run(a["mlflow_run_id"])
    assert run.data.metrics["pr_auc_mean"] == pytest.approx(a["summary"]["pr_auc"]["mean"])
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
                                  experiment_ids=[run.info.experiment_id])
    assert len(children) == 2
    out = subprocess.run([sys.executable, "-m", "activessf.cli", "compare", str(tmp_path / "a"), str(tmp_path / "b")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "paired t-test" in out.stdout and "PR-AUC HL-MK" in out.stdout


def test_compare_refuses_runs_on_different_folds(data, tmp_path, store):
    from activessf.stages.finetune import run_finetune

    a = run_finetune(data / "labelled", tmp_path / "a", config(tmp_path, "finetune.epochs=1", "finetune.warmup_epochs=0"),
                     name="A")
    b = run_finetune(data / "labelled", tmp_path / "b", config(tmp_path, "finetune.epochs=1", "finetune.warmup_epochs=0",
                                                                "evaluate.seed=7"), name="B")
    with pytest.raises(ValueError, match="different folds"):
        compare_runs(a, b)


@pytest.mark.slow
def test_ablation_grid_on_identical_folds_with_report(data, tmp_path, store):
    from activessf.stages.ablation import run_ablation
    from activessf.stages.filter import run_filter

    regions = tmp_path / "regions"
    run_filter(str(data / "smears"), regions, load_config(overrides=["filter.min_box=40"]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pq.read_table(regions / "regions", columns=["region_id"]).column("region_id").to_pylist()
    (tmp_path / "sel" / "selection").mkdir(parents=True)
    pq.write_table(pa.table({"region_id": ids, "selected": [i % 2 == 0 for i in range(len(ids))]}),
                   tmp_path / "sel" / "selection" / "p.parquet")
    cfg = config(tmp_path, "finetune.epochs=1", "finetune.warmup_epochs=0", "pretrain.model=micro",
                 "pretrain.image_size=32", "pretrain.patch_size=8", "pretrain.batch_size=4", "pretrain.epochs=1",
                 "pretrain.warmup_epochs=0", "pretrain.num_workers=1")
    res = run_ablation(tmp_path / "abl", cfg, data / "labelled", regions, tmp_path / "sel", str(data / "smears"))
    names = [r["name"] for r in res["record"]["rows"]]
    assert names == ["ViT", "MAE", "MAE + CRF", "MAE + CRF + ASS"]
    assert len({run["folds_digest"] for run in res["runs"].values()}) == 1  # every row on the same folds
    md = (tmp_path / "abl" / "report.md").read_text()
    assert "Table III" in md and md.count("✓") == 1 + 2 + 3 + 4  # ViT | +MAE | +CRF | +ASS rows
    assert (tmp_path / "abl" / "report.html").is_file()
