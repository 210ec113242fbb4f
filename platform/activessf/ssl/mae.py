"""MAE (He et al., CVPR 2022): mask 75% of the patches, encode the rest, reconstruct the pixels.

Follows facebookresearch/mae: ``forward`` = ``forward_encoder`` ->
``forward_decoder`` -> ``forward_loss``; masking by argsort of uniform noise;
fixed 2-D sin-cos position embeddings; loss on masked patches only, on
per-patch normalised pixels when ``norm_pix_loss``. The encoder is a timm
VisionTransformer, so its state dict loads into ``timm.create_model('vit_*')``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from timm.models.vision_transformer import Block
from torch import nn

from ..config import PretrainConfig
from .base import SSLMethod, SSLOutput, register_method
from .vit import SIZES, build_vit, sincos_2d


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


@register_method("mae")
class MAE(SSLMethod):
    views = 1

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        s = SIZES[cfg.model]
        self.patch, self.mask_ratio, self.norm_pix_loss = cfg.patch_size, cfg.mask_ratio, cfg.norm_pix_loss
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

    def encoder(self) -> nn.Module:
        return self.vit

    def no_weight_decay(self) -> set[str]:
        return {"vit.cls_token", "mask_token"}

    # ---------------------------------------------------------------- patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, L, p*p*3)."""
        p = self.patch
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*3) -> (N, 3, H, W)."""
        p = self.patch
        g = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], g, g, p, p, 3)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], 3, g * p, g * p)

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

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # (N, L) per patch
        return (loss * mask).sum() / mask.sum()  # masked patches only

    def forward(self, views: Sequence[torch.Tensor]) -> SSLOutput:
        imgs = views[0]
        latent, mask, ids_restore = self.forward_encoder(imgs, self.mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return SSLOutput(self.forward_loss(imgs, pred, mask), {"images": imgs, "pred": pred, "mask": mask})

    @torch.no_grad()
    def reconstruction(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(masked input, reconstruction with visible patches pasted back), in input pixel space."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:  # undo the per-patch normalisation with the target's statistics
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        m = mask.unsqueeze(-1)
        return self.unpatchify(target * (1 - m)), self.unpatchify(target * (1 - m) + pred * m)
