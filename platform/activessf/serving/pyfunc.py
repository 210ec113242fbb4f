"""The MLflow pyfunc model, logged as code ("models from code": no pickled Python objects).

MLflow runs this file when it loads the model; ``set_model`` names the model
object. Its artifacts are ``model/`` (``model.pt``, a state dict loaded with
``weights_only=True``, and ``model.json``: architecture, classes, preprocessing)
and ``serving.json`` (the region filter configuration and the input limits).

Input (a DataFrame, or JSON ``{"dataframe_split": {"columns": ["image", "kind"], "data": [...]}}``
with the image base64-encoded): ``image`` - the bytes of a PNG/JPEG/TIFF file;
``kind`` - ``field`` (a smear field: the region filter finds the cells; the
default) or ``cell`` (one cell crop). Output: one row per cell found (see
``CellClassifier.predict``). An empty, oversized, undecodable or ill-kinded input
raises an MLflow INVALID_PARAMETER_VALUE error: the server answers 400 with the reason.
Loaded by ``mlflow models serve``, it also guards the server against requests that
would get 500 or be parsed whatever their size (:mod:`activessf.serving.scoring_guard`).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.models import set_model


class CellModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from activessf.config import FilterConfig
        from activessf.serving import scoring_guard
        from activessf.serving.classifier import CellClassifier, Limits

        serving = json.loads(Path(context.artifacts["serving"]).read_text())
        limits = Limits(**serving["limits"])  # a model logged before max_request_bytes existed: its default
        self.classifier = CellClassifier.load(context.artifacts["model"], FilterConfig(**serving["filter"]), limits)
        if scoring_guard.in_scoring_server():
            scoring_guard.install(limits.max_request_bytes)

    def predict(self, context, model_input, params=None):
        import pandas as pd
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from activessf.serving.classifier import BadInput

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "image" not in frame:
            raise MlflowException("the input needs an `image` column (file bytes; base64 in JSON)",
                                  error_code=INVALID_PARAMETER_VALUE)
        if frame.empty:
            raise MlflowException("the request holds no rows: send at least one image",
                                  error_code=INVALID_PARAMETER_VALUE)
        kinds = frame["kind"].fillna("field").tolist() if "kind" in frame else ["field"] * len(frame)
        try:
            rows = self.classifier.predict(frame["image"].tolist(), kinds)
        except BadInput as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        columns = ["image", "cell", "x", "y", "w", "h", "subtype", "confidence"] + \
            [f"p_{c}" for c in self.classifier.classes]
        return pd.DataFrame(rows, columns=columns)


set_model(CellModel())
