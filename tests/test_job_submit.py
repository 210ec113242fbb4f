"""`ray job submit` against a real two-node cluster (`ray start --head` and a worker node joined with
`ray start --address`, on loopback, token auth on), and the demo end to end as the job it runs.

The head is the only Ray on the machine while these tests run: they run after the tests that need no Ray
and before the shared local Ray starts (`head` in conftest.py).
"""

import json
import re

import numpy as np
import pytest

from activessf.imageio import read_rgb
from activessf.subtypes import SUBTYPES
from conftest import JOB_API, ray_cli

pytestmark = pytest.mark.own_ray


def test_a_submit_without_the_token_is_refused(head, repo, tmp_path):
    env, _ = head
    anonymous = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path)}
    out = ray_cli("job", "submit", "--address", JOB_API, "--no-wait", "--", "python", "-c", "print(1)",
                  env=anonymous, cwd=repo)
    assert out.returncode != 0
    assert "authentication" in (out.stdout + out.stderr).lower()


def node_types(env) -> dict[str, str]:
    """node id -> its node-type label, from the cluster's state API (with the token)."""
    listed = ray_cli("list", "nodes", "--address", JOB_API, "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    return {n["node_id"]: n["labels"].get("node-type") for n in json.loads(listed.stdout) if n["state"] == "ALIVE"}


@pytest.mark.timeout(900)
def test_the_demo_job_runs_the_whole_method_on_the_cluster(demo_job, repo):
    """`activessf demo` as a Ray job (jobs/demo.py): the pipeline (filter, embed, select, pretrain,
    fine-tune with a final fit, register) and the demo's scoring and from-scratch baseline, end to end,
    each stage on its node type: filtering on the CPU worker node, training on the head (node-type=gpu)."""
    import mlflow

    work, out = demo_job["work"], demo_job["stdout"]
    status = ray_cli("job", "status", "--address", JOB_API, demo_job["job_id"], env=demo_job["env"])
    assert "succeeded" in status.stdout.lower()

    record = json.loads((work / "pipeline" / "pipeline.json").read_text())
    # no embed.weights: selection runs on label-free features (select.bootstrap), round 0 of the bootstrap
    assert set(record["stages"]) == {"filter", "bootstrap", "pretrain", "finetune", "register"}
    selection = work / "bootstrap" / "round0" / "selection"
    assert record["selection"] == str(selection)
    rounds = record["stages"]["bootstrap"]["summary"]["rounds"]
    assert len(rounds) == 1 and rounds[0]["encoder"] == str(work / "bootstrap" / "round0" / "encoder")
    embedded = json.loads((work / "bootstrap" / "round0" / "embeddings" / "regions" / "embed.json").read_text())
    assert not embedded["random_init"] and embedded["encoder"]["source"] == "filtered"
    assert all(set(s) == {"stage", "output", "mlflow_run_id", "summary"} for s in record["stages"].values())
    assert record["ray"]["started_local"] is False  # the job joined the head, it did not start its own Ray
    types = node_types(demo_job["env"])
    assert sorted(types.values()) == ["cpu", "gpu"]
    filtered = record["stages"]["filter"]["summary"]["nodes"]
    assert {types[n] for n in filtered} == {"cpu"} and sum(filtered.values()) == 3  # every field on the CPU node
    placed = record["stages"]["pretrain"]["summary"]["placements"]
    assert placed and {types[n] for p in placed for n in p["nodes"]} == {"gpu"}  # training on the head
    # py_modules carried the library: workers import it from the job's runtime resources, not the checkout
    assert "runtime_resources" in record["worker_package"] and not record["worker_package"].startswith(str(repo))
    assert (work / "encoder" / "encoder.pt").is_file() and np.isfinite(record["stages"]["pretrain"]["summary"]["final_loss"])
    assert (work / "finetune" / "activessf" / "model" / "model.pt").is_file()

    summary = json.loads((work / "demo" / "summary.json").read_text())
    assert summary["fields"] == 3 and summary["labelled"] == 55
    assert summary["counts"]["labelled"] == {name: 5 for name in SUBTYPES}
    for name in SUBTYPES:
        assert name in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out and "127.0.0.1" in out
    # rank 0's per-epoch progress lines, from the Ray Train workers to the job's logs (--no-progress keeps them)
    epoch = r"  epoch {}  loss \d+\.\d{{4}}  lr \S+  \d+ img/s  elapsed \w+  eta \w+"
    assert re.search("pretrain mae" + epoch.format("2/2"), out)  # stage 4's last epoch
    assert out.count("pretrain mae  epoch 2/2") == 1  # once: rank 0 writes it, not through Ray Train's print patch
    assert re.search(r"finetune \S+ fold1" + epoch.format("1/1"), out)
    stage1 = summary["stages"]["filter"]
    assert stage1["summary"]["images_read"] == 3 and stage1["summary"]["images_failed"] == 0
    assert (work / "regions" / "regions").is_dir() and (work / "regions" / "eval_megakaryocyte.json").is_file()
    assert 0 <= stage1["eval"]["recall"] <= 1 and stage1["eval"]["truth_boxes"] > 0
    assert "Stage 1, cell region filtering" in out
    stage3 = summary["stages"]["select"]
    assert 0 < stage3["summary"]["totals"]["selected"] <= stage3["summary"]["totals"]["regions"]
    assert stage3["summary"]["totals"]["regions"] == stage1["summary"]["regions_kept"]
    assert len(stage3["summary"]["clusters"]) == 11 and stage3["summary"]["prototypes"]["labelled"] == 55
    assert (selection / "prototypes.npz").is_file() and (selection / "evidence.json").is_file()
    assert stage3["summary"]["prototypes"]["weights_digest"] == embedded["weights_digest"]  # not random-init
    assert "Stages 2-3, prototypes and active sample selection" in out and "threshold" in out
    table2 = summary["stages"]["finetune"]["table2"]
    assert "| ViT |" in table2 and "| MAE w/ ActiveSSF |" in table2 and table2 in out  # Table II: w/ vs scratch
    scratch = json.loads((work / "ablation" / "vit" / "finetune" / "metrics.json").read_text())
    assert scratch["folds_digest"] == summary["stages"]["finetune"]["summary"]["folds_digest"]  # the same folds
    assert read_rgb(summary["contact_sheet"]).shape[0] >= 11 * 96  # one row per subtype

    mlflow.set_tracking_uri(summary["mlflow"]["tracking_uri"])
    run = mlflow.get_run(summary["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "demo"
    assert run.data.params["images"] == "3" and run.data.metrics["labelled.CA-MK"] == 5
    assert {"config.yaml", "subtypes.png"} <= {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    runs = mlflow.search_runs(experiment_ids=[run.info.experiment_id])
    parent_of = dict(zip(runs["tags.mlflow.runName"], runs["tags.mlflow.parentRunId"]))
    assert parent_of["pipeline"] == run.info.run_id and parent_of["filter-eval-megakaryocyte"] == run.info.run_id
    pipeline_id = runs.loc[runs["tags.mlflow.runName"] == "pipeline", "run_id"].iloc[0]
    assert pipeline_id == record["mlflow"]["run_id"]
    assert parent_of["filter"] == parent_of["bootstrap"] == parent_of["register-jobtest"] == pipeline_id
    bootstrap_id = runs.loc[runs["tags.mlflow.runName"] == "bootstrap", "run_id"].iloc[0]
    round0 = runs.loc[runs["tags.mlflow.runName"] == "bootstrap-round0", "run_id"].iloc[0]
    assert parent_of["bootstrap-round0"] == bootstrap_id and parent_of["select"] == round0
    # the demo ends in the registry, printing the command that serves its model
    reg = summary["stages"]["register"]["summary"]
    assert reg["model"] == "jobtest" and reg["promoted"] and reg["alias"] == "champion"
    assert str(reg["version"]) == "1" and "no champion yet" in reg["reason"]
    assert f"models:/{reg['model']}@champion" in reg["serve"] and reg["serve"] in out
    version = mlflow.MlflowClient().get_model_version_by_alias("jobtest", "champion")
    assert str(version.version) == "1" and version.tags["activessf.promotion"] == "promoted"
