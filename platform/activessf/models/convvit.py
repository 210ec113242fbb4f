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

A timm backbone like timm's own (``forward_features`` gives (N, H/16, W/16, C3), NHWC as
timm's Swin; ``features_only=True`` gives the three stage maps at strides 4, 8, 16;
``forward_intermediates``; TorchScript and FX). Any input whose sides are multiples of 16
works, whatever ``img_size``: the fixed position embedding is resampled (bicubic, as
timm's ViTs) to the input's token grid; at ``img_size`` itself nothing changes. timm's
own model tests (``tests/test_models.py``) pass for it; two of them never select it,
because they only take models of timm's modules (``test_model_forward_intermediates*``).
"""

# no `from __future__ import annotations`: FX would copy the string annotations into the traced
# code, which TorchScript then cannot resolve (timm's FX + TorchScript test)
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import (
    DropPath,
    LayerNorm2d,
    get_device_dtype,
    resample_abs_pos_embed,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._input import update_model_input_size
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

    ``pos_embed`` is a (persistent) buffer: fixed sin-cos, in the state dict under the
    name it always had, but not a parameter (no optimiser state, no missing gradient).
    ``global_pool=""`` keeps the (N, H/16, W/16, C3) map (timm's convention).
    """

    def __init__(self, img_size: int | Sequence[int] = 224, dims: Sequence[int] = (256, 384, 768),
                 depths: Sequence[int] = (2, 2, 11), num_heads: int = 12, mlp_ratio: float = 4.0,
                 num_classes: int = 0, drop_path_rate: float = 0.0, in_chans: int = 3, global_pool: str = "avg",
                 device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        if len(dims) != 3 or len(depths) != 3:
            raise ValueError(f"ConvViT has 3 stages: dims {tuple(dims)} and depths {tuple(depths)} need 3 entries")
        check_global_pool(global_pool)
        self.grid = token_grid(img_size)
        self.img_size = self.grid * STRIDE
        self.in_chans, self.global_pool, self.output_fmt = in_chans, global_pool, "NHWC"
        self.num_features = self.head_hidden_size = self.embed_dim = dims[2]
        self.feature_info = [dict(num_chs=d, reduction=r, module=f"blocks{i + 1}")
                             for i, (d, r) in enumerate(zip(dims, (4, 8, 16)))]
        self.num_stages = 3  # lowered by prune_intermediate_layers
        # stochastic depth rising linearly over all blocks of all stages, as officially
        dpr1, dpr2, dpr3 = (d.tolist() for d in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")
                            .split(list(depths)))
        with torch.device(device) if device is not None else nullcontext():  # timm's device= (e.g. "meta")
            self.patch_embed1 = PatchEmbed(in_chans, dims[0], 4)
            self.blocks1 = nn.ModuleList([CBlock(dims[0], mlp_ratio, p) for p in dpr1])
            self.patch_embed2 = PatchEmbed(dims[0], dims[1], 2)
            self.blocks2 = nn.ModuleList([CBlock(dims[1], mlp_ratio, p) for p in dpr2])
            self.patch_embed3 = PatchEmbed(dims[1], dims[2], 2)
            self.patch_embed4 = nn.Linear(dims[2], dims[2])  # the stage-3 token projection, named as officially
            self.register_buffer("pos_embed", sincos_2d(dims[2], self.grid, cls_token=False))
            norm = partial(nn.LayerNorm, eps=1e-6)
            self.blocks3 = nn.ModuleList(
                [Block(dims[2], num_heads, mlp_ratio, qkv_bias=True, drop_path=p, norm_layer=norm) for p in dpr3])
            self.norm = norm(dims[2])
            self.apply(init_linear)
            self.reset_classifier(num_classes)
        if dtype is not None:
            self.to(dtype=dtype)

    # ---------------------------------------------------------------- stages
    def forward_stage1(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C1, H/4, W/4); ``mask`` (N, 1, H/4, W/4), 1 = visible."""
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
        """Stage 3's embedding: (N, C2, H/8, W/8) -> (N, L, C3) with position embedding (resampled
        to the token grid when it is not ``img_size``'s)."""
        x = self.patch_embed3(x)
        h, w = x.shape[2], x.shape[3]  # indexed, not unpacked: FX cannot iterate a traced shape
        x = self.patch_embed4(x.flatten(2).transpose(1, 2))  # (N, L, C3), row-major like patchify
        return x + resample_abs_pos_embed(self.pos_embed, [h, w], [self.grid, self.grid], num_prefix_tokens=0)

    def forward_stage3(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C2, H/8, W/8) -> stage-3 tokens as a map (N, H/16, W/16, C3), before ``norm``."""
        h, w = x.shape[2] // 2, x.shape[3] // 2
        x = self.embed_tokens(x)
        for blk in self.blocks3:
            x = blk(x)
        return x.reshape(x.shape[0], h, w, x.shape[2])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> normalised stage-3 tokens as a map (N, H/16, W/16, C3), no masking."""
        x = self.forward_stage1(x)
        if self.num_stages > 1:
            x = self.forward_stage2(x)
        if self.num_stages > 2:
            return self.norm(self.forward_stage3(x))
        return x.permute(0, 2, 3, 1)  # pruned to stage 1 or 2 (features_only): still NHWC

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Map (N, h, w, C3) -> logits (N, num_classes), or pooled features (N, C3) without a head."""
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---------------------------------------------------------------- timm interface
    def forward_intermediates(
        self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's feature API: the outputs of stages ``indices`` (0, 1, 2: strides 4, 8, 16; an int n
        takes the last n, None all), NCHW or NHWC; ``norm`` applies ``norm`` to stage 3's.
        Returns the intermediates, or (``forward_features``' output, intermediates)."""
        assert output_fmt in ("NCHW", "NHWC"), "output_fmt must be NCHW or NHWC"
        take, max_index = feature_take_indices(self.num_stages, indices)
        last = self.num_stages - 1 if torch.jit.is_scripting() or not stop_early else max_index
        feats: List[torch.Tensor] = []
        x = self.forward_stage1(x)
        if 0 in take:
            feats.append(x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1))
        if last >= 1:
            x = self.forward_stage2(x)
            if 1 in take:
                feats.append(x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1))
        if last < 2:
            if intermediates_only:
                return feats
            return x.permute(0, 2, 3, 1), feats
        y = self.forward_stage3(x)  # NHWC
        x = self.norm(y)
        if 2 in take:
            y = x if norm else y
            feats.append(y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return feats
        return x, feats

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` (and ``norm``/the head), as timm models do for
        ``features_only``; returns the absolute indices kept."""
        take, max_index = feature_take_indices(self.num_stages, indices)
        if max_index < 2:
            self.patch_embed3, self.patch_embed4, self.blocks3 = nn.Identity(), nn.Identity(), nn.ModuleList()
            prune_norm = True
            if max_index < 1:
                self.patch_embed2, self.blocks2 = nn.Identity(), nn.ModuleList()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        self.num_stages = max_index + 1
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head or max_index < 2:
            self.reset_classifier(0, "")
        return take

    def set_input_size(self, img_size: Optional[int | Sequence[int]] = None) -> None:
        """Resample the fixed position embedding to ``img_size`` (a multiple of 16) for good; a
        forward at that size gives the same as before, only without resampling each time."""
        if img_size is None:
            return
        grid = token_grid(img_size)
        if grid != self.grid:
            self.pos_embed = resample_abs_pos_embed(self.pos_embed, [grid, grid], [self.grid, self.grid],
                                                    num_prefix_tokens=0)
            self.grid, self.img_size = grid, grid * STRIDE
        update_model_input_size(self, self.img_size)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh ``fc_norm`` + ``head`` (MAE's fine-tuning init), or none for ``num_classes=0``;
        ``global_pool`` "avg" or "" (no pooling), unchanged if None."""
        if global_pool is not None:
            check_global_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        self.fc_norm = nn.LayerNorm(self.num_features, eps=1e-6, **dd) if num_classes else nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes else nn.Identity()
        if num_classes:
            trunc_normal_(self.head.weight, std=2e-5)
            nn.init.zeros_(self.head.bias)
        self.fc_norm.train(self.training)
        self.head.train(self.training)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()  # pos_embed is a buffer, not a parameter

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm parameter groups, for layer-wise lr decay; one per block whatever ``coarse``.

        In order: ``patch_embed1``; each CBlock of stage 1; each CBlock of stage 2, the
        first together with ``patch_embed2``; each Block of stage 3, the first together
        with the stage-3 embedding (``patch_embed3``, ``patch_embed4``) and
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


def check_global_pool(global_pool: str) -> None:
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool must be 'avg' (mean of the tokens) or '' (none), got {global_pool!r}")


def init_linear(m: nn.Module) -> None:
    """Linear layers as in MAE and the official ConvMAE (xavier, as the JAX ViT); convolutions keep torch's."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: ConvViT) -> Dict[str, torch.Tensor]:
    """An encoder state dict saved at another ``img_size``, fitted to ``model``: ``pos_embed`` resampled
    to its token grid, as a forward at that size would. Every other key is unchanged (and always was).

        model.load_state_dict(checkpoint_filter_fn(torch.load(path, weights_only=True), model), strict=False)
    """
    out = dict(state_dict)
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        old = round(pos.shape[1] ** 0.5)
        out["pos_embed"] = resample_abs_pos_embed(pos, [model.grid, model.grid], [old, old], num_prefix_tokens=0)
    return out


default_cfgs = generate_default_cfgs({
    TIMM_NAME: {
        "url": "", "num_classes": 0, "input_size": (3, 224, 224), "pool_size": (14, 14), "crop_pct": 1.0,
        "interpolation": "bicubic", "first_conv": "patch_embed1.proj",
        # what fine-tuning adds to an exported encoder (timm allows a tuple, as for DeiT's two heads)
        "classifier": ("head", "fc_norm"),
        "paper_ids": "arXiv:2205.03892", "origin_url": "https://github.com/Alpha-VL/ConvMAE",
    },
})


@register_model
def convvit_activessf(pretrained: bool = False, **kwargs) -> ConvViT:
    """ConvViT of any size: ``img_size, dims, depths, num_heads, mlp_ratio, num_classes, drop_path_rate,
    global_pool`` (``convvit_kwargs(size, img_size)`` gives those of a named size). No weights to download.

    ``features_only=True`` (``out_indices`` of stages 0, 1, 2) wraps it in timm's FeatureGetterNet;
    its ``pretrained_cfg`` has the ``input_size`` and ``pool_size`` of ``img_size``.
    """
    if pretrained:
        raise ValueError(f"{TIMM_NAME} has no downloadable weights: create it with pretrained=False and "
                         "load a state dict, e.g. a ConvMAE encoder.pt")
    grid = token_grid(kwargs.get("img_size", 224))
    overlay = {"input_size": (kwargs.get("in_chans", 3), grid * STRIDE, grid * STRIDE), "pool_size": (grid, grid)}
    overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
    out_indices = kwargs.pop("out_indices", (0, 1, 2))
    return build_model_with_cfg(ConvViT, TIMM_NAME, pretrained=False, pretrained_cfg_overlay=overlay,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)
