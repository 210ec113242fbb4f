"""AdamW parameter groups: no weight decay on norms, biases and tokens; optional layer-wise lr decay."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn


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
