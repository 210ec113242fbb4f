"""The SSL method interface and its registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..config import PretrainConfig

METHODS: dict[str, Callable[[PretrainConfig], "SSLMethod"]] = {}


@dataclass
class SSLOutput:
    loss: torch.Tensor  # scalar
    extras: dict = field(default_factory=dict)  # tensors worth looking at (reconstructions, masks, logits)


class SSLMethod(nn.Module):
    """Base of every method: ``views`` augmented views in, a loss out, an encoder to export."""

    views: int = 1
    name: str = ""
    augmentation: str = "mae"  # which view recipe in ssl.augment

    def forward(self, views: Sequence[torch.Tensor]) -> SSLOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def encoder(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def export_encoder(self) -> dict[str, torch.Tensor]:
        """The encoder's weights in the layout of a timm model of the same architecture."""
        return {k: v.detach().cpu().clone() for k, v in self.encoder().state_dict().items()}

    @classmethod
    def encoder_spec(cls, cfg: PretrainConfig) -> dict:  # pragma: no cover - abstract
        """How to rebuild the exported encoder: ``{"timm_name": str, "timm_kwargs": dict}`` such that
        ``timm.create_model(timm_name, num_classes=0, **timm_kwargs)`` loads ``export_encoder()`` strictly."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, cfg: PretrainConfig, per_worker_batch: int) -> None:
        """Raise ValueError, saying how to fix it, if this method cannot train with ``cfg``."""

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step with training progress in [0, 1]."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides norms and biases."""
        return set()


def register_method(name: str):
    def wrap(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def method_class(cfg: PretrainConfig, per_worker_batch: int | None = None) -> type[SSLMethod]:
    """The registered class of ``cfg.method``, after its checks of ``cfg`` (before any training starts)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown SSL method {cfg.method!r} (pretrain.method); registered: {', '.join(sorted(METHODS))}")
    cls = METHODS[cfg.method]
    cls.check_config(cfg, cfg.batch_size if per_worker_batch is None else per_worker_batch)
    return cls


def build_method(cfg: PretrainConfig) -> SSLMethod:
    return method_class(cfg)(cfg)
