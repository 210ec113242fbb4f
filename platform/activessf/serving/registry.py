"""``activessf register``: a fine-tuned classifier into the MLflow model registry, and champion promotion.

The model is logged as code (``serving/pyfunc.py``) with its weights, its
architecture and the serving configuration as artifacts, a signature and an
input example; the ``activessf`` package travels with it (``code_paths``), so
the served model needs no pickled objects and nothing the registry does not hold.
Each version carries its cross-validation evidence as tags (per-fold macro
PR-AUC, folds digest, weights digest); the alias (``register.alias``, default
``champion``) moves by the policy of :mod:`activessf.serving.promotion`, and the
decision is printed, tagged on the version and logged to the registration run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Optional

from ..config import Config, load_config
from ..evaluation.report import load_run
from ..imageio import encode_png
from ..stage import StageResult, log_results, stage_run
from .promotion import Decision, Evidence, decide, evidence_from_metrics

log = logging.getLogger(__name__)

TAG = "activessf."
SERVED_PACKAGES = ("mlflow", "torch", "torchvision", "timm", "numpy", "pandas", "opencv-python-headless", "pillow",
                   "pydantic", "PyYAML", "pyarrow")


def pinned_requirements() -> list[str]:
    """The serving environment, pinned to what is installed here."""
    return [f"{p}=={metadata.version(p)}" for p in SERVED_PACKAGES]


def signature(classes: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("binary", "image"), ColSpec("string", "kind", required=False)])
    outputs = Schema([ColSpec("long", c) for c in ("image", "cell", "x", "y", "w", "h")]
                     + [ColSpec("string", "subtype"), ColSpec("double", "confidence")]
                     + [ColSpec("double", f"p_{c}") for c in classes])
    return ModelSignature(inputs, outputs)


def example_cell() -> bytes:
    """A small stained-looking cell (PNG bytes) for the model's input example."""
    import cv2
    import numpy as np

    img = np.full((96, 96, 3), (232, 214, 226), np.uint8)
    cv2.circle(img, (48, 48), 38, (196, 150, 205), -1)
    cv2.circle(img, (44, 50), 20, (110, 50, 140), -1)
    return encode_png(img)


def evidence_of_version(version) -> Evidence:
    tags = version.tags
    return Evidence(tuple(json.loads(tags[TAG + "pr_auc_folds"])), tags[TAG + "folds_digest"], str(version.version),
                    tags.get(TAG + "model_digest", ""))


def champion_evidence(client, name: str, alias: str, force: bool = False) -> Optional[Evidence]:
    """The current champion's evidence; None without one (or, with ``force``, when it has none)."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    if TAG + "pr_auc_folds" not in version.tags:
        if force:
            return None
        raise ValueError(f"{name}@{alias} (version {version.version}) carries no cross-validation evidence "
                         f"(tag {TAG}pr_auc_folds): it was not registered by activessf; use --force to replace it")
    return evidence_of_version(version)


def register(run_dir: str | Path, cfg: Config, force: bool = False) -> StageResult:
    """Register the final model of a fine-tuning output; move the alias if it earns it. The result's
    summary is the promotion record."""
    from mlflow import MlflowClient

    run_dir = Path(run_dir)
    metrics = load_run(run_dir)
    model_dir = run_dir / "model"
    if not (model_dir / "model.pt").is_file():
        raise FileNotFoundError(f"{model_dir}/model.pt not found: fine-tune with --set finetune.final_fit=true so "
                                "that the run also trains the model to deploy on every labelled sample")
    r = cfg.register
    run_cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else cfg
    params = {"model_name": r.model_name, "alias": r.alias, "forced": force, "finetune_run": str(run_dir)}
    with tempfile.TemporaryDirectory() as tmp, stage_run(cfg, "register", params, f"register-{r.model_name}") as run:
        client = MlflowClient()
        champion = champion_evidence(client, r.model_name, r.alias, force)
        version = log_pyfunc(r, model_dir, run_cfg, Path(tmp))
        candidate = evidence_from_metrics(metrics)
        candidate = Evidence(candidate.pr_auc_folds, candidate.folds_digest, version, candidate.model_digest)
        decision = decide(candidate, champion, r.p_value, force)
        record = _record(r, version, decision, candidate, run_dir, run.info.run_id)
        _tag_version(client, r.model_name, version, candidate, decision, run_dir)
        if decision.promote:
            client.set_registered_model_alias(r.model_name, r.alias, version)
        Path(tmp, "promotion.json").write_text(json.dumps(record, indent=2))
        log_results(Path(tmp), {"candidate_pr_auc": candidate.mean, "p_value": decision.p_value},
                    ["promotion.json"], params={"version": version, "promoted": decision.promote})
    return StageResult("register", model_dir.resolve(), record, run.info.run_id)


def log_pyfunc(r, model_dir: Path, run_cfg: Config, tmp: Path) -> str:
    """The model as an MLflow pyfunc (weights, the filter settings and input limits for serving) in the
    active run, registered as ``r.model_name``; returns the new version."""
    import mlflow
    import pandas as pd

    classes = json.loads((model_dir / "model.json").read_text())["classes"]
    serving = tmp / "serving.json"
    serving.write_text(json.dumps({"filter": run_cfg.filter.model_dump(mode="json"),
                                   "limits": {"max_image_bytes": r.max_image_bytes,
                                              "max_image_pixels": r.max_image_pixels,
                                              "max_images": r.max_images}}, indent=2))
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("pyfunc.py")),
        artifacts={"model": str(model_dir), "serving": str(serving)},
        code_paths=[str(Path(__file__).resolve().parents[1])],
        signature=signature(classes),
        input_example=pd.DataFrame({"image": [example_cell()], "kind": ["cell"]}),
        pip_requirements=pinned_requirements(),
        registered_model_name=r.model_name,
    )
    return str(info.registered_model_version)


def _tag_version(client, name: str, version: str, ev: Evidence, decision: Decision, run_dir: Path) -> None:
    tags = {"pr_auc_folds": json.dumps(list(ev.pr_auc_folds)), "folds_digest": ev.folds_digest,
            "model_digest": ev.model_digest, "pr_auc_mean": f"{ev.mean:.6f}", "finetune_run": str(run_dir),
            "promotion": "promoted" if decision.promote else "not promoted", "promotion_reason": decision.reason,
            "promotion_forced": str(decision.forced).lower()}
    for k, v in tags.items():
        client.set_model_version_tag(name, version, TAG + k, v)


def _record(r, version: str, decision: Decision, ev: Evidence, run_dir: Path, run_id: str) -> dict:
    uri = f"models:/{r.model_name}@{r.alias}"
    return {"model": r.model_name, "version": version, "alias": r.alias, "promoted": decision.promote,
            **decision.as_dict(), "candidate_folds": list(ev.pr_auc_folds), "folds_digest": ev.folds_digest,
            "finetune_run": str(run_dir), "mlflow_run_id": run_id, "serving_uri": uri,
            "serve": f"deploy/serve.sh {r.model_name} 5001   # = mlflow models serve -m {uri} --env-manager local "
                     "--host 127.0.0.1 --port 5001"}


def format_decision(record: dict) -> str:
    head = (f"{record['model']} version {record['version']}: "
            + (f"now {record['alias']}" + (" (FORCED)" if record["forced"] else "") if record["promoted"]
               else f"registered, {record['alias']} unchanged"
               + (f" (version {record['champion_version']})" if record.get("champion_version") else "")))
    return "\n".join([head, f"reason: {record['reason']}", f"serve it: {record['serve']}"])
