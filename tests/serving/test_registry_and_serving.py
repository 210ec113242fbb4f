"""Registration, champion promotion and a real `mlflow models serve` answering real HTTP requests."""

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from activessf.config import SynthConfig, load_config
from activessf.data import synth

pytestmark = pytest.mark.ray

VIT = ["finetune.backbone=vit_tiny_patch16_224", "finetune.image_size=32", "finetune.epochs=1",
       "finetune.warmup_epochs=0", "finetune.batch_size=8", "evaluate.folds=2", "finetune.final_fit=true",
       "finetune.backbone_kwargs={img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
       "filter.min_box=40", "register.model_name=cells", "register.max_image_pixels=600000"]


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """Two fine-tuning runs with final fits: A on the default folds, B on other folds."""
    from activessf.stages.finetune import run_finetune
    from activessf.tracking import init_mlflow

    root = tmp_path_factory.mktemp("reg")
    synth.generate(SynthConfig(images=2, labelled=55, width=512, height=384, workers=1), root / "d", progress=False)
    work = root / "w"
    init_mlflow(work, "registry")
    cfg = load_config(overrides=VIT + [f"run.work_dir={work}"])
    a = run_finetune(root / "d" / "labelled", root / "a", cfg, name="A")
    b = run_finetune(root / "d" / "labelled", root / "b", load_config(overrides=VIT + [f"run.work_dir={work}",
                                                                                      "evaluate.seed=5", "run.seed=1"]), name="B")
    return {"root": root, "work": work, "cfg": cfg, "a": a, "b": b}


@pytest.fixture(autouse=True)
def _store(request):
    """Every test here talks to the module's store: MLflow's current URI is process-global state that
    earlier tests (and the per-test environment reset) may have changed since the fixture ran."""
    if "trained" in request.fixturenames:
        from activessf.tracking import init_mlflow

        init_mlflow(request.getfixturevalue("trained")["work"], "registry")


def test_final_fit_writes_a_loadable_model(trained):
    from activessf.serving.classifier import CellClassifier

    model_dir = trained["root"] / "a" / "model"
    spec = json.loads((model_dir / "model.json").read_text())
    assert spec["classes"] == list(synth.SUBTYPES) and spec["folds_digest"] == trained["a"]["folds_digest"]
    clf = CellClassifier.load(model_dir)
    crops = [np.random.default_rng(i).integers(0, 255, (40 + i, 50, 3), dtype=np.uint8) for i in range(3)]
    p = clf.probabilities(crops)
    assert p.shape == (3, 11) and np.allclose(p.sum(1), 1, atol=1e-5)


def test_registration_and_promotion_decisions(trained):
    from mlflow import MlflowClient

    from activessf.serving.registry import register

    cfg, root = trained["cfg"], trained["root"]
    first = register(root / "a", cfg)
    assert first["promoted"] and first["reason"] == "no champion yet" and first["version"] == "1"
    again = register(root / "a", cfg)  # the same weights: registered, but the champion stays
    assert not again["promoted"] and "same weights" in again["reason"] and again["version"] == "2"
    other = register(root / "b", cfg)  # other folds: not comparable
    assert not other["promoted"] and "different folds" in other["reason"]
    forced = register(root / "b", cfg, force=True)
    assert forced["promoted"] and forced["forced"]
    client = MlflowClient()
    champ = client.get_model_version_by_alias("cells", "champion")
    assert str(champ.version) == forced["version"] == "4"
    assert champ.tags["activessf.promotion_forced"] == "true" and champ.tags["activessf.promotion"] == "promoted"
    kept = client.get_model_version("cells", "3")
    assert kept.tags["activessf.promotion"] == "not promoted" and "different folds" in kept.tags["activessf.promotion_reason"]
    assert json.loads(champ.tags["activessf.pr_auc_folds"]) == trained["b"]["summary"]["pr_auc"]["folds"]
    run = client.get_run(forced["mlflow_run_id"])
    assert run.data.params["forced"] == "True"
    assert "promotion.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_register_refuses_a_run_without_a_final_model(trained, tmp_path):
    from activessf.serving.registry import register

    import shutil

    shutil.copytree(trained["root"] / "a", tmp_path / "nomodel", ignore=shutil.ignore_patterns("model"))
    with pytest.raises(FileNotFoundError, match="finetune.final_fit=true"):
        register(tmp_path / "nomodel", trained["cfg"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, images: list[bytes], kinds: list[str]):
    rows = [[base64.b64encode(b).decode(), k] for b, k in zip(images, kinds)]
    return requests.post(f"http://127.0.0.1:{port}/invocations", timeout=120,
                         json={"dataframe_split": {"columns": ["image", "kind"], "data": rows}})


def test_served_champion_finds_and_classifies_cells_and_refuses_bad_images(trained, tmp_path):
    from activessf.config import FilterConfig
    from activessf.imageio import encode_png, read_rgb
    from activessf.regions.filter import filter_image
    from activessf.serving.registry import register
    from activessf.tracking import tracking_uri

    cfg = trained["cfg"].model_copy(update={"register": trained["cfg"].register.model_copy(
        update={"model_name": "served"})})
    assert register(trained["root"] / "a", cfg)["promoted"]
    port = free_port()
    bin_dir = Path(sys.executable).parent  # mlflow starts uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(trained["work"]),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "server.log", "w")  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m",
                               "models:/served@champion", "--env-manager", "local", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)

    def server_log() -> str:
        return (tmp_path / "server.log").read_text()[-3000:]

    try:
        deadline = time.time() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None and time.time() < deadline, server_log()
            time.sleep(1)
        field_path = trained["root"] / "d" / "smears" / "field_00000.png"
        field = field_path.read_bytes()
        cell = encode_png(read_rgb(field_path)[100:180, 100:190])
        res = post(port, [field, cell], ["field", "cell"])
        assert res.status_code == 200, res.text[:2000] + server_log()
        rows = res.json()["predictions"]
        expected = filter_image(read_rgb(field_path), FilterConfig(min_box=40)).regions
        found = sorted((r["x"], r["y"], r["w"], r["h"]) for r in rows if r["image"] == 0)
        assert found == sorted((r.x, r.y, r.w, r.h) for r in expected) and len(found) > 0
        whole = [r for r in rows if r["image"] == 1]
        assert len(whole) == 1 and (whole[0]["w"], whole[0]["h"]) == (90, 80)
        for r in rows:
            probs = [r[f"p_{c}"] for c in synth.SUBTYPES]
            assert abs(sum(probs) - 1) < 1e-4 and r["subtype"] in synth.SUBTYPES
            assert r["confidence"] == pytest.approx(max(probs))
        bad = post(port, [b"this is not an image at all"], ["field"])
        assert bad.status_code == 400 and "image 0: not an image" in bad.text
        big = encode_png(np.zeros((900, 900, 3), np.uint8))  # 810,000 pixels > register.max_image_pixels
        too_big = post(port, [cell, big], ["cell", "field"])
        assert too_big.status_code == 400 and "image 1: image is 900x900" in too_big.text
        assert "register.max_image_pixels" in too_big.text
        wrong_kind = post(port, [cell], ["smear"])
        assert wrong_kind.status_code == 400 and "kind must be 'cell' or 'field'" in wrong_kind.text
        assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200  # still serving
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
