"""Bootstrap rounds end to end on a real local Ray: label-free features for selection (select.rounds).

Two rounds on the tiny synthetic set: round 0 pretrains on every filtered region, round 1 on round 0's
selection; each embeds with its own encoder and reselects. Two Ray Train runs (~25 s of start-up here).
"""

import json

import mlflow
import pyarrow.parquet as pq
import pytest

from activessf.bootstrap import format_rounds, run_bootstrap
from activessf.config import load_config
from activessf.features.backbone import file_digest
from activessf.stages.select_eval import region_classes
from conftest import EMBED_TINY

pytestmark = pytest.mark.ray

# batch 2: round 0 keeps a handful of the 19 regions, and round 1 needs a whole batch of them to train on
TINY = ["pretrain.model=micro", "pretrain.image_size=32", "pretrain.patch_size=8", "pretrain.batch_size=2",
        "pretrain.num_workers=1", "select.rounds=2", "select.bootstrap_epochs=1"]


@pytest.mark.timeout(300)
def test_two_rounds_pretrain_embed_and_reselect_without_labels(embedded, tmp_path):
    from activessf.tracking import init_mlflow

    cfg = load_config(overrides=EMBED_TINY + TINY + [f"run.work_dir={tmp_path / 'work'}"])
    init_mlflow(tmp_path / "work", "bootstrap-test")
    truth = region_classes(embedded["regions"], embedded["data"], "megakaryocyte")
    out = tmp_path / "boot"
    res = run_bootstrap(cfg, embedded["regions"], embedded["data"] / "labelled", out, truth=truth,
                        rare=frozenset({"CA-MK", "HL-MK"}))

    record = json.loads((out / "rounds.json").read_text())
    assert dict(res.summary)["rounds"] == record["rounds"] and len(record["rounds"]) == 2
    regions = pq.read_table(embedded["regions"] / "regions", columns=["region_id"]).num_rows
    r0, r1 = record["rounds"]
    # round 0 learned from every filtered region, round 1 from round 0's selection: no labels in either
    enc0 = json.loads((out / "round0" / "encoder" / "encoder.json").read_text())
    enc1 = json.loads((out / "round1" / "encoder" / "encoder.json").read_text())
    assert (enc0["source"], enc0["rows"], enc0["epochs"]) == ("filtered", regions, 1)
    assert (enc1["source"], enc1["rows"]) == ("selected", r0["selected"])
    for r, enc in ((0, out / "round0" / "encoder"), (1, out / "round1" / "encoder")):
        for source in ("regions", "labelled"):
            meta = json.loads((out / f"round{r}" / "embeddings" / source / "embed.json").read_text())
            assert meta["weights"] == str(enc) and not meta["random_init"]
            assert meta["backbone"] == enc0["timm_name"] and meta["image_size"] == 32  # the encoder's, not embed's
            assert meta["weights_digest"] == file_digest(enc / "encoder.pt")
        report = json.loads((out / f"round{r}" / "selection" / "report.json").read_text())
        assert report["prototypes"]["weights_digest"] == file_digest(enc / "encoder.pt")
        assert report["totals"]["regions"] == regions
    assert r0["jaccard_previous"] is None and 0 <= r1["jaccard_previous"] <= 1
    for r in (r0, r1):
        assert 0 < r["selected"] <= regions
        ev = r["evidence"]
        assert ev["random"]["draws"] > 0 and 0 <= ev["distractor_share_selected"] <= 1
    assert record["selection"] == str(out / "round1" / "selection") and record["stopped"] is None
    table = format_rounds(record)
    assert table.count("\n") == 2 and "jaccard" in table

    runs = mlflow.search_runs(experiment_names=["bootstrap-test"])
    name_of = dict(zip(runs["run_id"], runs["tags.mlflow.runName"]))
    children = {}
    for i, p in zip(runs["run_id"], runs["tags.mlflow.parentRunId"]):
        children.setdefault(name_of.get(p), []).append(name_of[i])
    assert sorted(children["bootstrap"]) == ["bootstrap-round0", "bootstrap-round1"]
    assert sorted(children["bootstrap-round0"]) == sorted(children["bootstrap-round1"]) == \
        ["embed-labelled", "embed-regions", "pretrain-mae", "select"]
