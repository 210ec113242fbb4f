"""The stage contract: results, resources and the rules that keep stages apart (no Ray, no MLflow here)."""

import ast
from pathlib import Path

import pytest

from activessf.config import load_config
from activessf.resources import Cluster, plan
from activessf.stage import StageResult

LIB = Path(__file__).resolve().parents[1] / "platform" / "activessf"


def imports_of(path: Path) -> set[str]:
    """Modules a file imports, as absolute names (relative imports resolved inside ``activessf``)."""
    package = ["activessf", *path.relative_to(LIB).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_stage_imports_another_stage():
    stages = {p.stem for p in (LIB / "stages").glob("*.py") if p.stem != "__init__"}
    for path in (LIB / "stages").glob("*.py"):
        others = {f"activessf.stages.{s}" for s in stages - {path.stem}}
        assert not imports_of(path) & others, f"{path.name} imports {imports_of(path) & others}"


def test_mlflow_runs_are_opened_in_one_place():
    opened = [p.relative_to(LIB) for p in LIB.rglob("*.py") if "start_run(" in p.read_text()]
    assert opened == [Path("stage.py")]


def test_a_result_is_frozen_and_reads_like_its_summary(tmp_path):
    r = StageResult("filter", tmp_path, {"regions_kept": 3, "by": {"a": 1}}, "run1", ("summary.json", ("x", "f")))
    assert r["regions_kept"] == 3 and r.get("missing", 0) == 0 and r.files == ("summary.json", "x")
    with pytest.raises(TypeError):
        r.summary["regions_kept"] = 4
    with pytest.raises(AttributeError):
        r.run_id = "other"
    assert r.to_json() == {"stage": "filter", "output": str(tmp_path), "mlflow_run_id": "run1",
                           "summary": {"regions_kept": 3, "by": {"a": 1}}}


@pytest.mark.parametrize("cluster, expected", [
    (Cluster(cpus=2, gpus=0), {"filter": (False, 2, 1.0, 1), "embed": (False, 2, 1, 1), "predict": (False, 2, 1.0, 1),
                               "pretrain": (False, 2, 1, 1),
                               "finetune": (False, 1, 1, 2), "sweep-selection": (False, 2, 1, 1)}),
    (Cluster(cpus=64, gpus=8), {"filter": (False, 64, 1.0, 1), "embed": (True, 8, 1, 1), "predict": (True, 8, 1, 1),
                                "pretrain": (True, 8, 1, 1),
                                "finetune": (True, 1, 1, 8), "sweep-selection": (True, 2, 1, 4)}),
])
def test_resources_follow_the_cluster(cluster, expected):
    """(GPUs used, workers, CPUs per worker, runs at once) of each stage on a laptop and on a GPU node."""
    cfg = load_config(overrides=["sweep.num_workers=2"])
    got = {s: (r.use_gpu, r.workers, r.cpus_per_worker, r.concurrent)
           for s in expected for r in [plan(s, cfg, cluster)]}
    assert got == expected


def test_resource_settings_win_over_the_cluster():
    cfg = load_config(overrides=["pretrain.num_workers=3", "pretrain.use_gpu=false", "finetune.parallel_folds=2",
                                 "sweep.max_concurrent_trials=5"])
    node = Cluster(cpus=12, gpus=4)
    pre = plan("pretrain", cfg, node)
    assert (pre.use_gpu, pre.workers, pre.cpus_per_worker) == (False, 3, 4)
    assert plan("finetune", cfg, node).concurrent == 2 and plan("sweep-selection", cfg, node).concurrent == 5
    assert plan("filter", cfg, node, cpus_per_task=4).workers == 3
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        plan("train", cfg, node)
