"""`activessf demo` end to end on a tiny synthetic set, with a real local Ray and MLflow store."""

import json
import subprocess
import sys

import pytest

from activessf.config import SynthConfig
from activessf.demo import ensure_synthetic
from activessf.imageio import read_rgb
from activessf.subtypes import SUBTYPES


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


@pytest.mark.ray
def test_demo_runs_and_reports(tmp_path):
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "activessf.cli", "demo", "--work-dir", str(work), "--no-progress",
           "--set", "synth.images=3", "--set", "synth.labelled=55", "--set", "synth.width=512",
           "--set", "synth.height=384"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((work / "demo" / "summary.json").read_text())
    assert summary["fields"] == 3 and summary["labelled"] == 55
    assert summary["counts"]["labelled"] == {name: 5 for name in SUBTYPES}
    assert summary["ray"]["started_local"] is True
    assert "mlflow ui --backend-store-uri sqlite:///" in out.stdout and "127.0.0.1" in out.stdout
    for name in SUBTYPES:
        assert name in out.stdout
    stage1 = summary["stages"]["filter"]
    assert stage1["summary"]["images_read"] == 3 and stage1["summary"]["images_failed"] == 0
    assert (work / "regions" / "regions").is_dir() and (work / "regions" / "eval_megakaryocyte.json").is_file()
    assert 0 <= stage1["eval"]["recall"] <= 1 and stage1["eval"]["truth_boxes"] > 0
    assert "Stage 1, cell region filtering" in out.stdout
    stage3 = summary["stages"]["select"]
    assert stage3["report"]["totals"]["regions"] == stage1["summary"]["regions_kept"]
    assert len(stage3["report"]["clusters"]) == 11 and stage3["report"]["prototypes"]["labelled"] == 55
    assert (work / "selection" / "prototypes.npz").is_file() and (work / "selection" / "evidence.json").is_file()
    assert "Stages 2-3, prototypes and active sample selection" in out.stdout and "threshold" in out.stdout
    sheet = read_rgb(summary["contact_sheet"])
    assert sheet.shape[0] >= 11 * 96  # one row per subtype

    import mlflow

    mlflow.set_tracking_uri(summary["mlflow"]["tracking_uri"])
    run = mlflow.get_run(summary["mlflow"]["run_id"])
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
                                  experiment_ids=[run.info.experiment_id])
    assert {"filter", "filter-eval-megakaryocyte", "select"} <= set(children["tags.mlflow.runName"])
    assert run.data.params["images"] == "3"
    assert run.data.metrics["labelled.CA-MK"] == 5
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "subtypes.png"} <= arts
    # the demo ends in the registry, printing the command that serves its model
    reg = summary["stages"]["register"]
    assert reg["version"] == "1" and reg["promoted"] and reg["alias"] == "champion"
    assert "no champion yet" in reg["reason"]
    assert f"models:/{reg['model']}@champion" in reg["serve"] and reg["serve"] in out.stdout
    version = mlflow.MlflowClient().get_model_version_by_alias(reg["model"], "champion")
    assert str(version.version) == "1" and version.tags["activessf.promotion"] == "promoted"
