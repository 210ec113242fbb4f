"""Pretraining on a real local Ray Train: 2 gloo workers, checkpoints, resume, worker failure, NaN guard."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from activessf.config import SynthConfig, load_config
from activessf.data import synth
from activessf.stages.filter import run_filter
from activessf.stages.pretrain import run_pretrain
from activessf.training.checkpoint import load_state

pytestmark = pytest.mark.ray

TINY = ["pretrain.model=micro", "pretrain.image_size=32", "pretrain.patch_size=8", "pretrain.batch_size=8",
        "pretrain.epochs=3", "pretrain.warmup_epochs=1", "pretrain.checkpoint_every=1", "pretrain.num_workers=2",
        "pretrain.moco_mlp_dim=32", "pretrain.moco_dim=16", "pretrain.source=filtered"]


@pytest.fixture(scope="module")
def regions(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    synth.generate(SynthConfig(images=6, labelled=0, width=512, height=384, workers=1), root / "data", progress=False)
    run_filter(str(root / "data" / "smears"), root / "regions", load_config(overrides=["filter.min_box=40"]))
    return root


# what each method needs besides TINY: ConvMAE's patch is 16 px, MixMIM's 32 px (and mixing needs >= 2 blocks)
METHOD = {"mae": [], "mocov3": [], "convmae": [], "mixmim": ["pretrain.image_size=64"]}


def config(root, *extra):
    return load_config(overrides=TINY + [f"run.work_dir={root / 'work'}", *extra])


@pytest.fixture
def mlflow_store(tmp_path):
    from activessf.tracking import init_mlflow

    init_mlflow(tmp_path / "work", "pretrain-test")
    return tmp_path / "work"


@pytest.mark.parametrize("method", ["mae", "mocov3"])
def test_two_gloo_workers_train_and_export_a_timm_encoder(regions, tmp_path, mlflow_store, method):
    import mlflow
    import timm

    cfg = config(tmp_path, f"pretrain.method={method}", *METHOD[method])
    rec = run_pretrain(tmp_path / "enc", cfg, regions=regions / "regions", name=f"t-{method}")
    assert rec["epochs"] == 3 and rec["rows"] > 8 and np.isfinite(rec["final_loss"])
    history = json.loads((tmp_path / "enc" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and all(h["cuda_initialized"] == 0 for h in history)
    vit = timm.create_model(rec["timm_name"], pretrained=False, num_classes=0, **rec["timm_kwargs"])
    vit.load_state_dict(torch.load(tmp_path / "enc" / "encoder.pt", weights_only=True), strict=True)
    run = mlflow.get_run(rec["mlflow_run_id"])
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")) == 3
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert "encoder" in arts
    if method == "mae":
        assert "reconstructions" in arts


def test_selected_regions_only(regions, tmp_path, mlflow_store):
    ids = pq.read_table(regions / "regions" / "regions", columns=["region_id"]).column("region_id").to_pylist()
    sel = tmp_path / "sel" / "selection"
    sel.mkdir(parents=True)
    pq.write_table(pa.table({"region_id": ids, "selected": [i % 2 == 0 for i in range(len(ids))]}),
                   sel / "part-0.parquet")
    cfg = config(tmp_path, "pretrain.source=selected", "pretrain.epochs=1", "pretrain.warmup_epochs=0")
    rec = run_pretrain(tmp_path / "enc", cfg, regions=regions / "regions", selection=tmp_path / "sel", name="t-sel")
    assert rec["rows"] == (len(ids) + 1) // 2


@pytest.mark.parametrize("method", ["mae", "convmae", "mixmim"])
def test_rerun_with_the_same_name_resumes_at_the_right_epoch(regions, tmp_path, mlflow_store, method):
    """Also the 2-worker run of ConvMAE and MixMIM, and their encoders loading into a classifier."""
    from ray.train import TrainingFailedError

    from activessf.config import FinetuneConfig
    from activessf.finetune.model import build_classifier

    cfg = config(tmp_path, "pretrain.epochs=4", f"pretrain.method={method}", *METHOD[method])
    with pytest.raises(TrainingFailedError):  # killed after the checkpoint of epoch 2, no retries
        run_pretrain(tmp_path / "a", cfg, regions=regions / "regions", name="resume", max_failures=0,
                     test_hooks={"fail_at_epoch": 2})
    ckpts = [d for d in (tmp_path / "work" / "ray_results" / "resume").glob("checkpoint_*") if d.is_dir()]
    saved = max((load_state(d) for d in ckpts), key=lambda st: st["epoch"])
    assert saved["epoch"] == 2
    rec = run_pretrain(tmp_path / "b", cfg, regions=regions / "regions", name="resume")
    assert rec["epochs"] == 4
    assert rec["resumed"] == {"epoch": 2, "optimizer_digest": saved["optimizer_digest"]}
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and all(np.isfinite(h["loss"]) for h in history)
    model, info = build_classifier(FinetuneConfig(init=str(tmp_path / "b")), 5)  # the encoder, a fresh head
    assert info["init"] == "pretrained" and info["method"] == method and info["timm_name"] == rec["timm_name"]
    size = cfg.pretrain.image_size
    assert model.eval()(torch.rand(2, 3, size, size)).shape == (2, 5)


def test_a_dead_worker_is_restarted_and_the_run_completes(regions, tmp_path, mlflow_store):
    cfg = config(tmp_path)
    rec = run_pretrain(tmp_path / "enc", cfg, regions=regions / "regions", name="flaky", max_failures=1,
                       test_hooks={"fail_at_epoch": 1})
    assert rec["epochs"] == 3 and rec["resumed"]["epoch"] == 1  # restarted from the epoch-1 checkpoint


def test_non_finite_losses_are_skipped_and_rolled_back(regions, tmp_path, mlflow_store):
    cfg = config(tmp_path, "pretrain.epochs=2", "pretrain.warmup_epochs=0", "pretrain.batch_size=2")  # 1 per worker
    rec = run_pretrain(tmp_path / "enc", cfg, regions=regions / "regions", name="nan",
                       test_hooks={"inject_nan_steps": [0, 2, 3, 4, 5, 6], "max_bad_steps": 5})
    assert rec["skipped_steps"] == 6 and rec["rollbacks"] == 1 and rec["lr_factor"] == 0.5
    assert np.isfinite(rec["final_loss"])
