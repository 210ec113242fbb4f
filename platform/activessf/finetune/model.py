"""Build the classifier to fine-tune, and its layer-wise lr decay parameter groups."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .. import models  # noqa: F401  (registers our encoder architectures with timm)
from ..config import FinetuneConfig
from ..features.backbone import WeightsError, at_encoder, encoder_record, file_digest, read_state_dict
from ..training.optim import layer_decay_groups  # noqa: F401  (fine-tuning's groups: the shared layer-wise decay)

log = logging.getLogger(__name__)


def at_encoder_size(ft: FinetuneConfig) -> FinetuneConfig:
    """``ft`` at the input size of the pretrained encoder it starts from, else unchanged."""
    return at_encoder(ft)


def classifier_spec(ft: FinetuneConfig) -> tuple[str, dict, Path | None, dict]:
    """(timm name, timm kwargs, weights file or None, provenance) of the classifier ``ft`` describes."""
    name, kwargs, weights, info = ft.backbone, dict(ft.backbone_kwargs), None, {"init": "scratch"}
    if ft.init:
        record, weights = encoder_record(ft.init)
        if record is not None:  # a pretrained encoder: rebuild exactly its architecture
            name, kwargs = record["timm_name"], dict(record["timm_kwargs"])
            info = {"init": "pretrained", "method": record.get("method"), "source": record.get("source")}
        else:
            info = {"init": "weights"}
        info["weights_digest"] = file_digest(weights)
    return name, kwargs, weights, info


def create_classifier(name: str, kwargs: dict, num_classes: int, drop_path: float = 0.0, seed: int = 0) -> nn.Module:
    """A timm model (ours included, see ``activessf.models``) with a fresh ``num_classes`` head, seeded."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_path_rate=drop_path, **kwargs)


def build_classifier(ft: FinetuneConfig, num_classes: int, seed: int = 0) -> tuple[nn.Module, dict]:
    """timm model with a fresh ``num_classes`` head; weights from ``ft.init`` when given."""
    name, kwargs, weights, info = classifier_spec(ft)
    model = create_classifier(name, kwargs, num_classes, ft.drop_path, seed)
    if weights is not None:
        head = model.default_cfg.get("classifier", "head")
        heads = tuple(f"{h}." for h in ((head,) if isinstance(head, str) else head))  # timm: a name or a tuple
        # the weights' own head (if any) is dropped: the classifier gets a fresh num_classes head
        state = {k: v for k, v in read_state_dict(weights).items() if not k.startswith(heads)}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes differ: weights of another architecture
            first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
            raise WeightsError(f"{weights} does not fit {name}: {first}") from None
        missing = [k for k in missing if not k.startswith(heads)]
        if missing:
            raise WeightsError(f"{weights} does not fit {name}: missing {missing[:3]} ...")
        if unexpected:
            log.info("ignored %d unused keys from %s", len(unexpected), weights)
    info.update({"timm_name": name, "timm_kwargs": kwargs, "num_classes": num_classes})
    return model, info
