"""``activessf register``: a fine-tuned classifier into the MLflow model registry, and champion promotion.

The fine-tuning run that trains the final fit logs it itself (:func:`log_model`, called by the
``finetune`` stage) as the pyfunc ``model`` of that run: models from code (``serving/pyfunc.py``) with its
weights, its architecture and the serving configuration as artifacts, a signature and an input example;
the ``activessf`` package travels with it (``code_paths``), so the served model needs no pickled objects
and nothing the registry does not hold. :func:`register` makes that logged model a new registry version
(its run is the training run) from the run id or the fine-tuning output. Each version carries its
cross-validation evidence as tags (per-fold macro PR-AUC, folds digest, weights digest); the alias
(``register.alias``, default ``champion``) moves by the policy of :mod:`activessf.serving.promotion`, and
the decision is printed, tagged on the version and logged to a ``register-<name>`` run that names the
training run by id.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Optional

from ..config import Config
from ..evaluation.report import load_run
from ..imageio import encode_png
from ..stage import StageResult, log_results, stage_run
from ..tracking import ensure_mlflow
from .promotion import Decision, Evidence, decide, evidence_from_metrics

log = logging.getLogger(__name__)

TAG = "activessf."
MODEL = "model"  # the artifact name of the logged pyfunc: ``runs:/<training run id>/model``
RUN_ID = re.compile(r"[0-9a-f]{32}")
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


def log_model(model_dir: str | Path, run_cfg: Config) -> dict:
    """Log the final fit ``model_dir`` (``model.pt``, ``model.json``) as the MLflow pyfunc ``model`` of the
    active run (the fine-tuning run), not registered: ``serving.json`` takes the filter settings and input
    limits (``register.max_image_*``) of ``run_cfg``. Returns its ``model_id`` and ``uri`` (``runs:/ID/model``)."""
    import mlflow
    import pandas as pd

    model_dir = Path(model_dir)
    r = run_cfg.register
    classes = json.loads((model_dir / "model.json").read_text())["classes"]
    with tempfile.TemporaryDirectory() as tmp:
        serving = Path(tmp) / "serving.json"
        serving.write_text(json.dumps({"filter": run_cfg.filter.model_dump(mode="json"),
                                       "limits": {"max_image_bytes": r.max_image_bytes,
                                                  "max_image_pixels": r.max_image_pixels,
                                                  "max_images": r.max_images,
                                                  "max_request_bytes": r.max_request_bytes}}, indent=2))
        info = mlflow.pyfunc.log_model(
            name=MODEL,
            python_model=str(Path(__file__).with_name("pyfunc.py")),
            artifacts={"model": str(model_dir), "serving": str(serving)},
            code_paths=[str(Path(__file__).resolve().parents[1])],
            signature=signature(classes),
            input_example=pd.DataFrame({"image": [example_cell()], "kind": ["cell"]}),
            pip_requirements=pinned_requirements(),
        )
    return {"model_id": info.model_id, "uri": f"runs:/{mlflow.active_run().info.run_id}/{MODEL}"}


def training_run(run: str | Path) -> tuple[str, dict]:
    """(run id, ``metrics.json`` record) of a fine-tuning run given by its MLflow run id or its output
    directory (whose ``metrics.json`` names the run)."""
    import mlflow

    path = Path(run)
    if path.is_dir():
        metrics = load_run(path)
        if not metrics.get("mlflow_run_id"):
            raise ValueError(f"{path}/metrics.json names no MLflow run: fine-tune it again with this version")
        return metrics["mlflow_run_id"], metrics
    if not RUN_ID.fullmatch(str(run)):
        raise FileNotFoundError(f"{run} is neither a fine-tuning output directory nor an MLflow run id")
    try:
        local = mlflow.artifacts.download_artifacts(run_id=str(run), artifact_path="metrics.json")
    except Exception as e:  # MlflowException (no such run) or the artifact missing
        raise FileNotFoundError(f"run {run}: no metrics.json among its artifacts in {mlflow.get_tracking_uri()} "
                                f"({str(e).splitlines()[0][:200]}): is it an `activessf finetune` run?") from e
    return str(run), json.loads(Path(local).read_text())


def logged_model(run_id: str):
    """The pyfunc ``model`` the fine-tuning run ``run_id`` logged (its final fit)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise FileNotFoundError(f"run {run_id} is not in the MLflow store {mlflow.get_tracking_uri()}: register "
                                "with the --work-dir (or MLFLOW_TRACKING_URI) the fine-tuning logged to") from None
    found = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL}'")
    if not found:
        raise FileNotFoundError(f"run {run_id} ({run.info.run_name}) logged no model: fine-tune with "
                                "--set finetune.final_fit=true so that the run also trains and logs the model to "
                                "deploy, trained on every labelled sample")
    return max(found, key=lambda m: m.creation_timestamp)


def register(run: str | Path, cfg: Config, force: bool = False) -> StageResult:
    """Register the model a fine-tuning run logged (``run``: its MLflow run id or its output directory) as
    a new version of ``register.model_name``, whose run is that training run; move the alias if it earns
    it. The decision is tagged on the version and recorded in a ``register-<name>`` run that names the
    training run (tag ``activessf.training_run_id``); the result's summary is the promotion record."""
    import mlflow
    from mlflow import MlflowClient

    ensure_mlflow(cfg.run.work_dir, cfg.run.experiment)
    run_id, metrics = training_run(run)
    model = logged_model(run_id)
    r = cfg.register
    params = {"model_name": r.model_name, "alias": r.alias, "forced": force, "training_run_id": run_id}
    with tempfile.TemporaryDirectory() as tmp, stage_run(cfg, "register", params, f"register-{r.model_name}") as reg:
        mlflow.set_tag(TAG + "training_run_id", run_id)
        client = MlflowClient()
        champion = champion_evidence(client, r.model_name, r.alias, force)
        version = str(mlflow.register_model(model.model_uri, r.model_name).version)
        candidate = evidence_from_metrics(metrics)
        candidate = Evidence(candidate.pr_auc_folds, candidate.folds_digest, version, candidate.model_digest)
        decision = decide(candidate, champion, r.p_value, force)
        record = _record(r, version, decision, candidate, run_id, model.model_id, reg.info.run_id)
        _tag_version(client, r.model_name, version, candidate, decision, reg.info.run_id)
        if decision.promote:
            client.set_registered_model_alias(r.model_name, r.alias, version)
        Path(tmp, "promotion.json").write_text(json.dumps(record, indent=2))
        log_results(Path(tmp), {"candidate_pr_auc": candidate.mean, "p_value": decision.p_value},
                    ["promotion.json"], params={"version": version, "promoted": decision.promote})
    out = Path(run, "model") if Path(run).is_dir() else Path(cfg.run.work_dir)  # no files of its own
    return StageResult("register", out.resolve(), record, reg.info.run_id)


def _tag_version(client, name: str, version: str, ev: Evidence, decision: Decision, registration_run: str) -> None:
    tags = {"pr_auc_folds": json.dumps(list(ev.pr_auc_folds)), "folds_digest": ev.folds_digest,
            "model_digest": ev.model_digest, "pr_auc_mean": f"{ev.mean:.6f}", "registration_run_id": registration_run,
            "promotion": "promoted" if decision.promote else "not promoted", "promotion_reason": decision.reason,
            "promotion_forced": str(decision.forced).lower()}
    for k, v in tags.items():
        client.set_model_version_tag(name, version, TAG + k, v)


def _record(r, version: str, decision: Decision, ev: Evidence, training_run_id: str, model_id: str,
            run_id: str) -> dict:
    uri = f"models:/{r.model_name}@{r.alias}"
    return {"model": r.model_name, "version": version, "alias": r.alias, "promoted": decision.promote,
            **decision.as_dict(), "candidate_folds": list(ev.pr_auc_folds), "folds_digest": ev.folds_digest,
            "training_run_id": training_run_id, "model_uri": f"runs:/{training_run_id}/{MODEL}",
            "logged_model_id": model_id, "mlflow_run_id": run_id, "serving_uri": uri,
            "serve": f"deploy/serve.sh {r.model_name} 5001   # = mlflow models serve -m {uri} --env-manager local "
                     "--host 127.0.0.1 --port 5001"}


def format_decision(record: dict) -> str:
    head = (f"{record['model']} version {record['version']}: "
            + (f"now {record['alias']}" + (" (FORCED)" if record["forced"] else "") if record["promoted"]
               else f"registered, {record['alias']} unchanged"
               + (f" (version {record['champion_version']})" if record.get("champion_version") else "")))
    return "\n".join([head, f"reason: {record['reason']}", f"serve it: {record['serve']}"])
