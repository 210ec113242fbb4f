"""A method registered outside the library trains through pretraining and fine-tuning, no library code touched.

The toy method lives in this test module: it declares its own settings, its label and its encoder, and
registers itself. The module travels to the Ray Train workers by value (they cannot import a test
module), as a user's own method would from a module not installed on the cluster.
"""

import json
import sys

import pytest
import torch
from pydantic import Field
from torch import nn

from activessf.config import load_config
from activessf.pipeline import finetune_config
from activessf.ssl import METHODS, MethodSettings, SSLMethod, SSLOutput, register_method
from activessf.ssl.vit import build_vit, vit_spec

pytestmark = pytest.mark.ray


@register_method("toy", "Toy colours")
class ToyColours(SSLMethod):
    """Predicts each image's mean colour (times ``scale``) from the ViT's class token."""

    views = 1

    class Settings(MethodSettings):
        scale: float = Field(1.0, gt=0, description="multiplies the target colours")

    def __init__(self, cfg):
        super().__init__()
        self.scale = self.settings(cfg).scale
        self.vit = build_vit(cfg.model, cfg.image_size, cfg.patch_size)
        self.head = nn.Linear(self.vit.embed_dim, 3)

    def forward(self, views):
        x = views[0]
        pred = self.head(self.vit.forward_features(x)[:, 0])
        return SSLOutput(nn.functional.mse_loss(pred, self.scale * x.mean(dim=(2, 3))))

    def encoder(self):
        return self.vit

    @classmethod
    def encoder_spec(cls, cfg):
        return vit_spec(cfg)


TINY = ["pretrain.method=toy", "pretrain.options={scale: 2.0}", "pretrain.model=micro", "pretrain.image_size=32",
        "pretrain.patch_size=8", "pretrain.batch_size=8", "pretrain.epochs=1", "pretrain.warmup_epochs=0",
        "pretrain.num_workers=1", "pretrain.source=filtered", "evaluate.folds=2", "finetune.epochs=1",
        "finetune.warmup_epochs=0", "finetune.batch_size=8"]


def test_a_method_from_outside_the_library_pretrains_and_fine_tunes(embedded, tmp_path):
    import mlflow
    import pyarrow.parquet as pq
    from ray import cloudpickle

    from activessf.config import apply_overrides, build_config

    from activessf.ablation import rows_for
    from activessf.stages.finetune import run_finetune
    from activessf.stages.pretrain import run_pretrain

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = load_config(overrides=TINY + [f"run.work_dir={tmp_path / 'work'}"])
    assert METHODS["toy"] is ToyColours and "Toy colours + CRF + ASS" in [r["name"] for r in rows_for(["toy"])]
    with pytest.raises(ValueError, match="pretrain.options for method 'toy': colour"):
        run_pretrain(load_config(overrides=TINY + ["pretrain.options={colour: 1}"]), tmp_path / "bad",
                     regions=embedded["regions"])

    pre = run_pretrain(cfg, tmp_path / "encoder", regions=embedded["regions"], name="toy")
    assert pre["method"] == "toy" and pre["options"] == {"scale": 2.0} and pre["epochs"] == 1
    assert pre["budget"]["epochs"] == 1 and pre["budget"]["steps"] == pre["rows"] // 8  # recorded with the encoder
    assert torch.isfinite(torch.tensor(pre["final_loss"]))
    # 2 repeats of 2-fold cross-validation (evaluate.repeats): 4 splits, each a nested MLflow run, fitted in 2
    # Ray Train runs side by side (lanes: the 2 CPUs hold 2 runs), 2 splits one after another in each
    fcfg = build_config(apply_overrides(finetune_config(cfg, tmp_path / "encoder").model_dump(mode="json"),
                                        ["evaluate.repeats=2"]))
    fine = run_finetune(fcfg, embedded["data"] / "labelled", tmp_path / "finetune", name="toy-ft")
    metrics = json.loads((tmp_path / "finetune" / "metrics.json").read_text())
    assert [(m["repeat"], m["fold"]) for m in metrics["folds"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert fine["init"] == str(tmp_path / "encoder") and (fine["summary"]["k"], fine["summary"]["repeats"]) == (2, 2)
    assert 0 <= fine["summary"]["accuracy"]["mean"] <= 1 and len(fine["summary"]["accuracy"]["folds"]) == 4
    folds = json.loads((tmp_path / "finetune" / "folds.json").read_text())
    assert folds["repeats"] == 2 and len(folds["folds"]) == 2 and folds["digest"] == metrics["folds_digest"]
    predictions = pq.read_table(tmp_path / "finetune" / "predictions.parquet").to_pydict()
    assert sorted(set(zip(predictions["repeat"], predictions["fold"]))) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len(predictions["id"]) == 2 * len(set(predictions["id"]))  # every sample held out once per repeat
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{fine.run_id}'", search_all_experiments=True)
    assert sorted(children["tags.mlflow.runName"]) == [f"toy-ft-r{r}-fold{f}" for r in (0, 1) for f in (0, 1)]
