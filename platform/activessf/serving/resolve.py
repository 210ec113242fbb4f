"""Which trained classifier a ``--model`` names, and the region filter it was deployed with.

``resolve_model(spec, into)`` accepts

- ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: a registered version (``activessf register``),
  downloaded into ``into``; its ``serving.json`` holds the filter settings the served model uses;
- ``runs:/RUN_ID/PATH`` or a bare MLflow run id (``PATH`` = ``model``): a run whose artifacts hold
  the pyfunc model (``MLmodel``) or a fine-tuning ``model/`` (with the run's ``config.yaml``);
- a local directory: a fine-tuning output (its ``model/`` and ``config.yaml``), its ``model/``
  itself, or a downloaded pyfunc model (a directory with ``MLmodel``).

Every source ends as a directory with ``model.json`` + ``model.pt`` (what
:class:`~activessf.serving.classifier.CellClassifier` loads) and the filter
settings, or ``None`` when the source carries none (a bare ``model/`` directory).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import FilterConfig, load_config
from .classifier import CellClassifier, Limits

RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class ResolvedModel:
    """A classifier ready to load: where its files are, the filter it was deployed with, where it came from."""

    spec: str  # what was asked for
    kind: str  # registry | run | directory
    model_dir: Path  # model.json + model.pt
    filter: Optional[FilterConfig]  # None: the source records no filter settings
    limits: Limits = field(default_factory=Limits)
    detail: dict = field(default_factory=dict)  # registered name/version/run id, run id, directory

    @property
    def spec_record(self) -> dict:
        """``model.json``: architecture, classes, image size, digest."""
        return json.loads((self.model_dir / "model.json").read_text())

    @property
    def classes(self) -> list[str]:
        return list(self.spec_record["classes"])

    def record(self) -> dict[str, Any]:
        """What a result should say about the model (JSON-able)."""
        spec = self.spec_record
        return {"spec": self.spec, "kind": self.kind, **self.detail, "classes": spec["classes"],
                "timm_name": spec["timm_name"], "image_size": spec["image_size"],
                "model_digest": spec.get("model_digest", ""), "has_filter": self.filter is not None}

    def load(self, filter_cfg: Optional[FilterConfig] = None) -> CellClassifier:
        """The classifier with ``filter_cfg``, else the model's own filter settings, else the defaults."""
        return CellClassifier.load(self.model_dir, filter_cfg or self.filter, self.limits)


def resolve_model(spec: str, into: str | Path) -> ResolvedModel:
    """``spec`` (see the module docstring) as a :class:`ResolvedModel`; downloads go under ``into``."""
    spec = str(spec).strip()
    into = Path(into)
    if spec.startswith("models:/"):
        return _from_registry(spec, into)
    if spec.startswith("runs:/"):
        run_id, _, path = spec[len("runs:/"):].partition("/")
        return _from_run(spec, run_id, path.strip("/") or "model", into)
    if Path(spec).exists():
        return _from_dir(spec, Path(spec))
    if RUN_ID.fullmatch(spec):
        return _from_run(spec, spec, "model", into)
    raise FileNotFoundError(f"--model {spec}: not a directory, a models:/NAME@ALIAS or models:/NAME/VERSION URI, "
                            "a runs:/RUN_ID/model URI or an MLflow run id")


def _from_dir(spec: str, path: Path) -> ResolvedModel:
    detail = {"directory": str(path.resolve())}
    if (path / "MLmodel").is_file():
        return _from_pyfunc(spec, "directory", path, detail)
    if (path / "model" / "model.json").is_file():  # a fine-tuning output
        return ResolvedModel(spec, "directory", path / "model", _config_filter(path / "config.yaml"), detail=detail)
    if (path / "model.json").is_file():  # its model/ itself
        return ResolvedModel(spec, "directory", path, _config_filter(path.parent / "config.yaml"), detail=detail)
    raise FileNotFoundError(f"--model {spec}: no model/model.json here; pass a `finetune` output made with "
                            "finetune.final_fit=true, its model/ directory, or a registered model (models:/NAME@ALIAS)")


def _from_registry(spec: str, into: Path) -> ResolvedModel:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    name, alias, version = _parse_models_uri(spec)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=str(into / "registry"))
    except MlflowException as exc:
        raise FileNotFoundError(f"--model {spec}: not in the registry at {mlflow.get_tracking_uri()} "
                                f"({exc.message.splitlines()[0]}); `activessf register` puts models there") from None
    detail = {"name": name, "version": str(mv.version), "alias": alias, "run_id": mv.run_id}
    return _from_pyfunc(spec, "registry", Path(local), detail)


def _parse_models_uri(spec: str) -> tuple[str, Optional[str], Optional[str]]:
    rest = spec[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return name, alias, None
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"--model {spec}: write models:/NAME@ALIAS or models:/NAME/VERSION (a number)")
    return name, None, version


def _from_run(spec: str, run_id: str, path: str, into: Path) -> ResolvedModel:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/{path}",
                                                         dst_path=str(into / "run")))
    except MlflowException as exc:
        raise FileNotFoundError(f"--model {spec}: no run {run_id} with artifacts {path!r} at "
                                f"{mlflow.get_tracking_uri()} ({exc.message.splitlines()[0]})") from None
    detail = {"run_id": run_id}
    if (local / "MLmodel").is_file():
        return _from_pyfunc(spec, "run", local, detail)
    if (local / "model.json").is_file():  # a fine-tuning run's model/ artifacts, with the run's config.yaml
        try:
            config = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/config.yaml",
                                                              dst_path=str(into / "run-config")))
        except MlflowException:
            config = None
        return ResolvedModel(spec, "run", local, _config_filter(config), detail=detail)
    raise FileNotFoundError(f"--model {spec}: run {run_id}'s {path!r} holds neither a pyfunc model (MLmodel) "
                            "nor a fine-tuned model (model.json)")


def _from_pyfunc(spec: str, kind: str, local: Path, detail: dict) -> ResolvedModel:
    """A pyfunc model logged by ``activessf register``: its ``model`` and ``serving`` artifacts."""
    import yaml

    flavour = (yaml.safe_load((local / "MLmodel").read_text()).get("flavors") or {}).get("python_function") or {}
    artifacts = {k: (v["path"] if isinstance(v, dict) else v) for k, v in (flavour.get("artifacts") or {}).items()}
    model_dir = local / artifacts.get("model", "artifacts/model")
    serving_file = local / artifacts.get("serving", "artifacts/serving.json")
    if not (model_dir / "model.json").is_file():
        raise FileNotFoundError(f"--model {spec}: the pyfunc model has no model/model.json artifact; was it "
                                "registered by `activessf register`?")
    serving = json.loads(serving_file.read_text()) if serving_file.is_file() else {}
    filter_cfg = FilterConfig(**serving["filter"]) if "filter" in serving else None
    return ResolvedModel(spec, kind, model_dir, filter_cfg, Limits(**serving.get("limits", {})), detail)


def _config_filter(path: Optional[Path]) -> Optional[FilterConfig]:
    return load_config(path).filter if path is not None and Path(path).is_file() else None
