"""Registration, champion promotion and a real `mlflow models serve` answering real HTTP requests."""

import base64
import json

import numpy as np
import pytest
import requests

from activessf.data import synth

pytestmark = pytest.mark.own_ray  # the demo job's runs, made on the session's token-auth head


@pytest.fixture
def trained(demo_job):
    """The demo job's fine-tuning run with its final fit (``a``) and its ablation's ViT row (``b``, no
    final fit), registered here under model names of their own (the job's own model, ``jobtest``, is
    checked in test_job_submit.py). The promotion policy's other cases (a better, a worse, an
    incomparable candidate) are tested on fixed numbers in test_promotion.py."""
    work, cfg = demo_job["work"], demo_job["cfg"]
    cfg = cfg.model_copy(update={"register": cfg.register.model_copy(update={"model_name": "cells"})})
    return {"work": work, "cfg": cfg, "a": work / "finetune" / "activessf",
            "b": work / "ablation" / "vit" / "finetune", "data": work / "data"}


@pytest.fixture(autouse=True)
def _store(request):
    """Every test here talks to the demo job's store: MLflow's current URI is process-global state
    that earlier tests (and the per-test environment reset) may have changed since the fixture ran."""
    if "trained" in request.fixturenames:
        from activessf.tracking import init_mlflow

        init_mlflow(request.getfixturevalue("trained")["work"], "registry")


def test_final_fit_writes_a_loadable_model(trained):
    from activessf.serving.classifier import CellClassifier

    model_dir = trained["a"] / "model"
    spec = json.loads((model_dir / "model.json").read_text())
    metrics = json.loads((trained["a"] / "metrics.json").read_text())
    assert spec["classes"] == list(synth.SUBTYPES) and spec["folds_digest"] == metrics["folds_digest"]
    clf = CellClassifier.load(model_dir)
    crops = [np.random.default_rng(i).integers(0, 255, (40 + i, 50, 3), dtype=np.uint8) for i in range(3)]
    p = clf.probabilities(crops)
    assert p.shape == (3, 11) and np.allclose(p.sum(1), 1, atol=1e-5)


def test_registration_and_promotion_decisions(trained):
    from mlflow import MlflowClient

    from activessf.serving.registry import register

    cfg = trained["cfg"]
    first = register(trained["a"], cfg)
    assert first["promoted"] and first["reason"] == "no champion yet" and first["version"] == "1"
    again = register(trained["a"], cfg)  # the same weights: registered, but the champion stays
    assert not again["promoted"] and "same weights" in again["reason"] and again["version"] == "2"
    forced = register(trained["a"], cfg, force=True)  # when the same weights go up anyway
    assert forced["promoted"] and forced["forced"] and forced["version"] == "3"
    client = MlflowClient()
    champ = client.get_model_version_by_alias("cells", "champion")
    assert str(champ.version) == "3" and champ.tags["activessf.promotion"] == "promoted"
    assert champ.tags["activessf.promotion_forced"] == "true"
    kept = client.get_model_version("cells", "2")
    assert kept.tags["activessf.promotion"] == "not promoted" and "same weights" in kept.tags["activessf.promotion_reason"]
    metrics = json.loads((trained["a"] / "metrics.json").read_text())
    assert json.loads(champ.tags["activessf.pr_auc_folds"]) == metrics["summary"]["pr_auc"]["folds"]
    run = client.get_run(forced["mlflow_run_id"])
    assert run.data.params["forced"] == "True"
    assert "promotion.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_register_refuses_a_run_without_a_final_model(trained):
    from activessf.serving.registry import register

    with pytest.raises(FileNotFoundError, match="finetune.final_fit=true"):
        register(trained["b"], trained["cfg"])  # the ablation's row ran cross-validation only


def post(url: str, images: list[bytes], kinds: list[str]):
    rows = [[base64.b64encode(b).decode(), k] for b, k in zip(images, kinds)]
    return requests.post(f"{url}/invocations", timeout=120,
                         json={"dataframe_split": {"columns": ["image", "kind"], "data": rows}})


def test_served_champion_finds_and_classifies_cells_and_refuses_bad_images(trained, served):
    from activessf.imageio import encode_png, read_rgb
    from activessf.regions.filter import filter_image

    cfg, server = served["cfg"], served["server"]  # the session's `mlflow models serve` (tests/conftest.py)
    assert served["record"]["promoted"] and served["record"]["model"] == "served"
    url, server_log = server.url, server.log_tail
    # the field where the served model's filter (the job's settings) finds the most regions
    field_path = max(sorted((trained["data"] / "smears").glob("*.png")),
                     key=lambda f: len(filter_image(read_rgb(f), cfg.filter).regions))
    field = field_path.read_bytes()
    cell = encode_png(read_rgb(field_path)[100:180, 100:190])
    res = post(url, [field, cell], ["field", "cell"])
    assert res.status_code == 200, res.text[:2000] + server_log()
    rows = res.json()["predictions"]
    expected = filter_image(read_rgb(field_path), cfg.filter).regions
    found = sorted((r["x"], r["y"], r["w"], r["h"]) for r in rows if r["image"] == 0)
    assert found == sorted((r.x, r.y, r.w, r.h) for r in expected) and len(found) > 0
    whole = [r for r in rows if r["image"] == 1]
    assert len(whole) == 1 and (whole[0]["w"], whole[0]["h"]) == (90, 80)
    for r in rows:
        probs = [r[f"p_{c}"] for c in synth.SUBTYPES]
        assert abs(sum(probs) - 1) < 1e-4 and r["subtype"] in synth.SUBTYPES
        assert r["confidence"] == pytest.approx(max(probs))
    bad = post(url, [b"this is not an image at all"], ["field"])
    assert bad.status_code == 400 and "image 0: not an image" in bad.text
    big = encode_png(np.zeros((900, 900, 3), np.uint8))  # 810,000 pixels > register.max_image_pixels
    too_big = post(url, [cell, big], ["cell", "field"])
    assert too_big.status_code == 400 and "image 1: image is 900x900" in too_big.text
    assert "register.max_image_pixels" in too_big.text
    wrong_kind = post(url, [cell], ["smear"])
    assert wrong_kind.status_code == 400 and "kind must be 'cell' or 'field'" in wrong_kind.text
    assert requests.get(f"{url}/ping", timeout=5).status_code == 200  # still serving
