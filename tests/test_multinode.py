"""The platform on a multi-node Ray cluster: real raylets (``ray.cluster_utils.Cluster``) on loopback, typed
by the node label ``node-type`` as a cluster of CPU nodes and GPU nodes would be (no GPU is needed to test
placement: the "gpu" nodes here have one CPU and no GPU).

    head    0 CPUs, node-type=head   the driver connects here; it runs no work
    cpu-a   1 CPU,  node-type=cpu    region filtering, embedding on CPU, the prototype store
    cpu-b   1 CPU,  node-type=cpu
    gpu-a   1 CPU,  node-type=gpu    Ray Train workers (2 per run: gpu-c is the spare)
    gpu-b   1 CPU,  node-type=gpu
    gpu-c   1 CPU,  node-type=gpu

Nodes are taken away in the middle of a stage (all of a node's processes are killed, as when a machine
dies); after the stage a fresh node of the same type joins, as an autoscaler would replace it (Ray adds
nodes from the main thread only). These tests run after the
session's shared Ray has stopped and before the token-auth head starts: one Ray on the machine at a time.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from activessf.config import load_config
from conftest import EMBED_TINY

pytestmark = [pytest.mark.own_ray, pytest.mark.multinode]

LABEL = "node-type"
# A loopback address that Ray does not rewrite: given 127.0.0.1, ray.init connects to the machine's
# outward address instead, where nothing listens.
IP = "127.0.0.2"


class Nodes:
    """The cluster, and each node's type by node id (a removed node keeps its entry)."""

    def __init__(self):
        from ray.cluster_utils import Cluster

        # a dead node is noticed within ~1.5 s instead of Ray's default ~30 s
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": IP, "labels": {LABEL: "head"}, "dashboard_host": "127.0.0.1",
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                               "health_check_initial_delay_ms": 0}})
        self.type_of: dict[str, str] = {}
        self.handles = {}
        for kind in ("cpu", "cpu", "gpu", "gpu", "gpu"):
            self.add(kind)

    def add(self, kind: str):
        node = self.cluster.add_node(num_cpus=1, node_ip_address=IP, labels={LABEL: kind})
        self.type_of[node.node_id] = kind
        self.handles[node.node_id] = node
        return node.node_id

    def of_type(self, kind: str) -> set[str]:
        return {n for n, k in self.type_of.items() if k == kind and n in self.handles}

    def remove(self, node_id: str) -> str:
        """Take ``node_id`` away: its raylet and every process on it killed. Returns it."""
        self.cluster.remove_node(self.handles.pop(node_id), allow_graceful=False)
        return node_id

    def replace(self, node_id: str) -> str:
        """A fresh node of the type of ``node_id`` (removed before), as an autoscaler would add it."""
        return self.add(self.type_of[node_id])


@pytest.fixture(scope="module")
def nodes(own_ray):
    import ray

    from activessf.runtime import apply_train_env, shutdown_ray

    shutdown_ray()  # this process's Ray from an earlier test, if any: the driver joins the cluster below
    apply_train_env(local=False)  # before the raylets start: their workers inherit it
    n = Nodes()
    ray.init(address=n.cluster.address, _node_ip_address=IP, log_to_driver=False)
    yield n
    ray.shutdown()
    n.cluster.shutdown()


def config(tmp_path, *extra):
    return load_config(overrides=[*EMBED_TINY, f"run.work_dir={tmp_path / 'work'}", *extra])


FIELDS = 7  # the 6 synthetic fields and one 3x3 tiling of the first


@pytest.fixture(scope="module")
def smears(synthetic, tmp_path_factory):
    """The synthetic fields, and one field tiled 3 x 3 (1536 x 1152), a field larger than the others."""
    import shutil

    import numpy as np

    from activessf.imageio import read_rgb, write_png

    out = tmp_path_factory.mktemp("smears")
    fields = sorted((synthetic / "smears").iterdir())
    for f in fields:
        shutil.copy(f, out / f.name)
    write_png(out / "tiled.png", np.tile(read_rgb(fields[0]), (3, 3, 1)))
    assert len(list(out.iterdir())) == FIELDS
    return out


@pytest.fixture(scope="module")
def calm(nodes, smears, synthetic, tmp_path_factory):
    """The undisturbed run: filter, embed (on Ray Data actors), select."""
    from activessf.stages.embed import run_embed
    from activessf.stages.filter import run_filter
    from activessf.stages.select import run_select

    root = tmp_path_factory.mktemp("calm")
    cfg = config(root)
    # the filter's Ray Data path (its tasks write the regions); the later filter runs split a small output
    # in the driver (run.inline_data_mb) and must give the same tables
    out = {"filter": run_filter(config(root, "run.inline_data_mb=0"), str(smears), root / "regions")}
    out["embed"] = run_embed(config(root, "run.inline_data_mb=0"), "regions", root / "regions", root / "emb")
    run_embed(cfg, "labelled", synthetic / "labelled", root / "emb_labelled")
    out["select"] = run_select(cfg, root / "emb", root / "sel", labelled_embeddings=root / "emb_labelled")
    return {"root": root, **out}


def regions(out):
    return pq.read_table(out / "regions").sort_by("region_id")


def same_regions(a, b) -> bool:
    """The regions of two filter outputs are the same, for inputs in different directories (the region id
    hashes the source path): each file's regions, boxes, statistics and crops."""
    def table(out):
        t = pq.read_table(out / "regions").drop_columns(["region_id"])
        t = t.set_column(t.schema.get_field_index("source"), "source",
                         [[Path(s).name for s in t["source"].to_pylist()]])
        return t.sort_by([("source", "ascending"), ("y", "ascending"), ("x", "ascending")])
    return table(a).equals(table(b))


def test_each_stage_runs_on_its_node_type(nodes, calm):
    """Filtering and CPU embedding on CPU nodes only (never the head or a GPU node, which have free CPUs
    too); the store actor on a CPU node. Each image's row names the node that filtered it."""
    cpu = nodes.of_type("cpu")
    filtered = calm["filter"]["nodes"]
    assert filtered and set(filtered) <= cpu and sum(filtered.values()) == calm["filter"]["images_ok"] == FIELDS
    images = pq.read_table(calm["root"] / "regions" / "images.parquet").to_pydict()
    assert sorted(images["node"]) == sorted(n for n, k in filtered.items() for _ in range(k))
    embedded = calm["embed"]["nodes"]
    assert embedded and set(embedded) <= cpu and sum(embedded.values()) == calm["filter"]["regions_kept"]
    assert calm["select"]["store"]["starts"] == 1 and calm["select"]["store"]["nodes"][0] in cpu


def when(condition, timeout: float = 60, every: float = 0.02):
    """The first true value of ``condition()``, polled every ``every`` seconds."""
    deadline = time.time() + timeout
    while not (value := condition()):
        assert time.time() < deadline, "timed out waiting"
        time.sleep(every)
    return value


class Gate:
    """A named pipe in place of an image: whoever opens it to read waits until the gate serves the image's
    bytes. The first reader is held until ``hold`` returns (a filter task stuck mid-read on a known node,
    with no race against timing); every later reader (the retried task, the driver's overlays) is served
    at once."""

    def __init__(self, path, data: bytes, hold):
        import os

        os.mkfifo(path)
        self.path, self.data, self.hold, self.stopped = path, data, hold, False
        self.error = None
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        first = True
        while not self.stopped:
            with open(self.path, "wb") as fh:  # blocks until a reader opens the pipe
                if self.stopped:
                    return
                try:
                    if first:
                        first = False
                        self.hold()
                    fh.write(self.data)
                except BrokenPipeError:  # the reader died (its node was taken away)
                    pass
                except Exception as exc:  # noqa: BLE001 -- reported by the test
                    self.error = exc
                    return

    def close(self):
        import os

        self.stopped = True
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # releases a writer waiting for a reader
        self.thread.join(10)
        os.close(fd)


def readers(path) -> list[int]:
    """The pids of the processes other than this one that hold ``path`` open."""
    import os

    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if any(os.readlink(fd) == str(path) for fd in (proc / "fd").iterdir()):
                    pids.append(int(proc.name))
            except OSError:  # gone, or not ours to look at
                pass
    return pids


def test_losing_a_worker_node_mid_filtering_changes_nothing(nodes, calm, smears, tmp_path):
    """A CPU node dies while it filters an image: Ray Data reruns its task elsewhere, same regions table.

    The tiled field is a named pipe here: the filter task that opens it waits for its bytes, and the test
    takes that task's node away (the node whose raylet started the reading worker) while it waits."""
    import shutil

    import ray

    from activessf.stages.filter import run_filter

    fields, taken = tmp_path / "fields", {}
    fields.mkdir()
    for f in smears.iterdir():
        if f.name != "tiled.png":
            shutil.copy(f, fields / f.name)

    def take_away_the_readers_node():
        (pid,) = when(lambda: readers(fields / "tiled.png"), timeout=30)
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        (victim,) = [n for n, h in nodes.handles.items() if h.all_processes["raylet"][0].process.pid == parent]
        assert victim in nodes.of_type("cpu")
        taken["victim"] = nodes.remove(victim)

    gate = Gate(fields / "tiled.png", (smears / "tiled.png").read_bytes(), hold=take_away_the_readers_node)
    try:
        result = run_filter(config(tmp_path), str(fields), tmp_path / "regions")
    finally:
        gate.close()
    if "victim" in taken:
        nodes.replace(taken["victim"])  # before any assertion: later tests need two CPU nodes
    assert gate.error is None and "victim" in taken
    when(lambda: taken["victim"] not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}, timeout=30)
    assert same_regions(tmp_path / "regions", calm["root"] / "regions")
    assert result["images_ok"] == FIELDS and result["images_failed"] == 0


def test_losing_the_store_node_mid_selection_changes_nothing(nodes, calm, tmp_path):
    """The node holding the prototype store dies once the store is fitted, as the regions start to be
    assigned: the actor restarts on the other CPU node from its snapshot (Ray retries the calls the dead
    one missed) and the selection table is identical to the calm run's. (A store killed after serving
    calls, on one node, is test_select_stage.py's.)"""
    import ray

    from activessf.stages.select import run_select

    seen = {}

    def chaos(actor):
        seen["node"] = nodes.remove(ray.get(actor.info.remote())["node"])
        when(lambda: seen["node"] not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}, timeout=30)
        seen["restarted_on"] = ray.get(actor.info.remote(), timeout=60)["node"]  # back, from its snapshot

    root = calm["root"]
    report = run_select(config(tmp_path), root / "emb", tmp_path / "sel", labelled_embeddings=root / "emb_labelled",
                        batch_size=1, on_store=chaos)
    nodes.replace(seen["node"])
    store = report["store"]
    assert store["starts"] == 2 and store["nodes"][0] == seen["node"] != store["nodes"][1]
    assert store["nodes"][1] == seen["restarted_on"] and store["nodes"][1] in nodes.of_type("cpu")
    table = pq.read_table(tmp_path / "sel" / "selection").sort_by("region_id")
    calm_table = pq.read_table(root / "sel" / "selection").sort_by("region_id")
    assert table.equals(calm_table)


def test_losing_a_training_node_restarts_the_group_from_its_checkpoint(nodes, calm, tmp_path):
    """2 Ray Train workers on 2 of the 3 GPU-type nodes; one of them dies in epoch 2: FailureConfig restarts
    the group on the survivor and the spare from epoch 1's checkpoint, and the run completes."""
    from activessf.stages.pretrain import run_pretrain

    cfg = config(tmp_path, "pretrain.model=micro", "pretrain.image_size=32", "pretrain.patch_size=8",
                 "pretrain.batch_size=8", "pretrain.epochs=3", "pretrain.warmup_epochs=1",
                 "pretrain.checkpoint_every=1", "pretrain.num_workers=2", "pretrain.source=filtered")
    gpu_before = nodes.of_type("gpu")
    taken = {}

    def placed() -> list[str]:  # the nodes of the Ray Train workers now
        from ray.util.state import list_actors

        return [a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
                if a.class_name == "RayTrainWorker"]

    def registered() -> bool:  # Ray Train has registered epoch 1's checkpoint (a restart resumes from it)
        for snap in (tmp_path / "work" / "ray_results").glob("*/checkpoint_manager_snapshot.json"):
            try:
                return any(c["metrics"]["epoch"] >= 1 for c in json.loads(snap.read_text())["checkpoint_results"])
            except (ValueError, KeyError):  # being written
                return False
        return False

    def take_away_in_the_pause():
        when(lambda: any((tmp_path / "work" / "ray_results").glob("*/failed_once-paused-1")), timeout=120)
        when(registered, timeout=30)
        taken["victim"] = nodes.remove(sorted(gpu_before & set(placed()))[0])

    thief = threading.Thread(target=take_away_in_the_pause, daemon=True)
    thief.start()
    rec = run_pretrain(cfg, tmp_path / "enc", regions=calm["root"] / "regions", name="node-loss", max_failures=1,
                       test_hooks={"pause_at_epoch": 1, "pause_seconds": 60})
    thief.join(60)
    nodes.replace(taken["victim"])
    assert rec["epochs"] == 3 and rec["resumed"]["epoch"] == 1  # the restart resumed epoch 1's checkpoint
    first, second = rec["placements"]
    assert first["from_epoch"] == 0 and len(set(first["nodes"])) == 2 and set(first["nodes"]) <= gpu_before
    assert taken["victim"] in first["nodes"]
    assert second["from_epoch"] == 1 and set(second["nodes"]) == gpu_before - {taken["victim"]}
    history = json.loads((tmp_path / "enc" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
