"""ConvMAE (Gao et al., NeurIPS 2022, arXiv 2205.03892): MAE on a hybrid convolution-transformer encoder.

What changes from MAE (ssl/mae.py), under the paper's own headings:

- Hybrid Convolution-transformer Encoder: ConvViT (models/convvit.py), two
  convolutional stages at 1/4 and 1/8 resolution, then a ViT stage on 1/16 tokens.
- Block-wise Masking with Masked Convolutions: the mask is drawn on the 1/16
  token grid and upsampled to the 1/8 and 1/4 grids, where it zeroes the inputs
  of every depthwise convolution; the ViT stage sees the visible tokens only. No
  visible token depends on a masked pixel.
- Multi-scale Decoder: the stage-1 and stage-2 maps, strided down to the token
  grid, are added to the encoder output before its final norm.

The pixel side (16x16 patches, MSE on masked patches, ``norm_pix_loss``,
``reconstruction``) is MAE's, shared through ssl/patches.py. Follows the official
models_convmae.py (Alpha-VL/ConvMAE), without its cls token anywhere.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from pydantic import Field
from timm.models.vision_transformer import Block
from torch import nn

from ..config import PretrainConfig
from ..models.convvit import SIZES, STRIDE, TIMM_NAME, ConvViT, convvit_kwargs, init_linear
from ..models.posembed import sincos_2d
from .base import MethodSettings, SSLMethod, SSLOutput, register_method
from .mae import random_masking
from .patches import PixelPatches


def random_token_mask(n: int, length: int, mask_ratio: float, device: torch.device | str = "cpu"
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's random masking of ``length`` tokens per sample, as indices.

    -> ids_keep (N, L_keep), mask (N, L) with 1 = masked, ids_restore (N, L). MAE's
    ``random_masking`` applied to the token indices themselves: what it keeps are ``ids_keep``.
    """
    ids = torch.arange(length, device=device, dtype=torch.float32).expand(n, length).unsqueeze(-1)  # (N, L, 1)
    kept, mask, ids_restore = random_masking(ids, mask_ratio)
    return kept.squeeze(-1).long(), mask, ids_restore


def upsample_mask(mask: torch.Tensor, grid: int, scale: int) -> torch.Tensor:
    """Token mask (N, L = grid*grid, row-major) -> (N, 1, grid*scale, grid*scale), each token a scale x scale block."""
    m = mask.reshape(-1, 1, grid, grid)
    return m.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)


def keep_tokens(x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """(N, L, D), ids (N, L_keep) -> (N, L_keep, D)."""
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h*w, C), row-major like ``patchify``."""
    return fmap.flatten(2).transpose(1, 2)


def check_image_size(cfg: PretrainConfig) -> None:
    """ConvMAE's patch is its encoder's stride, 16: ``cfg.image_size`` must be a multiple of it."""
    if cfg.image_size % STRIDE:
        raise ValueError(f"ConvMAE needs pretrain.image_size to be a multiple of {STRIDE} (its encoder's total "
                         f"stride; pretrain.patch_size does not apply), got {cfg.image_size}")


@register_method("convmae", "ConvMAE")
class ConvMAE(PixelPatches, SSLMethod):
    views = 1
    augmentation = "mae"
    patch = STRIDE  # one 16x16 patch per stage-3 token; cfg.patch_size does not apply

    class Settings(MethodSettings):
        mask_ratio: float = Field(0.75, gt=0, lt=1, description="share of stage-3 tokens masked")
        norm_pix_loss: bool = Field(True, description="loss on per-patch normalised pixels")

    @classmethod
    def check_config(cls, cfg: PretrainConfig, per_worker_batch: int) -> None:
        check_image_size(cfg)

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        check_image_size(cfg)
        s = SIZES[cfg.model]
        d1, d2, d3 = s.dims
        opts = self.settings(cfg)
        self.mask_ratio, self.norm_pix_loss = opts.mask_ratio, opts.norm_pix_loss
        self.convvit = ConvViT(**convvit_kwargs(cfg.model, cfg.image_size))
        # Multi-scale decoder: stage-1/2 maps strided to the token grid (pretraining only, not exported)
        self.stage1_output_decode = nn.Conv2d(d1, d3, 4, stride=4)
        self.stage2_output_decode = nn.Conv2d(d2, d3, 2, stride=2)
        self.decoder_embed = nn.Linear(d3, s.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, s.decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(s.decoder_dim, self.convvit.grid, cls_token=False),
                             persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.ModuleList([Block(s.decoder_dim, s.decoder_heads, 4.0, qkv_bias=True, norm_layer=norm)
                                             for _ in range(s.decoder_depth)])
        self.decoder_norm = norm(s.decoder_dim)
        self.decoder_pred = nn.Linear(s.decoder_dim, STRIDE**2 * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_pred):
            m.apply(init_linear)

    @classmethod
    def encoder_spec(cls, cfg: PretrainConfig) -> dict:
        check_image_size(cfg)
        return {"timm_name": TIMM_NAME, "timm_kwargs": convvit_kwargs(cfg.model, cfg.image_size)}

    def encoder(self) -> nn.Module:
        return self.convvit

    def no_weight_decay(self) -> set[str]:
        return {"convvit.pos_embed", "mask_token"}

    # ---------------------------------------------------------------- model
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) -> (latent (N, L_keep, D), mask (N, L) with 1 = masked, ids_restore (N, L))."""
        enc = self.convvit
        ids_keep, mask, ids_restore = random_token_mask(imgs.shape[0], enc.grid**2, mask_ratio, imgs.device)
        x1 = enc.forward_stage1(imgs, 1 - upsample_mask(mask, enc.grid, 4))  # (N, C1, H/4, W/4)
        x2 = enc.forward_stage2(x1, 1 - upsample_mask(mask, enc.grid, 2))  # (N, C2, H/8, W/8)
        x = keep_tokens(enc.embed_tokens(x2), ids_keep)  # (N, L_keep, D): the ViT stage sees visible tokens only
        for blk in enc.blocks3:
            x = blk(x)
        x = x + keep_tokens(to_tokens(self.stage1_output_decode(x1)), ids_keep)  # multi-scale features
        x = x + keep_tokens(to_tokens(self.stage2_output_decode(x2)), ids_keep)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Visible latents (N, L_keep, D) -> pixels of every patch (N, L, 16*16*3)."""
        x = self.decoder_embed(x)  # (N, L_keep, Dd)
        n, length = ids_restore.shape
        x = torch.cat([x, self.mask_token.expand(n, length - x.shape[1], -1)], dim=1)  # (N, L, Dd), shuffled
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2])) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))

    def forward(self, views: Sequence[torch.Tensor]) -> SSLOutput:
        imgs = views[0]
        latent, mask, ids_restore = self.forward_encoder(imgs, self.mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)  # (N, L, 16*16*3)
        return SSLOutput(self.forward_loss(imgs, pred, mask), {"images": imgs, "pred": pred, "mask": mask})
