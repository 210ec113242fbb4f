"""MoCo v3 (Chen, Xie, He, ICCV 2021): two views, a momentum encoder, a symmetric contrastive loss.

Follows facebookresearch/moco-v3: ViT backbone + 3-layer projector (BN, last
BN without affine) + 2-layer predictor on the query side; the key side is an
exponential moving average of backbone + projector whose momentum follows a
cosine schedule from ``moco_momentum`` to 1; loss = ctr(q1, k2) + ctr(q2, k1)
with ctr the InfoNCE over keys gathered from all workers, times 2T.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config import PretrainConfig
from .base import MethodSettings, SSLMethod, SSLOutput, register_method
from .vit import SIZES, build_vit, vit_spec


def mlp(layers: int, dim_in: int, hidden: int, dim_out: int, last_bn: bool = True) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        a = dim_in if i == 0 else hidden
        b = dim_out if i == layers - 1 else hidden
        mods.append(nn.Linear(a, b, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*mods)


@torch.no_grad()
def gather_all(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, D) from every worker (no gradient); itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def momentum_at(progress: float, base: float) -> float:
    """Cosine schedule of the EMA momentum: ``base`` at the start, 1 at the end."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@register_method("mocov3", "MoCo v3")
class MoCoV3(SSLMethod):
    views = 2
    augmentation = "moco"

    class Settings(MethodSettings):
        dim: int = Field(256, ge=8, description="output dim")
        mlp_dim: int = Field(4096, ge=8, description="projector/predictor hidden dim")
        temperature: float = Field(0.2, gt=0, le=10, description="InfoNCE temperature T")
        momentum: float = Field(0.99, ge=0, le=1, description="EMA momentum at the start (cosine to 1)")

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        dim = SIZES[cfg.model].dim
        opts = self.settings(cfg)
        self.T, self.m0 = opts.temperature, opts.momentum
        self.m = self.m0
        self.base = build_vit(cfg.model, cfg.image_size, cfg.patch_size)
        self.projector = mlp(3, dim, opts.mlp_dim, opts.dim)
        self.predictor = mlp(2, opts.dim, opts.mlp_dim, opts.dim, last_bn=False)
        self.momentum_base = copy.deepcopy(self.base)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in list(self.momentum_base.parameters()) + list(self.momentum_projector.parameters()):
            p.requires_grad_(False)

    @classmethod
    def encoder_spec(cls, cfg: PretrainConfig) -> dict:
        return vit_spec(cfg)

    def encoder(self) -> nn.Module:
        return self.base

    def no_weight_decay(self) -> set[str]:
        return {"base.cls_token"}

    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        k = gather_all(k)
        logits = q @ k.t() / self.T  # (N, N * workers)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank
        return F.cross_entropy(logits, labels) * (2 * self.T)

    def forward(self, views: Sequence[torch.Tensor]) -> SSLOutput:
        x1, x2 = views
        q1 = self.predictor(self.projector(self.base(x1)))
        q2 = self.predictor(self.projector(self.base(x2)))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_base(x1))
            k2 = self.momentum_projector(self.momentum_base(x2))
        loss = self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)
        return SSLOutput(loss, {"momentum": self.m})

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """EMA update of the key encoder with the scheduled momentum."""
        self.m = momentum_at(progress, self.m0)
        pairs = [(self.base, self.momentum_base), (self.projector, self.momentum_projector)]
        for online, ema in pairs:
            for p, q in zip(online.parameters(), ema.parameters()):
                q.mul_(self.m).add_(p.detach(), alpha=1.0 - self.m)
