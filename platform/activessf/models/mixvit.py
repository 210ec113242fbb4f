"""MixMIM's hierarchical encoder (Liu, Chen et al., "MixMAE", CVPR 2023; code Sense-X/MixMIM), in timm.

    model = timm.create_model("mixmim_activessf", num_classes=5, **SIZES["base"].timm_kwargs(224))

A Swin-like four-stage transformer: 4x4 conv patch embedding (stride 4) + LayerNorm, a fixed 2-D
sin-cos position embedding at stage-1 resolution, then per stage timm ``Block``s doing window
attention, with a 2x2 patch merging (Linear 4C -> 2C, as Swin) in front of stages 2-4. Channels
C, 2C, 4C, 8C; total stride 32; final LayerNorm; global average pool; ``head``.

Attention can be restricted to tokens of one *group* (MixMIM: the source image of each token of
a mixed input, Sec. 3.1 of the paper): ``forward_features(imgs, group)`` with ``group`` of shape
(N or 1, H/32, W/32) names the source of every 32x32-px block. It is repeated to the finer
stages, so each 2x2 patch merging only merges tokens of one source, and inside each window
token a attends to token b only when both have the same group. Without ``group`` this is plain
window attention, as used for fine-tuning.

Simplifications, each on purpose:
- no shifted windows. The official MixMIM encoder has none either (it enlarges the windows
  instead: 14, 14, 14, 7 at 224 px); against Swin it is a simplification.
- no relative position bias inside the windows (timm's ``Block`` has none; the official code
  has Swin's bias table, about 0.2M parameters in MixMIM-B); the fixed absolute sin-cos
  embedding carries position.
- a window that does not tile its stage grid is lowered to the largest divisor of the grid
  (Swin pads instead): at 224 px the windows are exactly (14, 14, 14, 7); at 64 px (8, 8, 4, 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import PatchEmbed
from timm.models import register_model
from timm.models.swin_transformer import PatchMerging, window_partition, window_reverse
from timm.models.vision_transformer import Block
from torch import nn

from .posembed import sincos_2d

STRIDE = 32  # patch embedding 4 x three 2x2 mergings
WINDOW_SIZE = (14, 14, 14, 7)  # the paper's windows at 224 px


@dataclass(frozen=True)
class MixViTSize:
    embed_dim: int  # stage-1 channels; stage i has embed_dim * 2**i
    depths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int]
    decoder_dim: int  # MixMIM's MAE-style decoder
    decoder_depth: int
    decoder_heads: int

    def timm_kwargs(self, img_size: int) -> dict:
        """JSON-ready kwargs of ``timm.create_model("mixmim_activessf", ...)`` for this size."""
        return {"img_size": img_size, "embed_dim": self.embed_dim, "depths": list(self.depths),
                "num_heads": list(self.heads), "window_size": list(WINDOW_SIZE)}


SIZES: dict[str, MixViTSize] = {
    # ours: micro for tests and CPU demos, mini for CPU experiments, tiny/small on Swin-T/S layouts
    "micro": MixViTSize(16, (1, 1, 1, 1), (1, 2, 2, 4), 32, 1, 2),
    "mini": MixViTSize(32, (1, 1, 3, 1), (1, 2, 4, 8), 64, 1, 4),
    "tiny": MixViTSize(96, (2, 2, 6, 2), (3, 6, 12, 24), 256, 2, 8),
    "small": MixViTSize(96, (2, 2, 18, 2), (3, 6, 12, 24), 256, 4, 8),
    # the paper's MixMIM-B and MixMIM-L (decoder 512 wide, 8 blocks, 16 heads as the official code)
    "base": MixViTSize(128, (2, 2, 18, 2), (4, 8, 16, 32), 512, 8, 16),
    "large": MixViTSize(192, (2, 2, 18, 2), (6, 12, 24, 48), 512, 8, 16),
}


def check_img_size(img_size: int) -> None:
    """Raise unless ``img_size`` is an int multiple of the encoder's total stride (32)."""
    if not isinstance(img_size, int) or img_size <= 0 or img_size % STRIDE:
        raise ValueError(f"MixMIM's encoder has a total stride of {STRIDE}: img_size must be a positive multiple "
                         f"of {STRIDE} (e.g. 224 or 256), got {img_size!r}")


def fit_window(grid: int, window: int) -> int:
    """The window side on a ``grid`` x ``grid`` stage: ``window`` clipped to the grid, then lowered to
    the largest divisor of the grid so that the windows tile it."""
    return max(d for d in range(1, min(window, grid) + 1) if grid % d == 0)


def upsample_nearest(grid_map: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest repeat of a per-token map to a ``factor`` times finer grid: (N, h, w) -> (N, h*f, w*f)."""
    return grid_map.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def same_group_mask(group: torch.Tensor, window: int) -> torch.Tensor:
    """Attention mask keeping each window's attention inside one group.

    group: (N, H, W) group id of every token -> bool (N * nW, 1, w*w, w*w), True = may attend, in the
    order of ``window_partition``; broadcast over the heads (timm's Attention / SDPA semantics).
    """
    g = window_partition(group.unsqueeze(-1), (window, window)).flatten(1)  # (N*nW, w*w)
    return (g.unsqueeze(2) == g.unsqueeze(1)).unsqueeze(1)


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform Linear weights and zero biases (the official MixMIM and MAE init)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MixViTStage(nn.Module):
    """An optional 2x2 patch merging, then ``len(drop_path)`` timm Blocks over non-overlapping windows."""

    def __init__(self, dim_in: int, dim: int, num_heads: int, grid: int, window: int,
                 drop_path: Sequence[float], downsample: bool, mlp_ratio: float = 4.0):
        super().__init__()
        self.downsample = PatchMerging(dim_in, dim) if downsample else nn.Identity()
        self.window = fit_window(grid, window)
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=p) for p in drop_path])

    def forward(self, x: torch.Tensor, group: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (N, H_in, W_in, C_in) -> (N, H, W, C); group: (N or 1, H, W) at this stage's grid, or None."""
        x = self.downsample(x)  # (N, H, W, C)
        n, h, w, c = x.shape
        win = (self.window, self.window)
        # without shifts the windows are the same for every block, and everything but attention is
        # per token: partition once per stage rather than once per block
        tokens = window_partition(x, win).flatten(1, 2)  # (N * nW, w*w, C)
        mask = None if group is None else same_group_mask(group.expand(n, h, w), self.window)
        for blk in self.blocks:
            tokens = blk(tokens, attn_mask=mask)
        return window_reverse(tokens.view(-1, *win, c), win, h, w)


class MixViT(nn.Module):
    """MixMIM's encoder with a timm-style interface (``forward_features``, ``forward_head``, ``head``)."""

    def __init__(
        self,
        img_size: int = 224,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: Sequence[int] = WINDOW_SIZE,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
    ):
        super().__init__()
        check_img_size(img_size)
        if not len(depths) == len(num_heads) == len(window_size) == 4:
            raise ValueError(f"depths, num_heads and window_size need one entry per stage (4), got "
                             f"{list(depths)}, {list(num_heads)}, {list(window_size)}")
        self.img_size, self.num_classes = img_size, num_classes
        self.num_features = self.head_hidden_size = embed_dim * 8
        self.patch_embed = PatchEmbed(img_size, 4, in_chans, embed_dim, norm_layer=nn.LayerNorm, output_fmt="NHWC")
        grid = img_size // 4
        pos = sincos_2d(embed_dim, grid, cls_token=False).view(1, grid, grid, embed_dim)
        self.register_buffer("pos_embed", pos, persistent=False)  # fixed: rebuilt from img_size, not exported
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth grows with depth
        dims = [embed_dim * 2**i for i in range(4)]
        self.stages = nn.ModuleList()
        for i in range(4):
            first = sum(depths[:i])
            self.stages.append(MixViTStage(dims[max(i - 1, 0)], dims[i], num_heads[i], grid >> i, window_size[i],
                                           dpr[first:first + depths[i]], downsample=i > 0, mlp_ratio=mlp_ratio))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = self.default_cfg = {  # what timm's helpers and finetune/model.py read
            "architecture": "mixmim_activessf", "num_classes": num_classes,
            "input_size": (in_chans, img_size, img_size), "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
            "first_conv": "patch_embed.proj", "classifier": "head"}
        self.apply(init_weights)

    # ------------------------------------------------------------ features
    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> stage-1 tokens with position (N, H/4, W/4, C)."""
        return self.patch_embed(imgs) + self.pos_embed

    def forward_tokens(self, x: torch.Tensor, group: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Stages and final norm. x: (N, H/4, W/4, C) from ``embed``; group: (N or 1, H/32, W/32) source id
        of each 32x32-px block, or None for unrestricted window attention -> (N, H/32, W/32, 8C)."""
        for i, stage in enumerate(self.stages):
            x = stage(x, None if group is None else upsample_nearest(group, 2 ** (len(self.stages) - 1 - i)))
        return self.norm(x)

    def forward_features(self, imgs: torch.Tensor, group: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, 3, H, W) -> (N, H/32, W/32, 8C)."""
        return self.forward_tokens(self.embed(imgs), group)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(N, h, w, 8C) -> global average pool (N, 8C) -> head (N, num_classes) unless ``pre_logits``."""
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(imgs))

    # ------------------------------------------------------------ timm hooks
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer-wise lr decay layers, in timm's format (``timm.models._manipulate.group_parameters``).

        Patch embedding is layer 0; block j of stage s is layer sum(depths[:s]) + j + 1; a stage's patch
        merging shares the layer of the stage's first block (as the official ``get_layer_id_for_mixmim``);
        the final norm and the head are the last layer (MAE/BEiT). Per block even when ``coarse``:
        ``layer_decay_groups`` asks for coarse groups on every model without a ``blocks`` attribute.
        """
        return dict(
            stem=r"^patch_embed",
            blocks=[(r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)],
            head=r"^norm|^head",
        )


@register_model
def mixmim_activessf(pretrained: bool = False, **kwargs) -> MixViT:
    """MixMIM's encoder (default: MixMIM-B at 224 px). No published weights: load an exported encoder."""
    if pretrained:
        raise ValueError("mixmim_activessf has no downloadable weights: create it with pretrained=False "
                         "and load a pretrained encoder's state dict (a `pretrain` stage's encoder.pt)")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return MixViT(**kwargs)
