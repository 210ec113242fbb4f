"""Lineage in a real MLflow sqlite store: the code version and the data inputs of every run, and a
registry version whose run is the training run that logged the model (by run id and by directory).

The fine-tuning run here is made by hand (a real stage run, a real final-fit model logged as the pyfunc,
metrics.json as its artifact) so that no Ray Train is needed; the demo job's real fine-tuning run is
registered by directory in tests/serving/test_registry_and_serving.py.
"""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from activessf.config import FilterConfig, SynthConfig, load_config
from activessf.data.labelled import labelled_digest
from activessf.data.synth import paint_field
from activessf.imageio import encode_png
from activessf.regions.records import ImageRecords, process_image, regions_digest

from conftest import REPO, write_cells


def field_png(seed: int) -> bytes:
    """A small synthetic smear field with two megakaryocytes."""
    field = paint_field(SynthConfig(width=256, height=256, rbc_coverage=0.25), np.random.default_rng([seed, 9]),
                        ["G-MK", "N-MK"])
    return encode_png(field.image)


def write_regions(out, parts: int):
    """A filter output's regions table (real filter records) split into ``parts`` parquet files."""
    records = ImageRecords()
    cfg = FilterConfig()
    for i in range(3):
        records.extend(process_image(field_png(i), f"field{i}.png", cfg, cfg.digest()))
    table = records.tables()["regions"]
    assert table.num_rows >= 3
    (out / "regions").mkdir(parents=True)
    step = -(-table.num_rows // parts)
    for k in range(parts):
        pq.write_table(table.slice(k * step, step), out / "regions" / f"part-{k}.parquet")
    return table


def test_dataset_digests_follow_content_not_layout(tmp_path):
    cells = write_cells(tmp_path / "cells", {"a": 3, "b": 2})
    rows = [(str(p), p.parent.name) for p in sorted(cells.glob("*/*.png"))]
    with open(tmp_path / "cells.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), *rows])
    folder, listed = labelled_digest(cells), labelled_digest(tmp_path / "cells.csv")
    assert folder == listed and folder["cells"] == 5  # the same images and labels, another layout
    relabelled = [(p, "b" if p.endswith("000.png") and label == "a" else label) for p, label in rows]
    with open(tmp_path / "relabelled.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), *relabelled])
    assert labelled_digest(tmp_path / "relabelled.csv")["digest"] != folder["digest"]  # one label changed

    table = write_regions(tmp_path / "one", 1)
    write_regions(tmp_path / "three", 3)
    one, three = regions_digest(tmp_path / "one"), regions_digest(tmp_path / "three")
    assert one == three and one["regions"] == table.num_rows
    (tmp_path / "fewer" / "regions").mkdir(parents=True)
    pq.write_table(table.slice(1), tmp_path / "fewer" / "regions" / "part-0.parquet")
    assert regions_digest(tmp_path / "fewer")["digest"] != one["digest"]


@pytest.mark.slow  # a new MLflow store: ~3 s
def test_every_run_records_the_code_version_and_its_dataset_inputs(tmp_path):
    from mlflow import MlflowClient

    from activessf.stage import child_runs, code_version, log_labelled_input, log_regions_input, stage_run
    from activessf.tracking import init_mlflow

    cfg = load_config(overrides=[f"run.work_dir={tmp_path / 'work'}"])
    init_mlflow(cfg.run.work_dir, "lineage")
    cells = write_cells(tmp_path / "cells", {"a": 3, "b": 2})
    write_regions(tmp_path / "filtered", 2)
    with stage_run(cfg, "embed", {"x": 1}) as run:
        labelled = log_labelled_input(cells, "embedding")
        regions = log_regions_input(tmp_path / "filtered", "embedding")
        fold = child_runs(["fold0"])["fold0"]
    client = MlflowClient()
    got = client.get_run(run.info.run_id)
    inputs = {d.dataset.name: d for d in got.inputs.dataset_inputs}
    assert set(inputs) == {"labelled", "regions"}
    assert inputs["labelled"].dataset.digest == labelled["digest"] == labelled_digest(cells)["digest"]
    assert inputs["regions"].dataset.digest == regions["digest"]
    assert json.loads(inputs["regions"].dataset.source)["uri"] == str((tmp_path / "filtered" / "regions").resolve())
    tags = {t.key: t.value for t in inputs["labelled"].tags}
    assert tags == {"mlflow.data.context": "embedding", "cells": "5"}

    version = code_version()
    from importlib.metadata import version as installed

    assert version["version"] == installed("activessf")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if shutil.which("git") and head.returncode == 0:  # this checkout: its commit, and whether it is edited
        assert version["git_commit"] == head.stdout.strip() and version["git_dirty"] in ("true", "false")
    for run_id in (run.info.run_id, fold):  # the stage's run and the nested runs its workers fill
        run_tags = client.get_run(run_id).data.tags
        assert {k: run_tags.get(f"activessf.{k}") for k in version} == version
        assert run_tags.get("mlflow.source.git.commit") == version.get("git_commit")


def finetune_run(cfg, out):
    """A fine-tuning run as `activessf finetune` leaves one: a final fit logged as the run's pyfunc
    ``model``, and ``metrics.json`` (naming the run) in OUT and among the run's artifacts."""
    from activessf.finetune.model import build_classifier
    from activessf.serving.registry import log_model
    from activessf.stage import log_results, stage_run
    from activessf.stages.finetune import save_model

    model, _ = build_classifier(cfg.finetune, 2)
    record = {"folds_digest": "f" * 16, "summary": {k: {"folds": [0.5, 0.6]} for k in ("accuracy", "pr_auc", "f1")}}
    out.mkdir(parents=True)
    record["model"] = save_model(out / "model", model.state_dict(), cfg.finetune, ["a", "b"], record)
    with stage_run(cfg, "finetune", {}, "ft") as run:
        record["model"]["logged"] = log_model(out / "model", cfg)
        record["mlflow_run_id"] = run.info.run_id
        (out / "metrics.json").write_text(json.dumps(record))
        log_results(out, {}, ["metrics.json"])
    return run.info.run_id, record


@pytest.mark.slow  # a logged pyfunc and three registrations: ~9 s
def test_register_by_run_id_and_by_directory_makes_versions_of_the_training_run(tmp_path, capsys):
    import mlflow
    from mlflow import MlflowClient

    from activessf.cli import main
    from activessf.serving.registry import register
    from activessf.tracking import init_mlflow

    work = tmp_path / "work"
    cfg = load_config(overrides=[f"run.work_dir={work}", "finetune.backbone=test_resnet", "finetune.image_size=32",
                                 "register.model_name=cells", "register.max_images=7"])
    init_mlflow(work, cfg.run.experiment)
    run_id, record = finetune_run(cfg, tmp_path / "ft")
    assert record["model"]["logged"]["uri"] == f"runs:/{run_id}/model"
    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")  # what `predict` and `serve` load
    assert info.run_id == run_id and set(info.flavors) >= {"python_function"}
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/model")
    assert {"MLmodel", "artifacts"} <= {p.name for p in Path(local).iterdir()}

    first = register(run_id, cfg)
    client = MlflowClient()
    version = client.get_model_version("cells", first["version"])
    assert version.run_id == run_id and first["training_run_id"] == run_id and first["promoted"]
    assert version.source == f"models:/{record['model']['logged']['model_id']}"
    reg_run = client.get_run(first["mlflow_run_id"])  # the registration record names the training run by id
    assert reg_run.data.tags["activessf.training_run_id"] == run_id and reg_run.info.run_id != run_id
    assert version.tags["activessf.registration_run_id"] == reg_run.info.run_id
    assert "promotion.json" in {a.path for a in client.list_artifacts(reg_run.info.run_id)}

    assert main(["register", "--run", str(tmp_path / "ft"), "--work-dir", str(work), "--set",
                 "register.model_name=cells"]) == 0  # by directory: metrics.json names the run
    assert "version 2: registered, champion unchanged" in capsys.readouterr().out
    again = client.get_model_version("cells", "2")
    assert again.run_id == run_id and "same weights" in again.tags["activessf.promotion_reason"]
    serving = mlflow.artifacts.download_artifacts(f"models:/cells/{first['version']}/artifacts/serving.json")
    assert json.loads(open(serving).read())["limits"]["max_images"] == 7  # the training run's settings

    with pytest.raises(FileNotFoundError, match="neither a fine-tuning output directory nor an MLflow run id"):
        register(tmp_path / "nowhere", cfg)
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        register("0" * 32, cfg)
