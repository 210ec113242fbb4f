"""Pretraining on a real local Ray Train: 2 gloo workers, checkpoints, resume, worker failure, NaN guard.

Each Ray Train run costs ~20 s of start-up on 2 cores (docs/startup.md), so one test puts a run through a
bad day. That each SSL method trains under DDP and exports into timm is checked without Ray in tests/ssl.
"""

import json
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from activessf.config import load_config
from activessf.stages.pretrain import run_pretrain
from activessf.training.checkpoint import load_state

pytestmark = pytest.mark.ray

TINY = ["pretrain.model=micro", "pretrain.image_size=32", "pretrain.patch_size=8", "pretrain.batch_size=8",
        "pretrain.epochs=3", "pretrain.warmup_epochs=1", "pretrain.checkpoint_every=1", "pretrain.num_workers=2",
        "pretrain.source=filtered"]


@pytest.fixture
def regions(embedded):
    return embedded["regions"]


def config(root, *extra):
    return load_config(overrides=TINY + [f"run.work_dir={root / 'work'}", *extra])


@pytest.fixture
def mlflow_store(tmp_path):
    from activessf.tracking import init_mlflow

    init_mlflow(tmp_path / "work", "pretrain-test")
    return tmp_path / "work"


def run_dir(root, name):
    """The Ray Train run of ``name`` (named ``<name>-<digest of the inputs>``)."""
    found = list((root / "work" / "ray_results").glob(f"{name}-*"))
    assert len(found) == 1, found
    return found[0]


def ckpt_dirs(run_dir):
    return [d for d in run_dir.glob("checkpoint_*") if d.is_dir()]


def select_half(regions, out):
    ids = pq.read_table(regions / "regions", columns=["region_id"]).column("region_id").to_pylist()
    (out / "selection").mkdir(parents=True)
    pq.write_table(pa.table({"region_id": ids, "selected": [i % 2 == 0 for i in range(len(ids))]}),
                   out / "selection" / "part-0.parquet")
    return (len(ids) + 1) // 2


@pytest.mark.timeout(300)
def test_two_gloo_workers_survive_nan_steps_a_killed_run_and_a_dead_worker(regions, tmp_path, mlflow_store, capfd):
    """2 gloo workers pretrain on the selected half of the regions, one image per worker per step.

    Run 1: injected NaN losses are skipped by both workers alike and, after 5 in a row, rolled back with
    a halved lr; then the run is killed after the epoch-2 checkpoint with no retries left. Run 2 (the same
    name) resumes at epoch 2 with the saved optimiser state; a worker dies at epoch 3 and FailureConfig
    restarts the group from epoch 3's checkpoint; the run completes and exports a timm encoder. Rank 0
    prints one progress line per epoch, which Ray forwards to this process's stdout.
    """
    import mlflow
    import timm
    from ray.train import TrainingFailedError

    from activessf.config import FinetuneConfig
    from activessf.finetune.model import build_classifier

    kept = select_half(regions, tmp_path / "sel")
    cfg = config(tmp_path, "pretrain.source=selected", "pretrain.epochs=4", "pretrain.batch_size=2")
    nan = {"inject_nan_steps": [0, 2, 3, 4, 5, 6], "max_bad_steps": 5}
    with pytest.raises(TrainingFailedError):
        run_pretrain(cfg, tmp_path / "a", regions=regions, selection=tmp_path / "sel", name="day", max_failures=0,
                     test_hooks={**nan, "fail_at_epoch": 2})
    saved = max(map(load_state, ckpt_dirs(run_dir(tmp_path, "day"))), key=lambda st: st["epoch"])
    assert saved["epoch"] == 2 and saved["guard"]["skipped"] == 6 and saved["guard"]["rollbacks"] == 1

    rec = run_pretrain(cfg, tmp_path / "b", regions=regions, selection=tmp_path / "sel", name="day", max_failures=1,
                       test_hooks={**nan, "fail_at_epoch": 3})
    assert rec["rows"] == kept and rec["epochs"] == 4 and np.isfinite(rec["final_loss"])
    assert rec["skipped_steps"] == 6 and rec["rollbacks"] == 1 and rec["lr_factor"] == 0.5  # kept across restarts
    assert rec["resumed"]["epoch"] == 3  # the restart's resume, from epoch 3's checkpoint
    # ... and before it, run 2 had resumed run 1's epoch-2 checkpoint with the very same optimiser state
    by_epoch = {st["epoch"]: st for st in map(load_state, ckpt_dirs(run_dir(tmp_path, "day")))}
    assert by_epoch[3]["resumed"] == {"epoch": 2, "optimizer_digest": saved["optimizer_digest"]}
    assert 0 < rec["startup"]["fit_to_loop_start"] < rec["startup"]["fit_to_first_step"]
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and all(np.isfinite(h["loss"]) for h in history)
    assert all(h["cuda_initialized"] == 0 for h in history)
    run = mlflow.get_run(rec["mlflow_run_id"])
    assert sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")) == [3, 4]
    assert run.data.params["layer_decay"] == "0.75"  # pretrain.layer_decay, the paper's, recorded
    assert rec["selection"] == str((tmp_path / "sel").resolve())  # what fine-tuning traces labels back through
    assert {"encoder", "reconstructions"} <= {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    vit = timm.create_model(rec["timm_name"], pretrained=False, num_classes=0, **rec["timm_kwargs"])
    vit.load_state_dict(torch.load(tmp_path / "b" / "encoder.pt", weights_only=True), strict=True)
    model, info = build_classifier(FinetuneConfig(init=str(tmp_path / "b")), 5)  # the encoder, a fresh head
    assert info["init"] == "pretrained" and info["method"] == "mae" and info["timm_name"] == rec["timm_name"]
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    out, deadline = "", time.time() + 15  # worker output reaches the driver a moment after it is printed
    while out.count("pretrain mae  epoch 4/4") < 1 and time.time() < deadline:
        out += capfd.readouterr().out
        time.sleep(0.5)
    line = r"pretrain mae  epoch {}/4  loss \d+\.\d{{4}}  lr \d\.\de-\d\d  \d+ img/s  elapsed \w+  eta \w+"
    assert re.search(line.format(1), out) and re.search(line.format(4), out), out[-3000:]
    assert out.count("pretrain mae  epoch 4/4") == 1  # the last epoch ran once, and only rank 0 prints


@pytest.mark.parametrize("source", ["selected", "filtered", "fields"])
def test_small_sets_travel_in_memory_with_the_same_images_ray_data_makes(regions, embedded, tmp_path, source):
    from activessf.stages.pretrain import training_images

    half = select_half(regions, tmp_path / "sel")
    fields = str(embedded["data"] / "smears")
    inline = training_images(config(tmp_path, f"pretrain.source={source}"), regions, tmp_path / "sel", fields)
    streamed = training_images(config(tmp_path, f"pretrain.source={source}", "run.inline_data_mb=0"), regions,
                               tmp_path / "sel", fields)
    assert isinstance(inline, dict) and not isinstance(streamed, dict)
    rows = sorted(r["image"].tobytes() for r in streamed.iter_rows())
    assert sorted(im.tobytes() for im in inline["image"]) == rows and inline["image"].shape[1:] == (37, 37, 3)
    every = pq.read_table(regions / "regions", columns=["region_id"]).num_rows
    assert len(rows) == {"selected": half, "filtered": every, "fields": 6 * 4}[source]  # 4 crops per field


def test_a_pool_smaller_than_a_batch_is_refused_before_training(regions, tmp_path, mlflow_store):
    """Every step takes a whole batch: 4 images and a batch of 32 would run every epoch without a step."""
    ids = pq.read_table(regions / "regions", columns=["region_id"]).column("region_id").to_pylist()
    (tmp_path / "sel" / "selection").mkdir(parents=True)
    pq.write_table(pa.table({"region_id": ids, "selected": [i < 4 for i in range(len(ids))]}),
                   tmp_path / "sel" / "selection" / "part-0.parquet")
    cfg = config(tmp_path, "pretrain.source=selected", "pretrain.batch_size=32")
    with pytest.raises(ValueError, match="only 4 training images for a batch of 32: nothing to train on"):
        run_pretrain(cfg, tmp_path / "out", regions=regions, selection=tmp_path / "sel")
    assert not (tmp_path / "out").exists() and not (tmp_path / "work" / "ray_results").exists()
