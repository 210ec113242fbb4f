"""The SSL method interface and its registry.

A method is one module: a subclass of :class:`SSLMethod` registered with
``@register_method(name, label)`` that declares its own settings as a nested
``Settings`` model (users set them under ``pretrain.options``), its views, its
augmentation recipe and how to rebuild its exported encoder. The CLI's list of
methods (``activessf methods``), config validation and the ablation's row labels
all read this registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ..config import PretrainConfig

METHODS: dict[str, type["SSLMethod"]] = {}


class MethodSettings(BaseModel):
    """Base of a method's own settings (``pretrain.options``): unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class SSLOutput:
    loss: torch.Tensor  # scalar
    extras: dict = field(default_factory=dict)  # tensors worth looking at (reconstructions, masks, logits)


class SSLMethod(nn.Module):
    """Base of every method: ``views`` augmented views in, a loss out, an encoder to export."""

    views: int = 1
    name: str = ""
    label: str = ""  # how reports name it ("MoCo v3")
    augmentation: str = "mae"  # which view recipe in ssl.augment
    Settings: type[MethodSettings] = MethodSettings

    @classmethod
    def settings(cls, cfg: PretrainConfig) -> MethodSettings:
        """This method's settings: its defaults, updated by ``cfg.options``; a clear error for a bad one."""
        try:
            return cls.Settings(**cfg.options)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            known = ", ".join(f"{k} (default {f.default!r})" for k, f in cls.Settings.model_fields.items()) or "none"
            raise ValueError(f"pretrain.options for method {cls.name!r}: {problems}. Its settings: {known}") from None

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


def register_method(name: str, label: str | None = None):
    """Class decorator: make ``cls`` the method called ``name`` (``pretrain.method``), shown as ``label``."""
    def wrap(cls):
        cls.name, cls.label = name, label or name
        METHODS[name] = cls
        return cls

    return wrap


def method_class(cfg: PretrainConfig, per_worker_batch: int | None = None) -> type[SSLMethod]:
    """The registered class of ``cfg.method``, after its checks of ``cfg`` (before any training starts)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown SSL method {cfg.method!r} (pretrain.method); registered: {', '.join(sorted(METHODS))}")
    cls = METHODS[cfg.method]
    cls.settings(cfg)
    cls.check_config(cfg, cfg.batch_size if per_worker_batch is None else per_worker_batch)
    return cls


def build_method(cfg: PretrainConfig, cls: type[SSLMethod] | None = None) -> SSLMethod:
    """The method of ``cfg`` (from the registry, or ``cls``: a class passed to a Ray worker that has not
    imported the module registering it)."""
    return (cls or method_class(cfg))(cfg)


def describe() -> list[dict]:
    """Every registered method: name, label, views and settings with their defaults (``activessf methods``)."""
    return [{"name": n, "label": c.label, "views": c.views,
             "settings": {k: f.default for k, f in c.Settings.model_fields.items()},
             "help": {k: f.description or "" for k, f in c.Settings.model_fields.items()}}
            for n, c in sorted(METHODS.items())]
