"""MixMIM / MixMAE (Liu, Chen et al., CVPR 2023): mix two images, encode, unmix, reconstruct both.

Follows the official code (Sense-X/MixMIM, ``models_mixmim.py``) in MAE's layout: ``forward`` =
``forward_encoder`` -> ``forward_decoder`` -> ``forward_loss``.

1. ``random_block_mask``: one mask per batch on the stage-4 grid (32x32-px blocks), exactly
   int(L * mixmim_mask_ratio) of the L blocks set (paper: 0.5), repeated to the finer stages.
2. ``mix``: after patch embedding, image i's masked tokens are replaced by the tokens of its
   partner, the batch-flipped image N-1-i: x_mixed = x * (1 - m) + x.flip(0) * m.
3. The hierarchical encoder (``models.mixvit``) runs on the mixed tokens with attention restricted
   to tokens of one source (group = m at every stage), so no token sees the other image.
4. Dual reconstruction: the decoder gets x1 = z * (1 - m) + mask_token * m (image i's visible
   tokens) and x2 = z * m + mask_token * (1 - m) (its partner's), both decoded in one batch;
   ``unmix_predictions`` takes every position of image i from the copy in which it was hidden.
5. MSE to the (per-patch normalised when ``norm_pix_loss``) 32x32-px patches, at every position.

With an odd batch the middle image is its own partner: mixing leaves it unchanged and its two
halves are still encoded apart, so it is trained as a dual-masked MAE sample, without leakage.
A batch of one image has no partner and is refused.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from pydantic import Field
from timm.models.vision_transformer import Block
from torch import nn

from ..config import PretrainConfig
from ..models.mixvit import SIZES, STRIDE, MixViT, check_img_size, init_weights, upsample_nearest
from ..models.posembed import sincos_2d
from .base import MethodSettings, SSLMethod, SSLOutput, register_method
from .patches import PixelPatches


def random_block_mask(grid: int, mask_ratio: float, device: Optional[torch.device] = None) -> torch.Tensor:
    """One mask for the whole batch on the ``grid`` x ``grid`` stage-4 grid, 1 = the token comes from the
    partner image; exactly int(grid**2 * mask_ratio) ones -> (1, grid*grid) float."""
    length = grid * grid
    hidden = torch.rand(length, device=device).argsort()[: int(length * mask_ratio)]
    mask = torch.zeros(1, length, device=device)
    mask[0, hidden] = 1.0
    return mask


def mix(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Fill each sample's masked tokens with those of its partner, the batch-flipped sample.

    x: (N, ..., C); m: 0/1, broadcastable to x (e.g. (1, H, W, 1)) -> (N, ..., C).
    """
    return x * (1 - m) + x.flip(0) * m


def unmix(mixed: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Recover the originals from ``mix(x, m)``: x_i = mixed_i * (1 - m) + mixed_{N-1-i} * m.

    ``mix`` is an involution (flip pairs i with N-1-i, m is 0/1), so this is ``mix`` again; shapes as ``mix``.
    """
    return mix(mixed, m)


def dual_inputs(z: torch.Tensor, m: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """The two decoder inputs of each mixed sample, stacked on the batch.

    z: (N, L, D) encoded mixed samples; m: (1, L, 1); mask_token: (1, 1, D) ->
    (2N, L, D) = [x1 (sample i's own image, masked where m = 1); x2 (its partner's, masked where m = 0)].
    """
    x1 = z * (1 - m) + mask_token * m
    x2 = z * m + mask_token * (1 - m)
    return torch.cat([x1, x2], dim=0)


def unmix_predictions(rec: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per image, each position predicted from the copy in which it was hidden.

    rec: (2N, L, P) decoded ``dual_inputs``; m: (1, L, 1) -> (N, L, P). Image i is hidden at m = 1 in
    mixed sample i (predicted in x1_i) and at m = 0 in sample N-1-i (predicted in x2_{N-1-i}).
    """
    rec1, rec2 = rec.chunk(2, dim=0)
    return rec1 * m + rec2.flip(0) * (1 - m)


@register_method("mixmim", "MixMIM")
class MixMIM(PixelPatches, SSLMethod):
    views = 1
    augmentation = "mae"

    class Settings(MethodSettings):
        mask_ratio: float = Field(0.5, gt=0, lt=1, description="share of tokens taken from the other image (its paper: 0.5)")
        norm_pix_loss: bool = Field(True, description="loss on per-patch normalised pixels")

    @classmethod
    def check_config(cls, cfg: PretrainConfig, per_worker_batch: int) -> None:
        check_img_size(cfg.image_size)
        if per_worker_batch < 2:
            raise ValueError(f"MixMIM mixes pairs of images within each worker's batch, which would hold "
                             f"{per_worker_batch}: raise pretrain.batch_size (or lower workers or accum_steps) "
                             "so that batch_size // (workers * accum_steps) >= 2")

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        s = SIZES[cfg.model]
        opts = self.settings(cfg)
        self.patch, self.mask_ratio, self.norm_pix_loss = STRIDE, opts.mask_ratio, opts.norm_pix_loss
        self.mixvit = MixViT(**s.timm_kwargs(cfg.image_size))  # raises unless image_size % 32 == 0
        self.grid = cfg.image_size // STRIDE
        hidden = int(self.grid**2 * self.mask_ratio)
        if not 0 < hidden < self.grid**2:
            raise ValueError(f"MixMIM mixes int(L * mixmim_mask_ratio) of the L = {self.grid**2} blocks of 32x32 px; "
                             f"with image_size {cfg.image_size} and ratio {self.mask_ratio} that is {hidden}: "
                             f"use a larger image_size (>= 64) or a ratio nearer 0.5")
        self.decoder_embed = nn.Linear(self.mixvit.num_features, s.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, s.decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(s.decoder_dim, self.grid, cls_token=False),
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(s.decoder_dim, s.decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(s.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(s.decoder_dim)
        self.decoder_pred = nn.Linear(s.decoder_dim, STRIDE**2 * 3)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_pred):
            m.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    @classmethod
    def encoder_spec(cls, cfg: PretrainConfig) -> dict:
        return {"timm_name": "mixmim_activessf", "timm_kwargs": SIZES[cfg.model].timm_kwargs(cfg.image_size)}

    def encoder(self) -> nn.Module:
        return self.mixvit

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    # ---------------------------------------------------------------- model
    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mix the batch with ``mask`` (1, L) and encode it -> z (N, L, 8C), attention within each source."""
        group = mask.view(1, self.grid, self.grid)  # stage-4 grid; the encoder repeats it to stages 1-3
        x = self.mixvit.embed(imgs)  # (N, H/4, W/4, C), position included: it is the same for both images,
        # so mixing after adding it equals the official order (mix, then add)
        x = mix(x, upsample_nearest(group, STRIDE // 4).unsqueeze(-1))
        return self.mixvit.forward_tokens(x, group).flatten(1, 2)  # (N, L, 8C)

    def forward_decoder(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Dual reconstruction, unmixed: z (N, L, 8C), mask (1, L) -> pred (N, L, 32*32*3) per source image."""
        m = mask.unsqueeze(-1)  # (1, L, 1)
        x = dual_inputs(self.decoder_embed(z), m, self.mask_token) + self.decoder_pos_embed  # (2N, L, D)
        for blk in self.decoder_blocks:
            x = blk(x)
        rec = self.decoder_pred(self.decoder_norm(x))  # (2N, L, 32*32*3)
        return unmix_predictions(rec, m)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """MSE over every position: each was hidden in one of the two copies (official ``forward_loss``)."""
        return ((pred - self.target(imgs)) ** 2).mean()

    def forward(self, views: Sequence[torch.Tensor]) -> SSLOutput:
        imgs = views[0]
        if imgs.shape[0] < 2:
            raise ValueError(f"MixMIM mixes pairs of images within a batch; got a batch of {imgs.shape[0]}: "
                             "use at least 2 images per worker (pretrain.batch_size // workers // accum_steps)")
        mask = random_block_mask(self.grid, self.mask_ratio, imgs.device)  # (1, L)
        pred = self.forward_decoder(self.forward_encoder(imgs, mask), mask)
        extras = {"images": imgs, "pred": pred, "mask": mask.expand(imgs.shape[0], -1)}
        return SSLOutput(self.forward_loss(imgs, pred), extras)

    @torch.no_grad()
    def reconstruction(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(mixed input, reconstruction), in input pixel space (N, 3, H, W).

        mask (N, L): 1 where image i was hidden in its own mixed sample. Every position is predicted
        from a copy in which it was hidden, so the whole prediction is shown, nothing pasted back.
        """
        mixed = mix(self.patchify(imgs), mask.unsqueeze(-1))
        return self.unpatchify(mixed), self.unpatchify(self.to_pixels(imgs, pred))
