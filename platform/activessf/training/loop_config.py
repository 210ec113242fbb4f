"""What the Ray Train worker loops read from their ``train_loop_config`` dict: every key, typed, defaulted once.

The stages build a plain dict (Ray Train passes it to every worker); a worker
parses it first thing, so that a missing, misspelt or wrong-typed key fails
with a message that names it instead of a ``KeyError`` (or a silently ignored
test hook) deep in the loop:

    lc = PretrainLoopConfig.from_dict(config)
    lc.cfg.pretrain.epochs, lc.rows, lc.max_bad_steps
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import Config, ConfigError, explain


class LoopConfig(BaseModel):
    """Keys both loops read. Unknown keys are errors; values are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    cfg: Config = Field(description="the whole pipeline configuration (``Config.model_dump(mode='json')``)")
    tracking_uri: str | None = Field(None, description="MLflow store the workers log to (rank 0)")
    mlflow_run_id: str | None = Field(None, description="the run they log to; None = no MLflow")
    inline: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="in-memory sets by dataset name (``training.inline``), else Ray Data"
    )
    cache_mb: float = Field(2048, ge=0, description="a worker's shard up to this size is kept in memory")
    progress_label: str = Field("", description="what rank 0's per-epoch progress lines start with (e.g. the "
                                "fold); the lines are off under cfg.run.quiet")

    @classmethod
    def from_dict(cls, config: dict):
        """Parse and check the loop's config dict; :class:`ConfigError` names each bad key."""
        head = f"invalid {cls.__name__} (the dict passed to the training loop):\n"
        missing = [f"  - {k}: missing ({f.description})" for k, f in cls.model_fields.items()
                   if f.is_required() and k not in config]
        if missing:
            raise ConfigError(head + "\n".join(missing))
        try:
            return cls.model_validate(config)
        except ValidationError as exc:
            lines = explain(exc, cls).splitlines()[1:-1]  # without the YAML/--set advice: a stage built this dict
            raise ConfigError(head + "\n".join(lines)) from None


class PretrainLoopConfig(LoopConfig):
    """The pretraining loop's keys (``training.loop.train_loop_per_worker``)."""

    rows: int = Field(ge=0, description="training images in total (sets the steps per epoch)")
    max_bad_steps: int = Field(5, ge=1, description="non-finite losses in a row before a rollback")
    max_rollbacks: int = Field(3, ge=0, description="rollbacks before the run fails")
    visualise_every: int = Field(0, ge=0, description="epochs between reconstruction pictures; 0 = none")
    sample_images: Any | None = Field(None, description="uint8 (N, S, S, 3) images for the pictures")
    viz_dir: str | None = Field(None, description="also keep the pictures here, if writable")
    probe: dict | None = Field(None, description="held-out labelled cells for the sweep's probe "
                                  "(``training.loop.probe_metrics``); None = no probe")
    report_constants: dict[str, Any] = Field(default_factory=dict, description="reported with every epoch")
    method_class: Any | None = Field(None, description="the SSL method's class, passed by the driver so that a "
                                     "method registered outside the library trains too; None = the registry's")
    inject_nan_steps: tuple[int, ...] = Field((), description="test hook: NaN losses at these global steps")
    fail_at_epoch: int | None = Field(None, ge=0, description="test hook: the last worker dies at this "
                                         "epoch, once per run")
    pause_at_epoch: int | None = Field(None, ge=0, description="test hook: every worker waits pause_seconds "
                                          "at the start of this epoch, once per run (a window to take a node away)")
    pause_seconds: float = Field(20.0, ge=0, description="test hook: how long pause_at_epoch waits")
    marker: str | None = Field(None, description="path prefix of fail_at_epoch's 'failed once' file "
                               "(and pause_at_epoch's 'paused' file)")

    @model_validator(mode="after")
    def _check(self) -> PretrainLoopConfig:
        if (self.fail_at_epoch is not None or self.pause_at_epoch is not None) and not self.marker:
            raise ValueError("fail_at_epoch needs marker (a path under the run's storage), "
                             "or the worker would fail on every restart")
        return self


class FinetuneLoopConfig(LoopConfig):
    """The fine-tuning loop's keys (``training.finetune_loop.finetune_loop_per_worker``)."""

    train_rows: int = Field(ge=0, description="training images of this fold (sets the steps per epoch)")
    num_classes: int = Field(ge=2, description="classes of the classifier head")
    class_counts: list[int] = Field(description="training images per class (for finetune.class_weights)")
    has_val: bool = Field(True, description="predict the held-out 'val' set at the end")
    export_model: bool = Field(False, description="return the model's weights in the last checkpoint")
    dataset_suffix: str = Field("", description="the split's Ray datasets are 'train' and 'val' plus this "
                                "(a lane's splits are named apart); in-memory sets are the split's own")
    cache_mb: float = Field(4096, ge=0, description="a worker's shard up to this size is kept in memory")

    @model_validator(mode="after")
    def _check(self) -> FinetuneLoopConfig:
        if len(self.class_counts) != self.num_classes:
            raise ValueError(f"class_counts has {len(self.class_counts)} entries for num_classes="
                             f"{self.num_classes}: one count per class")
        return self
