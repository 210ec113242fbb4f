"""AdamW parameter groups: no weight decay on norms, biases and tokens; optional layer-wise lr decay."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

FINAL = ("norm.", "fc_norm.", "head.")  # an encoder's last layers: full learning rate under layer-wise decay


def decays(name: str, param: torch.Tensor, skip: set[str]) -> bool:
    """Weight decay applies to matrices and kernels only (MAE/timm convention)."""
    return param.ndim > 1 and name not in skip and not name.endswith(("pos_embed", "cls_token", "mask_token"))


def param_groups(
    model: nn.Module,
    weight_decay: float,
    skip: set[str] = frozenset(),
    layer_of: Optional[Callable[[str], int]] = None,
    num_layers: int = 0,
    layer_decay: float = 1.0,
) -> list[dict]:
    """Groups for AdamW. With ``layer_of``, parameter ``name`` at layer ``i`` of ``num_layers + 1``
    gets ``lr_scale = layer_decay ** (num_layers - i)`` (BEiT/MAE layer-wise decay)."""
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = weight_decay if decays(name, p, set(skip)) else 0.0
        layer = layer_of(name) if layer_of else 0
        scale = layer_decay ** (num_layers - layer) if layer_of else 1.0
        key = (wd, scale)
        group = groups.setdefault(key, {"params": [], "names": [], "weight_decay": wd, "lr_scale": scale})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def encoder_layers(encoder: nn.Module) -> tuple[dict[str, int], int]:
    """(layer of each parameter name of a timm ``encoder``, the top layer) for layer-wise lr decay.

    From the encoder's ``group_matcher``: 0 for the embeddings (patch embedding, cls token, position
    embedding), then one layer per block (per stage for a CNN without ``blocks``). The final norms and the
    classifier (``FINAL`` names, ``get_classifier()``) take the top layer, after the last block: MAE's and
    BEiT's recipe gives them the full learning rate (timm would group the final norm with the last block).
    """
    from timm.models import group_parameters

    if not hasattr(encoder, "group_matcher"):
        raise ValueError(f"layer-wise lr decay needs an encoder with timm's group_matcher; {type(encoder).__name__} "
                         "has none: set the layer_decay to 1.0 (no decay), or give the encoder a group_matcher")
    coarse = not hasattr(encoder, "blocks")  # transformers by block; CNNs (ResNet: stem, layer1-4, fc) by stage
    layers = group_parameters(encoder, encoder.group_matcher(coarse=coarse), reverse=True)
    head = encoder.get_classifier() if hasattr(encoder, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    final = {n for n, p in encoder.named_parameters() if n.startswith(FINAL) or id(p) in head_ids}
    top = 1 + max((layer for n, layer in layers.items() if n not in final), default=-1)
    return {n: top if n in final else layer for n, layer in layers.items()}, top


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float,
                       encoder: Optional[nn.Module] = None, skip: set[str] = frozenset()) -> list[dict]:
    """AdamW groups with ``lr_scale = layer_decay ** (top - layer)`` over the layers of ``encoder``
    (:func:`encoder_layers`), a submodule of ``model``, by default ``model`` itself (a classifier).

    Block i of a depth-d encoder learns at ``layer_decay ** (d - i)``, its embeddings at
    ``layer_decay ** (d + 1)``; its final norm, its classifier and every parameter of ``model`` outside
    it (an SSL method's decoder, projector, predictor) at the full rate. ``layer_decay`` 1.0: no decay.

    Why not timm's ``timm.optim.param_groups_layer_decay`` (nor ``create_optimizer_v2``, which calls it):
    compared on timm 1.0.31 with ``no_weight_decay_list=model.no_weight_decay()``, its weight decay is the
    same as ours, but its layers are not.

    - The final norm: timm puts a ViT's ``norm`` at the last block's rate (``0.75`` for a depth-3 ViT at
      decay 0.75); the MAE and BEiT fine-tuning recipe, which the paper follows, trains it at the full rate
      with the head (1.0 here).
    - CNNs: timm always uses ``group_matcher(coarse=False)``, one layer per residual block (a ResNet-18's
      stem at ``0.75 ** 9``); we use one layer per stage, the granularity of the stem/layer1-4 recipe
      (stem at ``0.75 ** 5``).
    - SSL methods: the layers are the encoder's, a submodule, and the decoder, projector and predictor
      around it must learn at the full rate; timm's function reads the group matcher of the module it is
      given and has no notion of an encoder inside it.

    So we keep this function and use timm's public ``timm.models.group_parameters`` for the layer map
    (:func:`encoder_layers`); tests/evaluation/test_layer_decay.py pins the three differences.
    """
    if layer_decay == 1.0:
        return param_groups(model, weight_decay, skip)
    encoder = model if encoder is None else encoder
    name = next((n for n, m in model.named_modules() if m is encoder), None)
    if name is None:
        raise ValueError(f"the encoder ({type(encoder).__name__}) is not a submodule of {type(model).__name__}")
    prefix = f"{name}." if name else ""
    layers, top = encoder_layers(encoder)

    def layer_of(param: str) -> int:
        return layers.get(param.removeprefix(prefix), top) if param.startswith(prefix) else top

    return param_groups(model, weight_decay, skip, layer_of=layer_of, num_layers=top, layer_decay=layer_decay)
