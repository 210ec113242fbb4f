"""Build the classifier to fine-tune, and its layer-wise lr decay parameter groups."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from .. import models  # noqa: F401  (registers our encoder architectures with timm)
from ..config import FinetuneConfig
from ..features.backbone import WeightsError, file_digest, read_state_dict, resolve_weights
from ..training.optim import param_groups

log = logging.getLogger(__name__)

FINAL = ("norm.", "fc_norm.", "head.")  # a classifier's last layers: full learning rate under layer-wise decay


def encoder_record(init: str) -> tuple[dict | None, Path]:
    """(encoder.json of a `pretrain` output, weights file) for ``init``: a directory, a file or a URI."""
    path = Path(init)
    if path.is_dir() and (path / "encoder.json").is_file():
        return json.loads((path / "encoder.json").read_text()), path / "encoder.pt"
    local = resolve_weights(init)
    record = local.parent / "encoder.json"
    return (json.loads(record.read_text()) if record.is_file() else None), local


def at_encoder_size(ft: FinetuneConfig) -> FinetuneConfig:
    """``ft`` at the input size of the pretrained encoder it starts from (a ViT's position embedding fixes
    it), else unchanged; says so when that changes ``finetune.image_size``."""
    if not ft.init:
        return ft
    record, _ = encoder_record(ft.init)
    size = (record or {}).get("image_size")
    if size is None or size == ft.image_size:
        return ft
    log.warning("fine-tuning at %d px, the input size %s was pretrained at (finetune.image_size=%d does not "
                "apply to a pretrained encoder)", size, ft.init, ft.image_size)
    return ft.model_copy(update={"image_size": size})


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
        state = read_state_dict(weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        head = model.default_cfg.get("classifier", "head")
        missing = [k for k in missing if not k.startswith(head)]
        if missing:
            raise WeightsError(f"{weights} does not fit {name}: missing {missing[:3]} ...")
        if unexpected:
            log.info("ignored %d unused keys from %s", len(unexpected), weights)
    info.update({"timm_name": name, "timm_kwargs": kwargs, "num_classes": num_classes})
    return model, info


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with lr_scale = layer_decay ** (last - layer): per block for ViTs, per stage for CNNs."""
    from timm.models._manipulate import group_parameters

    coarse = not hasattr(model, "blocks")  # transformers by block; CNNs (ResNet: stem, layer1-4, fc) by stage
    layers = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
    last = max(layers.values())

    def layer_of(name: str) -> int:
        # timm groups a transformer's final norm with its last block; MAE's recipe (and BEiT's) gives the final
        # norm, like the head, the full learning rate: the layer after the last block
        return last if name.startswith(FINAL) else layers.get(name, last)

    return param_groups(model, weight_decay, layer_of=layer_of, num_layers=last, layer_decay=layer_decay)
