"""`activessf predict`: batch inference on Ray Data with a model the test trains, the registry, overlays, errors.

The model is trained here, in this process, by the platform's own fine-tuning pieces (``build_classifier``,
``train_one_epoch``, ``save_model``): a timm test ResNet at 32 px for two epochs on the synthetic labelled
crops (a second), written as a fine-tuning output (``model/`` + ``config.yaml``). What it predicts is
not checked for accuracy, only for being the classifier's output: a Ray Train run would cost ten times
this test's budget (docs/testing.md).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from activessf.config import load_config

TINY = ["finetune.backbone=test_resnet", "finetune.image_size=32", "finetune.drop_path=0", "finetune.epochs=2",
        "finetune.warmup_epochs=0", "finetune.batch_size=16", "filter.min_box=40"]


def train_tiny(labelled: Path, out: Path, overrides=()) -> Path:
    """A fine-tuning output (``out/model``, ``out/config.yaml``) trained in this process."""
    import torch

    from activessf.config import save_config
    from activessf.data.labelled import list_labelled
    from activessf.data.resize import load_resize
    from activessf.finetune.model import build_classifier
    from activessf.ssl.augment import classifier_view
    from activessf.stages.finetune import save_model
    from activessf.subtypes import class_order
    from activessf.training.engine import Schedule, classification_loss, classifier_inputs, train_one_epoch

    cfg = load_config(overrides=TINY + list(overrides))
    ft = cfg.finetune
    pairs = list_labelled(labelled)
    classes = class_order([lab for _, lab in pairs])
    data = load_resize({"path": [str(p) for p, _ in pairs], "label": [classes.index(lab) for _, lab in pairs]},
                       40, ("label",))
    images, labels = torch.from_numpy(data["image"]), torch.tensor(data["label"])
    model, _ = build_classifier(ft, len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    steps = -(-len(labels) // ft.batch_size)
    schedule = Schedule(3e-3, 0, ft.epochs, steps)
    for epoch in range(ft.epochs):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch))
        batches = [{"image": images[order[i:i + ft.batch_size]], "label": labels[order[i:i + ft.batch_size]]}
                   for i in range(0, len(labels), ft.batch_size)]
        train_one_epoch(model, opt, torch.amp.GradScaler("cuda", enabled=False), batches, epoch, schedule,
                        classifier_inputs(classifier_view(ft.image_size), torch.device("cpu")),
                        classification_loss())
    record = {"folds_digest": "none: trained by tests/serving/test_predict.py",
              "summary": {k: None for k in ("accuracy", "pr_auc", "f1")}}
    save_model(out / "model", model.state_dict(), ft, classes, record)
    save_config(cfg, out)
    return out


@pytest.fixture(scope="module")
def tiny_model(synthetic, tmp_path_factory) -> Path:
    return train_tiny(synthetic / "labelled", tmp_path_factory.mktemp("tiny_model") / "finetune")


@pytest.fixture(scope="module")
def fields(synthetic, tmp_path_factory) -> Path:
    """Three synthetic fields, a truncated PNG and a text file named like an image."""
    root = tmp_path_factory.mktemp("fields")
    for f in sorted((synthetic / "smears").glob("*.png"))[:3]:
        shutil.copy(f, root / f.name)
    good = (root / sorted(p.name for p in root.iterdir())[0]).read_bytes()
    (root / "broken.png").write_bytes(good[: len(good) // 3])
    (root / "notes.jpg").write_text("this is not an image")
    return root


@pytest.mark.ray
def test_predict_writes_cells_fields_errors_overlays_and_an_mlflow_run(ray_cluster, tiny_model, fields, tmp_path):
    import mlflow

    from activessf.serving.classifier import CellClassifier
    from activessf.stages.predict import run_predict

    cfg = load_config()  # its filter is not the model's; the run goes to this session's MLflow store
    result = run_predict(cfg, str(tiny_model), str(fields), tmp_path / "out", overlays="all")
    out, s = tmp_path / "out", result.summary
    classes = json.loads((tiny_model / "model" / "model.json").read_text())["classes"]
    assert s["fields_read"] == 5 and s["fields_ok"] == 3 and s["fields_failed"] == 2
    assert s["failed_by_reason"] == {"corrupt": 1, "not_image": 1}
    assert s["filter_source"] == "model" and s["filter_digest"] == load_config(tiny_model / "config.yaml").filter.digest()

    cells = pq.read_table(out / "cells.parquet").to_pandas()
    probs = cells[[f"p_{c}" for c in classes]].to_numpy()
    assert len(cells) == s["cells"] > 0 and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert (cells["subtype"] == [classes[k] for k in probs.argmax(1)]).all()
    assert np.allclose(cells["confidence"], probs.max(1), atol=1e-6)

    # the same classifier in this process, on one field, finds the same boxes and probabilities
    clf = CellClassifier.load(tiny_model / "model", load_config(tiny_model / "config.yaml").filter)
    one = cells[cells["source"].str.endswith(sorted(p.name for p in fields.glob("field*.png"))[0])]
    rows = clf.predict([Path(one["source"].iloc[0]).read_bytes()], ["field"])
    assert [(r["x"], r["y"], r["w"], r["h"]) for r in rows] == list(zip(one["x"], one["y"], one["w"], one["h"]))
    assert np.allclose([[r[f"p_{c}"] for c in classes] for r in rows], one[[f"p_{c}" for c in classes]], atol=1e-5)

    import pandas as pd

    table = pd.read_csv(out / "fields.csv")
    assert len(table) == 3 and table["cells"].sum() == len(cells)
    per_field = cells.groupby(["source", "subtype"]).size()
    for _, f in table.iterrows():
        assert sum(f[f"n_{c}"] for c in classes) == f["cells"]
        for c in classes:
            assert f[f"n_{c}"] == per_field.get((f["source"], c), 0)
            if f["cells"]:
                assert f[f"share_{c}"] == pytest.approx(f[f"n_{c}"] / f["cells"])
    errors = pd.read_csv(out / "errors.csv")
    assert sorted(Path(e).name for e in errors["source"]) == ["broken.png", "notes.jpg"]
    assert errors["error"].str.len().min() > 10  # a reason a person can read
    assert len(pd.read_csv(out / "cells.csv")) == len(cells)

    pngs = sorted((out / "overlays").glob("*.png"))
    assert len(pngs) == s["overlays"] == 3  # every field processed; the two bad files have none
    from activessf.imageio import read_rgb

    first = read_rgb(pngs[0])
    assert first.shape[0] == 384 and first.shape[1] > 512  # the field and the legend panel beside it

    run = mlflow.get_run(result.run_id)
    assert run.data.tags["activessf.stage"] == "predict" and run.data.metrics["cells"] == len(cells)
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert {"summary.json", "fields.csv", "errors.csv", "overlays"} <= logged


@pytest.mark.slow  # a registered pyfunc in a real sqlite store: ~5 s with the model's training
def test_a_registered_version_resolves_to_the_same_model_and_filter(tiny_model, tmp_path):
    """``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` against a real sqlite registry; a run id too."""
    import mlflow

    from activessf.serving.registry import log_model
    from activessf.serving.resolve import resolve_model
    from activessf.stage import stage_run
    from activessf.tracking import init_mlflow

    cfg = load_config(tiny_model / "config.yaml", [f"run.work_dir={tmp_path / 'work'}"])
    init_mlflow(tmp_path / "work", "registry")
    with stage_run(cfg, "finetune", {}) as run:  # what a fine-tuning run with a final fit logs
        logged = log_model(tiny_model / "model", cfg)
    version = str(mlflow.register_model(f"models:/{logged['model_id']}", "tiny").version)
    mlflow.MlflowClient().set_registered_model_alias("tiny", "champion", version)
    local = resolve_model(str(tiny_model), tmp_path / "a")
    for spec in ("models:/tiny@champion", f"models:/tiny/{version}", run.info.run_id):
        got = resolve_model(spec, tmp_path / spec.replace(":", "").replace("/", "_").replace("@", "_"))
        assert got.filter == local.filter == cfg.filter and got.classes == local.classes
        assert (got.model_dir / "model.pt").read_bytes() == (tiny_model / "model" / "model.pt").read_bytes()
    assert got.kind == "run" and resolve_model("models:/tiny@champion", tmp_path / "b").detail["version"] == version
    with pytest.raises(FileNotFoundError, match="not in the registry"):
        resolve_model("models:/tiny@nobody", tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model/model.json here"):
        resolve_model(str(tmp_path / "empty"), tmp_path / "d")


@pytest.mark.ray
def test_predict_on_bccd_fields_gives_a_differential_per_field_and_overlays(ray_cluster, bccd, tiny_model, tmp_path):
    """The model trained on synthetic cells, with the WBC filter preset (``--filter config``), on 4 BCCD fields."""
    from activessf.cli import main

    images = tmp_path / "bccd"
    images.mkdir()
    for f in sorted((bccd / "JPEGImages").glob("*.jpg"))[:4]:
        (images / f.name).symlink_to(f)
    code = main(["predict", "--model", str(tiny_model), "--input", str(images), "--out", str(tmp_path / "out"),
                 "--overlays", "all", "--filter", "config", "--preset", "wbc", "--work-dir", str(tmp_path / "w")])
    assert code == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "out" / "fields.csv")
    assert len(table) == 4 and (table["cells"] >= 1).all()  # every BCCD field holds at least one white cell
    shares = table[[c for c in table if c.startswith("share_")]]
    assert np.allclose(shares.sum(1), 1)
    assert len(list((tmp_path / "out" / "overlays").glob("BloodImage_*.png"))) == 4
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["filter_source"] == "config" and summary["fields_failed"] == 0


def test_overlay_sample_names_and_picture():
    """Which fields get an overlay, their file names, and the picture: boxes in their class's colour, a legend."""
    from activessf.serving.batch import PALETTE, draw_overlay, overlay_names, overlay_sample

    assert overlay_sample(10, 3) == {0, 4, 9} and overlay_sample(10, "all") == set(range(10))
    assert overlay_sample(10, 0) == set() and overlay_sample(2, 8) == {0, 1} and overlay_sample(5, 1) == {0}
    names = overlay_names(["/a/x.png", "/b/x.png", "/c/field 1.jpg"])
    assert names["/c/field 1.jpg"] == "field_1.png" and len(set(names.values())) == 3
    assert names["/a/x.png"].startswith("x-") and names["/a/x.png"].endswith(".png")

    field = np.full((120, 200, 3), 230, np.uint8)
    picture = draw_overlay(field, [(10, 20, 40, 30), (100, 50, 60, 60)], [0, 2], ["A", "B", "C"])
    assert picture.shape[0] == 120 and picture.shape[1] > 200 + 60  # the field and the legend beside it
    assert tuple(picture[20, 30]) == PALETTE[0] and tuple(picture[80, 100]) == PALETTE[2]  # box edges
    assert (picture[:, :200][60:70, 20:40] == 230).all()  # inside a box the field is untouched
    legend = picture[:, 200:]
    assert any((legend == PALETTE[k]).all(-1).sum() > 50 for k in (0, 1, 2))  # the swatches
    many = draw_overlay(field, [], [], [f"class{i}" for i in range(11)])
    assert many.shape[0] > 120  # eleven classes do not fit beside 120 rows: the picture grows, nothing is cut


def test_cli_refuses_bad_arguments_before_ray_starts(tmp_path, capsys):
    from activessf.cli import main

    (tmp_path / "in").mkdir()
    args = ["predict", "--model", str(tmp_path), "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "w")]
    assert main([*args, "--input", str(tmp_path / "in"), "--overlays", "some"]) == 2
    assert "--overlays 'some': give a number" in capsys.readouterr().err
    assert main([*args, "--input", str(tmp_path / "in")]) == 2
    assert "no image files found" in capsys.readouterr().err
