"""The pixel side of masked-image modelling, shared by MAE, ConvMAE and MixMIM.

A method that mixes this in sets ``self.patch`` (pixels per patch side) and
``self.norm_pix_loss``; images are (N, 3, H, W) with H = W a multiple of the patch.
"""

from __future__ import annotations

import torch


class PixelPatches:
    patch: int
    norm_pix_loss: bool

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, L, p*p*3), row-major patches."""
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

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """What is reconstructed (N, L, p*p*3): the patches, per-patch normalised when ``norm_pix_loss``."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on the masked patches only (mask (N, L), 1 = masked)."""
        loss = ((pred - self.target(imgs)) ** 2).mean(dim=-1)  # (N, L) per patch
        return (loss * mask).sum() / mask.sum()

    def to_pixels(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Predictions (N, L, p*p*3) in input pixel space: the per-patch normalisation undone with the
        target's own statistics when ``norm_pix_loss``."""
        if not self.norm_pix_loss:
            return pred
        target = self.patchify(imgs)
        return pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)

    @torch.no_grad()
    def reconstruction(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(masked input, reconstruction with the visible patches pasted back), in input pixel space."""
        target, m = self.patchify(imgs), mask.unsqueeze(-1)
        return self.unpatchify(target * (1 - m)), self.unpatchify(target * (1 - m) + self.to_pixels(imgs, pred) * m)
