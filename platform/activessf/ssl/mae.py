"""MAE (He et al., CVPR 2022): mask 75% of the patches, encode the rest, reconstruct the pixels.

Follows facebookresearch/mae: ``forward`` = ``forward_encoder`` ->
``forward_decoder`` -> ``forward_loss``; masking by argsort of uniform noise;
fixed 2-D sin-cos position embeddings; loss on masked patches only, on
per-patch normalised pixels when ``norm_pix_loss`` (ssl/patches.py, shared
with ConvMAE and MixMIM). The encoder is a timm
VisionTransformer, so its state dict loads into ``timm.create_model('vit_*')``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field
from timm.models.vision_transformer import Block
from torch import nn

from ..config import PretrainConfig
from .base import MethodSettings, SSLMethod, SSLOutput, register_method
from .patches import PixelPatches
from .vit import SIZES, build_vit, sincos_2d, vit_spec


def random_masking(x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random (1 - mask_ratio) of the tokens of each sample.

    x: (N, L, D) -> (x_kept (N, L_keep, D), mask (N, L) with 1 = removed, ids_restore (N, L)).
    """
    n, length, dim = x.shape
    keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    return x_kept, torch.gather(mask, 1, ids_restore), ids_restore


@register_method("mae", "MAE")
class MAE(PixelPatches, SSLMethod):
    views = 1

    class Settings(MethodSettings):
        mask_ratio: float = Field(0.75, gt=0, lt=1, description="share of patches masked (paper: 0.75)")
        norm_pix_loss: bool = Field(True, description="loss on per-patch normalised pixels")

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        s = SIZES[cfg.model]
        opts = self.settings(cfg)
        self.patch, self.mask_ratio, self.norm_pix_loss = cfg.patch_size, opts.mask_ratio, opts.norm_pix_loss
        self.vit = build_vit(cfg.model, cfg.image_size, cfg.patch_size)
        grid = cfg.image_size // cfg.patch_size
        self.decoder_embed = nn.Linear(s.dim, s.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, s.decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(s.decoder_dim, grid), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(s.decoder_dim, s.decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(s.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(s.decoder_dim)
        self.decoder_pred = nn.Linear(s.decoder_dim, cfg.patch_size**2 * 3)
        torch.nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder_pred):
            torch.nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    @classmethod
    def encoder_spec(cls, cfg: PretrainConfig) -> dict:
        return vit_spec(cfg)

    def encoder(self) -> nn.Module:
        return self.vit

    def no_weight_decay(self) -> set[str]:
        return {"vit.cls_token", "mask_token"}

    # ---------------------------------------------------------------- model
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float):
        vit = self.vit
        x = vit.patch_embed(imgs) + vit.pos_embed[:, 1:, :]  # (N, L, D)
        x, mask, ids_restore = random_masking(x, mask_ratio)
        cls = (vit.cls_token + vit.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in vit.blocks:
            x = blk(x)
        return vit.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        n, length = ids_restore.shape
        tokens = torch.cat([x[:, 1:, :], self.mask_token.expand(n, length + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]  # (N, L, p*p*3), no cls

    def forward(self, views: Sequence[torch.Tensor]) -> SSLOutput:
        imgs = views[0]
        latent, mask, ids_restore = self.forward_encoder(imgs, self.mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return SSLOutput(self.forward_loss(imgs, pred, mask), {"images": imgs, "pred": pred, "mask": mask})
