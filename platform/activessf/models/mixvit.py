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

A timm backbone like timm's Swin: ``forward_features`` gives (N, H/32, W/32, 8C) (NHWC),
``features_only=True`` the four stage maps at strides 4-32, ``forward_intermediates``,
TorchScript and FX. Any input whose sides are multiples of 32 works, whatever ``img_size``:
the windows are fitted to each stage grid at run time (the rule above) and the fixed
position embedding is resampled (bicubic, as timm's ViTs) to the input's stage-1 grid; at
``img_size`` nothing changes. Each stage is an FX leaf (``register_notrace_module``): its
window size depends on the input's shape. Mixing (``group``) exists only in pretraining:
timm's tests, which call ``forward``, cover the encoder without it; ``tests/ssl/test_mixmim.py``
covers the mixing. timm's own model tests (``tests/test_models.py``) pass for it; two never
select it, because they only take models of timm's modules (``test_model_forward_intermediates*``).
"""

# no `from __future__ import annotations`: FX would copy the string annotations into the traced
# code, which TorchScript then cannot resolve (timm's FX + TorchScript test)
from contextlib import nullcontext
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import PatchEmbed, get_device_dtype, resample_abs_pos_embed_nhwc
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
    register_notrace_module,
)
from timm.models._features import feature_take_indices
from timm.models._input import update_model_input_size
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
    best = 1
    for d in range(1, min(window, grid) + 1):  # a loop, not max(generator): TorchScript
        if grid % d == 0:
            best = d
    return best


def upsample_nearest(grid_map: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest repeat of a per-token map to a ``factor`` times finer grid: (N, h, w) -> (N, h*f, w*f)."""
    return grid_map.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def same_group_mask(group: torch.Tensor, window: Tuple[int, int]) -> torch.Tensor:
    """Attention mask keeping each window's attention inside one group.

    group: (N, H, W) group id of every token -> bool (N * nW, 1, wh*ww, wh*ww), True = may attend, in
    the order of ``window_partition``; broadcast over the heads (timm's Attention / SDPA semantics).
    """
    g = window_partition(group.unsqueeze(-1), window).flatten(1)  # (N*nW, wh*ww)
    return (g.unsqueeze(2) == g.unsqueeze(1)).unsqueeze(1)


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform Linear weights and zero biases (the official MixMIM and MAE init)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@register_notrace_module  # an FX leaf: its windows depend on the input's shape
class MixViTStage(nn.Module):
    """An optional 2x2 patch merging, then ``len(drop_path)`` timm Blocks over non-overlapping windows.

    ``window`` is the configured side; each forward fits it to the stage's grid (``fit_window``),
    so the windows at the built ``grid`` are those fixed at construction, and any other input
    size gets windows that tile its grid.
    """

    def __init__(self, dim_in: int, dim: int, num_heads: int, grid: int, window: int,
                 drop_path: Sequence[float], downsample: bool, mlp_ratio: float = 4.0):
        super().__init__()
        self.downsample = PatchMerging(dim_in, dim) if downsample else nn.Identity()
        self.window_size = window  # configured
        self.window = fit_window(grid, window)  # at the built size
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=p) for p in drop_path])

    def forward(self, x: torch.Tensor, group: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (N, H_in, W_in, C_in) -> (N, H, W, C); group: (N or 1, H, W) at this stage's grid, or None."""
        x = self.downsample(x)  # (N, H, W, C)
        n, h, w, c = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        win = (fit_window(h, self.window_size), fit_window(w, self.window_size))
        # without shifts the windows are the same for every block, and everything but attention is
        # per token: partition once per stage rather than once per block
        tokens = window_partition(x, win).flatten(1, 2)  # (N * nW, wh*ww, C)
        mask: Optional[torch.Tensor] = None
        if group is not None:
            mask = same_group_mask(group.expand(n, h, w), win)
        for blk in self.blocks:
            tokens = blk(tokens, attn_mask=mask)
        return window_reverse(tokens.view(-1, win[0], win[1], c), win, h, w)


class MixViT(nn.Module):
    """MixMIM's encoder with timm's model interface (``forward_features``, ``forward_head``, ``head``,
    ``forward_intermediates``, ``features_only``). ``global_pool=""`` keeps the (N, H/32, W/32, 8C) map."""

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
        global_pool: str = "avg",
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        check_img_size(img_size)
        check_global_pool(global_pool)
        if not len(depths) == len(num_heads) == len(window_size) == 4:
            raise ValueError(f"depths, num_heads and window_size need one entry per stage (4), got "
                             f"{list(depths)}, {list(num_heads)}, {list(window_size)}")
        self.img_size, self.num_classes, self.in_chans = img_size, num_classes, in_chans
        self.global_pool, self.output_fmt = global_pool, "NHWC"
        self.num_features = self.head_hidden_size = embed_dim * 8
        dims = [embed_dim * 2**i for i in range(4)]
        self.feature_info = [dict(num_chs=d, reduction=4 * 2**i, module=f"stages.{i}") for i, d in enumerate(dims)]
        grid = img_size // 4
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # stochastic depth grows
        with torch.device(device) if device is not None else nullcontext():  # timm's device= (e.g. "meta")
            self.patch_embed = PatchEmbed(img_size, 4, in_chans, embed_dim, norm_layer=nn.LayerNorm,
                                          output_fmt="NHWC", strict_img_size=False)
            pos = sincos_2d(embed_dim, grid, cls_token=False).view(1, grid, grid, embed_dim)
            self.register_buffer("pos_embed", pos, persistent=False)  # fixed: rebuilt from img_size, not exported
            self.stages = nn.ModuleList()
            for i in range(4):
                first = sum(depths[:i])
                self.stages.append(MixViTStage(dims[max(i - 1, 0)], dims[i], num_heads[i], grid >> i, window_size[i],
                                               dpr[first:first + depths[i]], downsample=i > 0, mlp_ratio=mlp_ratio))
            self.norm = nn.LayerNorm(self.num_features)
            self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
            self.apply(init_weights)
        if dtype is not None:
            self.to(dtype=dtype)

    # ------------------------------------------------------------ features
    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> stage-1 tokens with position (N, H/4, W/4, C); the position embedding is
        resampled to the grid when it is not ``img_size``'s."""
        x = self.patch_embed(imgs)
        return x + resample_abs_pos_embed_nhwc(self.pos_embed, [x.shape[1], x.shape[2]])

    def forward_tokens(self, x: torch.Tensor, group: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Stages and final norm. x: (N, H/4, W/4, C) from ``embed``; group: (N or 1, H/32, W/32) source id
        of each 32x32-px block, or None for unrestricted window attention -> (N, H/32, W/32, 8C)."""
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = stage(x, None if group is None else upsample_nearest(group, 1 << (last - i)))
        return self.norm(x)

    def forward_features(self, imgs: torch.Tensor, group: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, 3, H, W) -> (N, H/32, W/32, 8C)."""
        return self.forward_tokens(self.embed(imgs), group)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(N, h, w, 8C) -> global average pool (N, 8C) -> head (N, num_classes) unless ``pre_logits``."""
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(imgs))

    # ------------------------------------------------------------ timm hooks
    def forward_intermediates(
        self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's feature API: the outputs of stages ``indices`` (0-3: strides 4-32; an int n takes the
        last n, None all), NCHW or NHWC; ``norm`` applies the final norm to the last stage's.
        Returns the intermediates, or (``forward_features``' output, intermediates)."""
        assert output_fmt in ("NCHW", "NHWC"), "output_fmt must be NCHW or NHWC"
        take, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        feats: List[torch.Tensor] = []
        x = self.embed(x)
        for i, stage in enumerate(self.stages):
            if not torch.jit.is_scripting() and stop_early and i > max_index:
                break
            x = stage(x)
            if i in take:
                y = self.norm(x) if norm and i == last else x
                feats.append(y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return feats
        return (self.norm(x) if not stop_early or max_index == last else x), feats

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` (and ``norm``/the head), as timm's Swin does for
        ``features_only``; returns the absolute indices kept."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take

    def set_input_size(self, img_size: Optional[Union[int, Sequence[int]]] = None) -> None:
        """Resample the fixed position embedding to ``img_size`` (a multiple of 32; square) for good; a
        forward at that size gives the same as before (the windows are fitted at each forward anyway)."""
        if img_size is None:
            return
        if not isinstance(img_size, int):
            if len(set(img_size)) != 1:
                raise ValueError(f"MixMIM's encoder is built for square images; got img_size={tuple(img_size)}")
            img_size = int(img_size[0])
        check_img_size(img_size)
        self.pos_embed = resample_abs_pos_embed_nhwc(self.pos_embed, [img_size // 4, img_size // 4])
        self.img_size = img_size
        update_model_input_size(self, img_size)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh ``head`` (none for ``num_classes=0``); ``global_pool`` "avg" or "" (none), unchanged if None."""
        if global_pool is not None:
            check_global_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes else nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
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


def check_global_pool(global_pool: str) -> None:
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool must be 'avg' (mean of the tokens) or '' (none), got {global_pool!r}")


default_cfgs = generate_default_cfgs({
    "mixmim_activessf": {
        "url": "", "num_classes": 0, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 1.0,
        "interpolation": "bicubic", "first_conv": "patch_embed.proj", "classifier": "head",
        "paper_ids": "arXiv:2205.13137", "origin_url": "https://github.com/Sense-X/MixMIM",
    },
})


@register_model
def mixmim_activessf(pretrained: bool = False, **kwargs) -> MixViT:
    """MixMIM's encoder (default: MixMIM-B at 224 px). No published weights: load an exported encoder.

    ``features_only=True`` (``out_indices`` of stages 0-3) wraps it in timm's FeatureGetterNet; its
    ``pretrained_cfg`` has the ``input_size`` and ``pool_size`` of ``img_size``.
    """
    if pretrained:
        raise ValueError("mixmim_activessf has no downloadable weights: create it with pretrained=False "
                         "and load a pretrained encoder's state dict (a `pretrain` stage's encoder.pt)")
    img_size = kwargs.get("img_size", 224)
    check_img_size(img_size)
    side = img_size // STRIDE
    overlay = {"input_size": (kwargs.get("in_chans", 3), img_size, img_size), "pool_size": (side, side)}
    overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(MixViT, "mixmim_activessf", pretrained=False, pretrained_cfg_overlay=overlay,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)
