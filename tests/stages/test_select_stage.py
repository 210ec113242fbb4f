"""Embedding and selection on a real local Ray: every region recorded, repeatable, restart-safe."""

import json
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from activessf.config import SynthConfig, load_config
from activessf.data import synth
from activessf.selection.prototypes import load
from activessf.stages.embed import read_embeddings, run_embed
from activessf.stages.filter import run_filter
from activessf.stages.select import run_select

pytestmark = pytest.mark.ray

TINY = ["embed.backbone=test_resnet", "embed.image_size=48", "embed.batch_size=16",
        "prototypes.k=6", "select.bound_mode=quantile", "select.q_low=0.0", "select.q_high=1.0"]


def config(*extra):
    return load_config(overrides=TINY + list(extra))


@pytest.fixture(scope="module")
def pipeline(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("sel")
    data = root / "data"
    synth.generate(SynthConfig(images=4, labelled=55, width=512, height=384, workers=1), data, progress=False)
    cfg = config()
    run_filter(str(data / "smears"), root / "regions", cfg)
    run_embed("regions", root / "regions", root / "emb_regions", cfg)
    run_embed("labelled", data / "labelled", root / "emb_labelled", cfg)
    return root


def selection(out):
    return pq.read_table(out / "selection")


def test_embeddings_have_ids_labels_and_fixed_size_vectors(pipeline):
    ids, labels, x, meta = read_embeddings(pipeline / "emb_labelled")
    assert x.shape == (55, meta["dim"]) and x.dtype == np.float32 and np.isfinite(x).all()
    assert meta["random_init"] and meta["weights_digest"] == "random-init"
    assert sorted(set(labels)) == sorted(synth.SUBTYPES) and all(i.startswith(lab) for i, lab in zip(ids, labels))
    rids, rlabels, rx, _ = read_embeddings(pipeline / "emb_regions")
    regions = pq.read_table(pipeline / "regions" / "regions")
    assert sorted(rids) == sorted(regions.column("region_id").to_pylist()) and set(rlabels) == {None}
    assert pq.read_schema(next((pipeline / "emb_regions" / "embeddings").glob("*.parquet"))).field(
        "embedding").type.list_size == meta["dim"]


def test_every_region_gets_a_recorded_decision(pipeline, tmp_path):
    report = run_select(pipeline / "emb_regions", tmp_path / "s", config(),
                        labelled_embeddings=pipeline / "emb_labelled", regions=pipeline / "regions")
    t = selection(tmp_path / "s")
    rids, _, x, _ = read_embeddings(pipeline / "emb_regions")
    assert t.column("region_id").to_pylist() == sorted(rids)
    proto = load(tmp_path / "s" / "prototypes.npz")
    d = t.to_pydict()
    for c, dist, thr, sel in zip(d["cluster"], d["distance"], d["threshold"], d["selected"]):
        assert thr == np.float32(proto.thresholds[c]) and sel == (dist <= thr)
    assert report["totals"]["regions"] == len(rids)
    assert sum(r["candidates"] for r in report["clusters"]) == len(rids)
    assert sum(r["selected"] for r in report["clusters"]) == report["totals"]["selected"] == sum(d["selected"])
    assert sum(r["n"] for r in report["clusters"]) == 55
    assert (tmp_path / "s" / "distances.png").is_file() and list((tmp_path / "s" / "clusters").glob("*.png"))


def test_selection_is_bitwise_repeatable(pipeline, tmp_path):
    for name in ("a", "b"):
        run_select(pipeline / "emb_regions", tmp_path / name, config(), labelled_embeddings=pipeline / "emb_labelled")
    assert selection(tmp_path / "a").equals(selection(tmp_path / "b"))
    assert load(tmp_path / "a" / "prototypes.npz").digest == load(tmp_path / "b" / "prototypes.npz").digest


def test_snapshot_reuse_and_new_bounds_without_refit(pipeline, tmp_path):
    run_select(pipeline / "emb_regions", tmp_path / "a", config(), labelled_embeddings=pipeline / "emb_labelled")
    run_select(pipeline / "emb_regions", tmp_path / "b", config(), snapshot=tmp_path / "a" / "prototypes.npz")
    assert selection(tmp_path / "a").drop_columns(["prototypes_version"]).equals(
        selection(tmp_path / "b").drop_columns(["prototypes_version"]))
    looser = config("select.bound_mode=absolute", "select.lb=0", "select.ub=1000", "select.alpha=0")
    report = run_select(pipeline / "emb_regions", tmp_path / "c", looser, snapshot=tmp_path / "a" / "prototypes.npz")
    a, c = load(tmp_path / "a" / "prototypes.npz"), load(tmp_path / "c" / "prototypes.npz")
    assert np.array_equal(a.centres, c.centres) and c.version == a.version + 1
    assert report["totals"]["selected"] == report["totals"]["regions"]  # alpha 0: every threshold is UB = 1000


def test_store_actor_killed_mid_selection_changes_nothing(pipeline, tmp_path):
    import ray

    run_select(pipeline / "emb_regions", tmp_path / "calm", config(), labelled_embeddings=pipeline / "emb_labelled",
               batch_size=1)
    seen = {}

    def chaos(actor):
        def kill_when_busy():
            while ray.get(actor.info.remote())["calls"] < 3:
                pass
            seen["calls_at_kill"] = ray.get(actor.info.remote())["calls"]
            ray.kill(actor, no_restart=False)  # a crash: Ray restarts it, it reloads its snapshot

        threading.Thread(target=kill_when_busy, daemon=True).start()

    run_select(pipeline / "emb_regions", tmp_path / "chaos", config(), labelled_embeddings=pipeline / "emb_labelled",
               batch_size=1, on_store=chaos)
    n = len(read_embeddings(pipeline / "emb_regions")[0])
    assert 3 <= seen["calls_at_kill"] < n  # the kill came mid-selection
    events = [json.loads(line) for line in (tmp_path / "chaos" / "prototypes.events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["reloaded_version"] == 1  # restarted, and reloaded its snapshot
    assert selection(tmp_path / "chaos").equals(selection(tmp_path / "calm"))


def test_labelled_set_smaller_than_k_is_a_clear_error(pipeline, tmp_path):
    from activessf.selection.prototypes import PrototypeError

    with pytest.raises(PrototypeError, match="K = 80 prototypes need at least 80 labelled samples, got 55"):
        run_select(pipeline / "emb_regions", tmp_path / "x", config("prototypes.k=80"),
                   labelled_embeddings=pipeline / "emb_labelled")
    assert not (tmp_path / "x").exists()


def test_cli_job_script_and_select_eval_join_the_cluster(pipeline, tmp_path, repo):
    import json as _json
    import os
    import subprocess
    import sys

    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    sets = [a for o in TINY for a in ("--set", o)]
    base = ["--work-dir", str(tmp_path / "w"), *sets]
    fit = subprocess.run([sys.executable, "-m", "activessf.cli", "select", "--embeddings",
                          str(pipeline / "emb_regions"), "--labelled", str(pipeline / "emb_labelled"),
                          "--out", str(tmp_path / "a"), *base], env=env, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "threshold" in fit.stdout and "randomly initialised" in fit.stdout
    reuse = subprocess.run([sys.executable, str(repo / "jobs" / "select_samples.py"), "--embeddings",
                            str(pipeline / "emb_regions"), "--prototypes", str(tmp_path / "a" / "prototypes.npz"),
                            "--out", str(tmp_path / "b"), *base], env=env, capture_output=True, text=True,
                           timeout=300, cwd=repo)
    assert reuse.returncode == 0, reuse.stderr[-3000:]
    assert selection(tmp_path / "a").drop_columns(["prototypes_version"]).equals(
        selection(tmp_path / "b").drop_columns(["prototypes_version"]))
    ev = subprocess.run([sys.executable, "-m", "activessf.cli", "select-eval", "--selection", str(tmp_path / "a"),
                         "--regions", str(pipeline / "regions"), "--boxes", str(pipeline / "data"), *base],
                        env=env, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = _json.loads((tmp_path / "a" / "evidence.json").read_text())
    assert report["regions"] == len(selection(tmp_path / "a")) and report["random"]["draws"] in (0, 1000)
