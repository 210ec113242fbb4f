"""ConvViT, ConvMAE's hybrid convolution-transformer encoder (Gao et al., 2022, arXiv 2205.03892).

Three stages (the paper's "Hybrid Convolution-transformer Encoder", Fig. 1):

    stage 1  4x4/4 conv embed, CBlocks          (N, C1, H/4,  W/4)
    stage 2  2x2/2 conv embed, CBlocks          (N, C2, H/8,  W/8)
    stage 3  2x2/2 conv embed, Linear, ViT      (N, L = H/16 * W/16, C3)

A CBlock is a pre-norm transformer block whose attention is a 5x5 depthwise
convolution. Stage 3 adds a fixed 2-D sin-cos position embedding and has no
cls token; classification pools its tokens. Parameter names follow the
official code (Alpha-VL/ConvMAE). Registered with timm:

    timm.create_model("convvit_activessf", num_classes=5, **convvit_kwargs("base", 224))
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence

import torch
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block
from torch import nn

from .posembed import sincos_2d

STRIDE = 16  # total downsampling: 4 * 2 * 2; one stage-3 token per 16x16 pixels
TIMM_NAME = "convvit_activessf"


@dataclass(frozen=True)
class ConvViTSize:
    dims: tuple[int, int, int]  # channels of stages 1, 2, 3
    depths: tuple[int, int, int]  # CBlocks in stages 1 and 2, transformer Blocks in stage 3
    heads: int  # stage-3 attention heads
    decoder_dim: int  # ConvMAE's MAE-style decoder
    decoder_depth: int
    decoder_heads: int


SIZES: dict[str, ConvViTSize] = {
    # ours, not the paper's: tests, CPU experiments, small GPUs
    "micro": ConvViTSize((16, 32, 64), (1, 1, 2), 2, 32, 1, 2),
    "mini": ConvViTSize((32, 64, 128), (1, 1, 4), 4, 64, 1, 4),
    "tiny": ConvViTSize((64, 128, 192), (2, 2, 8), 3, 128, 2, 4),
    # the paper's encoders; decoders 512-d x 8 as MAE's (official base), small's is ours
    "small": ConvViTSize((128, 256, 384), (2, 2, 11), 6, 256, 4, 8),
    "base": ConvViTSize((256, 384, 768), (2, 2, 11), 12, 512, 8, 16),
    "large": ConvViTSize((384, 768, 1024), (2, 2, 23), 16, 512, 8, 16),
}


def token_grid(img_size: int | Sequence[int]) -> int:
    """Side of the stage-3 token grid of a square ``img_size``; raises unless it is a multiple of 16."""
    side = img_size if isinstance(img_size, int) else int(img_size[0])
    if not isinstance(img_size, int) and any(int(s) != side for s in img_size):
        raise ValueError(f"ConvViT takes square images; got img_size={tuple(img_size)}")
    if side <= 0 or side % STRIDE:
        raise ValueError(f"image size {side} is not a multiple of {STRIDE} (ConvViT's total stride "
                         f"4 x 2 x 2): use e.g. {max(STRIDE, side - side % STRIDE)}")
    return side // STRIDE


def convvit_kwargs(size: str, img_size: int) -> dict:
    """JSON-serialisable ``timm.create_model(TIMM_NAME, ...)`` kwargs of a named size."""
    s = SIZES[size]
    return {"img_size": img_size, "dims": list(s.dims), "depths": list(s.depths), "num_heads": s.heads,
            "mlp_ratio": 4.0}


class PatchEmbed(nn.Module):
    """Non-overlapping ``stride`` x ``stride`` conv, LayerNorm, GELU: (N, C_in, H, W) -> (N, C, H/s, W/s)."""

    def __init__(self, in_chans: int, dim: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, stride, stride=stride)
        self.norm = LayerNorm2d(dim, eps=1e-5)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.proj(x)))


class CMlp(nn.Module):
    """A transformer MLP as 1x1 convolutions: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CBlock(nn.Module):
    """A pre-norm transformer block with a 5x5 depthwise convolution for attention: (N, C, H, W) -> same.

    ``mask`` (N, 1, H, W), 1 = visible, zeroes the features entering the depthwise
    convolution at masked positions (the paper's masked convolution), so no visible
    position ever sees masked content: every other operation is per position.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-5)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)  # the name of the official code
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm2d(dim, eps=1e-5)
        self.mlp = CMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.conv1(self.norm1(x))
        if mask is not None:
            y = y * mask
        x = x + self.drop_path(self.conv2(self.attn(y)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvViT(nn.Module):
    """ConvMAE's encoder with a classifier: mean of the stage-3 tokens -> ``fc_norm`` -> ``head``.

    With ``num_classes=0`` there is neither (``forward`` returns the pooled
    features, (N, dims[2])): that is the encoder ConvMAE trains and exports, and a
    classifier loads it with only ``fc_norm`` and ``head`` missing (the
    ``classifier`` of its timm config). Unlike the official fine-tuning code, which
    deletes ``norm`` when it pools, the tokens keep their pretrained ``norm``: every
    exported weight is then used, and DDP needs no ``find_unused_parameters``.
    """

    def __init__(self, img_size: int | Sequence[int] = 224, dims: Sequence[int] = (256, 384, 768),
                 depths: Sequence[int] = (2, 2, 11), num_heads: int = 12, mlp_ratio: float = 4.0,
                 num_classes: int = 0, drop_path_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        if len(dims) != 3 or len(depths) != 3:
            raise ValueError(f"ConvViT has 3 stages: dims {tuple(dims)} and depths {tuple(depths)} need 3 entries")
        self.grid = token_grid(img_size)
        self.img_size = self.grid * STRIDE
        self.num_features = self.embed_dim = dims[2]
        # stochastic depth rising linearly over all blocks of all stages, as officially
        dpr1, dpr2, dpr3 = (d.tolist() for d in torch.linspace(0, drop_path_rate, sum(depths)).split(list(depths)))
        self.patch_embed1 = PatchEmbed(in_chans, dims[0], 4)
        self.blocks1 = nn.ModuleList([CBlock(dims[0], mlp_ratio, p) for p in dpr1])
        self.patch_embed2 = PatchEmbed(dims[0], dims[1], 2)
        self.blocks2 = nn.ModuleList([CBlock(dims[1], mlp_ratio, p) for p in dpr2])
        self.patch_embed3 = PatchEmbed(dims[1], dims[2], 2)
        self.patch_embed4 = nn.Linear(dims[2], dims[2])  # the stage-3 token projection, named as officially
        self.pos_embed = nn.Parameter(sincos_2d(dims[2], self.grid, cls_token=False), requires_grad=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks3 = nn.ModuleList(
            [Block(dims[2], num_heads, mlp_ratio, qkv_bias=True, drop_path=p, norm_layer=norm) for p in dpr3])
        self.norm = norm(dims[2])
        self.apply(init_linear)
        self.reset_classifier(num_classes)

    # ---------------------------------------------------------------- stages
    def forward_stage1(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C1, H/4, W/4); ``mask`` (N, 1, H/4, W/4), 1 = visible."""
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"input is {tuple(x.shape[-2:])} but this ConvViT was built for img_size="
                             f"{self.img_size} (its position embedding is a fixed {self.grid}x{self.grid} grid)")
        x = self.patch_embed1(x)
        for blk in self.blocks1:
            x = blk(x, mask)
        return x

    def forward_stage2(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, C1, H/4, W/4) -> (N, C2, H/8, W/8); ``mask`` (N, 1, H/8, W/8), 1 = visible."""
        x = self.patch_embed2(x)
        for blk in self.blocks2:
            x = blk(x, mask)
        return x

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 3's embedding: (N, C2, H/8, W/8) -> (N, L, C3) with position embedding."""
        x = self.patch_embed3(x).flatten(2).transpose(1, 2)  # (N, L, C3), row-major like patchify
        return self.patch_embed4(x) + self.pos_embed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> normalised stage-3 tokens (N, L, C3), no masking."""
        x = self.embed_tokens(self.forward_stage2(self.forward_stage1(x)))
        for blk in self.blocks3:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (N, L, C3) -> logits (N, num_classes), or pooled features (N, C3) without a head."""
        x = self.fc_norm(x.mean(dim=1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---------------------------------------------------------------- timm interface
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh ``fc_norm`` + ``head`` (MAE's fine-tuning init), or none for ``num_classes=0``."""
        self.num_classes = num_classes
        self.fc_norm = nn.LayerNorm(self.embed_dim, eps=1e-6) if num_classes else nn.Identity()
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes else nn.Identity()
        if num_classes:
            trunc_normal_(self.head.weight, std=2e-5)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm parameter groups, for layer-wise lr decay; one per block whatever ``coarse``.

        In order: ``patch_embed1``; each CBlock of stage 1; each CBlock of stage 2, the
        first together with ``patch_embed2``; each Block of stage 3, the first together
        with the stage-3 embedding (``patch_embed3``, ``patch_embed4``, ``pos_embed``) and
        the last with ``norm``; then, unmatched, ``fc_norm`` and ``head``. An embedding
        joins the first block of its stage as timm's Swin and ConvNeXt group a stage's
        downsampling. ``coarse`` is ignored because ``training.optim.layer_decay_groups``
        asks for coarse groups from any model without a ``blocks`` attribute.
        """
        return dict(
            stem=r"^patch_embed1\.",
            stage1=[(r"^blocks1\.(\d+)", None)],
            stage2=[(r"^patch_embed2\.", (0,)), (r"^blocks2\.(\d+)", None)],
            stage3=[(r"^patch_embed[34]\.|^pos_embed", (0,)), (r"^blocks3\.(\d+)", None), (r"^norm\.", (99999,))],
        )


def init_linear(m: nn.Module) -> None:
    """Linear layers as in MAE and the official ConvMAE (xavier, as the JAX ViT); convolutions keep torch's."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)


default_cfgs = generate_default_cfgs({
    TIMM_NAME: {
        "url": "", "num_classes": 0, "input_size": (3, 224, 224), "crop_pct": 1.0, "interpolation": "bicubic",
        "first_conv": "patch_embed1.proj",
        # what fine-tuning adds to an exported encoder (timm allows a tuple, as for DeiT's two heads)
        "classifier": ("head", "fc_norm"),
        "paper_ids": "arXiv:2205.03892", "origin_url": "https://github.com/Alpha-VL/ConvMAE",
    },
})


@register_model
def convvit_activessf(pretrained: bool = False, **kwargs) -> ConvViT:
    """ConvViT of any size: ``img_size, dims, depths, num_heads, mlp_ratio, num_classes, drop_path_rate``
    (``convvit_kwargs(size, img_size)`` gives those of a named size). No weights to download."""
    if pretrained:
        raise ValueError(f"{TIMM_NAME} has no downloadable weights: create it with pretrained=False and "
                         "load a state dict, e.g. a ConvMAE encoder.pt")
    return build_model_with_cfg(ConvViT, TIMM_NAME, pretrained=False, **kwargs)
