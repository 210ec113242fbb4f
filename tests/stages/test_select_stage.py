"""Embedding and selection on a real local Ray: every region recorded, repeatable, restart-safe."""

import json
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from activessf.config import load_config
from activessf.data import synth
from activessf.selection.prototypes import load
from activessf.data.embeddings import read_embeddings
from activessf.stages.select import run_select
from conftest import EMBED_TINY

pytestmark = pytest.mark.ray

TINY = EMBED_TINY + ["prototypes.k=6", "select.bound_mode=quantile", "select.q_low=0.0", "select.q_high=1.0"]


def config(*extra):
    return load_config(overrides=TINY + list(extra))


@pytest.fixture(scope="module")
def pipeline(embedded):
    return embedded


@pytest.fixture(scope="module")
def fitted(pipeline, tmp_path_factory):
    """One selection with prototypes fitted on the labelled embeddings."""
    out = tmp_path_factory.mktemp("fitted") / "s"
    report = run_select(config(), pipeline["emb_regions"], out, labelled_embeddings=pipeline["emb_labelled"],
                        regions=pipeline["regions"])
    return out, report


def selection(out):
    return pq.read_table(out / "selection")


def test_embeddings_have_ids_labels_and_fixed_size_vectors(pipeline):
    """Regions were embedded by Ray Data's actor pool, the labelled crops in the driver (a small set)."""
    from activessf.stages.embed import embed_here, source_rows

    ids, labels, x, meta = read_embeddings(pipeline["emb_labelled"])
    assert meta["devices"] == "this process (a small set)"
    assert x.shape == (55, meta["dim"]) and x.dtype == np.float32 and np.isfinite(x).all()
    assert meta["random_init"] and meta["weights_digest"] == "random-init"
    assert sorted(set(labels)) == sorted(synth.SUBTYPES) and all(i.startswith(lab) for i, lab in zip(ids, labels))
    rids, rlabels, rx, _ = read_embeddings(pipeline["emb_regions"])
    regions = pq.read_table(pipeline["regions"] / "regions")
    assert sorted(rids) == sorted(regions.column("region_id").to_pylist()) and set(rlabels) == {None}
    assert pq.read_schema(next((pipeline["emb_regions"] / "embeddings").glob("*.parquet"))).field(
        "embedding").type.list_size == meta["dim"]
    assert read_embeddings(pipeline["emb_regions"])[3]["devices"].endswith("CPU actors")
    # the same crops embedded in this process: the same vectors as the actor pool's (up to float rounding)
    here = embed_here(source_rows("regions", pipeline["regions"]), config().embed).sort_by("id")
    assert here.column("id").to_pylist() == rids
    assert np.allclose(np.array(here.column("embedding").to_pylist(), np.float32), rx, atol=1e-4)


def test_every_region_gets_a_recorded_decision(pipeline, fitted):
    out, report = fitted
    t = selection(out)
    rids, _, x, _ = read_embeddings(pipeline["emb_regions"])
    assert t.column("region_id").to_pylist() == sorted(rids)
    proto = load(out / "prototypes.npz")
    d = t.to_pydict()
    for c, dist, thr, sel in zip(d["cluster"], d["distance"], d["threshold"], d["selected"]):
        assert thr == np.float32(proto.thresholds[c]) and sel == (dist <= thr)
    assert report["totals"]["regions"] == len(rids)
    assert sum(r["candidates"] for r in report["clusters"]) == len(rids)
    assert sum(r["selected"] for r in report["clusters"]) == report["totals"]["selected"] == sum(d["selected"])
    assert sum(r["n"] for r in report["clusters"]) == 55
    served = report["store"]["served"]  # every region went through the store actor
    assert served["assigned"] == len(rids) and served["calls"] >= 1 and served["busy_seconds"] > 0
    assert (out / "distances.png").is_file() and list((out / "clusters").glob("*.png"))
    from activessf.imageio import read_rgb

    assert (out / "embedding_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h, w, _ = read_rgb(out / "embedding_map.png").shape
    assert 400 < h < 700 and w > 1.8 * h  # the map and the distance / threshold panel side by side


def test_a_snapshot_reselects_without_refit_and_takes_new_bounds(pipeline, fitted, tmp_path):
    """(Bitwise repeatability: the CLI's fit below, and the crash test, reproduce ``fitted`` exactly.)"""
    out, _ = fitted
    run_select(config(), pipeline["emb_regions"], tmp_path / "b", snapshot=out / "prototypes.npz")
    assert (tmp_path / "b" / "embedding_map.png").is_file()  # without the labelled cells
    assert selection(out).drop_columns(["prototypes_version"]).equals(
        selection(tmp_path / "b").drop_columns(["prototypes_version"]))
    looser = config("select.bound_mode=absolute", "select.lb=0", "select.ub=1000", "select.alpha=0")
    report = run_select(looser, pipeline["emb_regions"], tmp_path / "c", snapshot=out / "prototypes.npz")
    a, c = load(out / "prototypes.npz"), load(tmp_path / "c" / "prototypes.npz")
    assert np.array_equal(a.centres, c.centres) and c.version == a.version + 1
    assert report["totals"]["selected"] == report["totals"]["regions"]  # alpha 0: every threshold is UB = 1000


def test_store_actor_killed_mid_selection_changes_nothing(pipeline, fitted, tmp_path):
    """One region per batch, the store crashed after its third call: the same table as the calm run."""
    import ray

    seen = {}

    def chaos(actor):
        def kill_when_busy():
            while ray.get(actor.info.remote())["calls"] < 3:
                pass
            seen["calls_at_kill"] = ray.get(actor.info.remote())["calls"]
            ray.kill(actor, no_restart=False)  # a crash: Ray restarts it, it reloads its snapshot

        threading.Thread(target=kill_when_busy, daemon=True).start()

    run_select(config(), pipeline["emb_regions"], tmp_path / "chaos", labelled_embeddings=pipeline["emb_labelled"],
               batch_size=1, on_store=chaos)
    n = len(read_embeddings(pipeline["emb_regions"])[0])
    assert 3 <= seen["calls_at_kill"] < n  # the kill came mid-selection
    events = [json.loads(line) for line in (tmp_path / "chaos" / "prototypes.events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["reloaded_version"] == 1  # restarted, and reloaded its snapshot
    assert selection(tmp_path / "chaos").equals(selection(fitted[0]))


def test_labelled_set_smaller_than_k_is_a_clear_error(pipeline, tmp_path):
    from activessf.selection.prototypes import PrototypeError

    with pytest.raises(PrototypeError, match="K = 80 prototypes need at least 80 labelled samples, got 55"):
        run_select(config("prototypes.k=80"), pipeline["emb_regions"], tmp_path / "x",
                   labelled_embeddings=pipeline["emb_labelled"])
    assert not (tmp_path / "x").exists()


def test_cli_select_reuse_and_select_eval(pipeline, fitted, tmp_path, capsys):
    """The commands (and so the job scripts, which call them) in this process, on the running Ray; that a
    separate process joins the cluster is tested with the filter's job script."""
    from activessf.cli import main

    sets = [a for o in TINY for a in ("--set", o)]
    base = ["--work-dir", str(tmp_path / "w"), *sets]
    assert main(["select", "--embeddings", str(pipeline["emb_regions"]), "--labelled", str(pipeline["emb_labelled"]),
                 "--out", str(tmp_path / "a"), *base]) == 0
    out = capsys.readouterr().out
    assert "threshold" in out and "randomly initialised" in out
    assert selection(tmp_path / "a").equals(selection(fitted[0]))  # the same settings: bitwise the same table
    assert load(tmp_path / "a" / "prototypes.npz").digest == load(fitted[0] / "prototypes.npz").digest
    assert main(["select", "--embeddings", str(pipeline["emb_regions"]), "--prototypes",
                 str(tmp_path / "a" / "prototypes.npz"), "--out", str(tmp_path / "b"), *base]) == 0
    assert selection(tmp_path / "a").drop_columns(["prototypes_version"]).equals(
        selection(tmp_path / "b").drop_columns(["prototypes_version"]))
    assert main(["select-eval", "--selection", str(tmp_path / "a"), "--regions", str(pipeline["regions"]),
                 "--boxes", str(pipeline["data"]), *base]) == 0
    report = json.loads((tmp_path / "a" / "evidence.json").read_text())
    assert report["regions"] == len(selection(tmp_path / "a")) and report["random"]["draws"] in (0, 1000)
