"""ViT encoders from timm with fixed 2-D sine-cosine position embeddings, in named sizes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.posembed import sincos_2d


@dataclass(frozen=True)
class ViTSize:
    dim: int
    depth: int
    heads: int
    decoder_dim: int  # MAE decoder
    decoder_depth: int
    decoder_heads: int
    timm_name: str  # the timm model whose state dict layout the encoder matches (at patch 16, 224 px)


SIZES: dict[str, ViTSize] = {
    "micro": ViTSize(64, 2, 2, 32, 1, 2, "vit_tiny_patch16_224"),  # tests and CPU demos
    "mini": ViTSize(128, 4, 4, 64, 1, 4, "vit_tiny_patch16_224"),  # CPU experiments
    "tiny": ViTSize(192, 12, 3, 128, 2, 4, "vit_tiny_patch16_224"),
    "small": ViTSize(384, 12, 6, 256, 4, 8, "vit_small_patch16_224"),
    "base": ViTSize(768, 12, 12, 512, 8, 16, "vit_base_patch16_224"),
    "large": ViTSize(1024, 24, 16, 512, 8, 16, "vit_large_patch16_224"),
}


def vit_spec(cfg) -> dict:
    """The timm ViT that a ``build_vit`` encoder of ``cfg`` (a PretrainConfig) loads into."""
    s = SIZES[cfg.model]
    return {"timm_name": s.timm_name,
            "timm_kwargs": {"img_size": cfg.image_size, "patch_size": cfg.patch_size, "embed_dim": s.dim,
                            "depth": s.depth, "num_heads": s.heads}}


def vit_overrides(cfg) -> list[str]:
    """Config overrides that fine-tune the ViT which pretraining (``cfg``, a Config) builds, at its input size."""
    p = cfg.pretrain
    s = SIZES[p.model]
    kwargs = f"{{img_size: {p.image_size}, patch_size: {p.patch_size}, embed_dim: {s.dim}, depth: {s.depth}, " \
             f"num_heads: {s.heads}}}"
    return [f"finetune.backbone={s.timm_name}", f"finetune.backbone_kwargs={kwargs}",
            f"finetune.image_size={p.image_size}"]


def build_vit(size: str, image_size: int, patch_size: int, drop_path: float = 0.0):
    """A timm VisionTransformer (no head) whose position embedding is fixed sin-cos."""
    from timm.models.vision_transformer import VisionTransformer

    s = SIZES[size]
    vit = VisionTransformer(img_size=image_size, patch_size=patch_size, embed_dim=s.dim, depth=s.depth,
                            num_heads=s.heads, num_classes=0, drop_path_rate=drop_path)
    with torch.no_grad():
        vit.pos_embed.copy_(sincos_2d(s.dim, image_size // patch_size))
    vit.pos_embed.requires_grad_(False)
    return vit
