"""Layer-wise lr decay: each ViT block and each ResNet stage gets decay ** (distance from the head)."""

import pytest

from activessf.config import FinetuneConfig
from activessf.finetune.model import build_classifier, layer_decay_groups

VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2)


def scales(model, decay=0.75):
    out = {}
    for g in layer_decay_groups(model, 0.05, decay):
        for n in g["names"]:
            out[n] = g["lr_scale"]
    return out


def test_vit_scales_by_block_depth():
    model, info = build_classifier(FinetuneConfig(backbone="vit_tiny_patch16_224", backbone_kwargs=VIT), 5)
    s = scales(model)
    # embeddings are layer 0, block i is layer i + 1, the head is layer depth + 1 = 4
    assert s["patch_embed.proj.weight"] == pytest.approx(0.75**4) and s["cls_token"] == pytest.approx(0.75**4)
    for i in range(3):
        assert s[f"blocks.{i}.attn.qkv.weight"] == pytest.approx(0.75 ** (3 - i))
    assert s["head.weight"] == 1.0 and info["num_classes"] == 5
    assert s["norm.weight"] == 1.0  # MAE's recipe: the final norm learns at the full rate, like the head


def test_resnet_scales_by_stage():
    model, _ = build_classifier(FinetuneConfig(backbone="resnet18", drop_path=0.0), 4)
    s = scales(model, 0.5)
    assert s["conv1.weight"] == pytest.approx(0.5**5)
    for stage in range(1, 5):
        assert s[f"layer{stage}.0.conv1.weight"] == pytest.approx(0.5 ** (5 - stage))
    assert s["fc.weight"] == 1.0


def test_no_weight_decay_on_biases_and_norms():
    model, _ = build_classifier(FinetuneConfig(backbone="vit_tiny_patch16_224", backbone_kwargs=VIT), 3)
    wd = {n: g["weight_decay"] for g in layer_decay_groups(model, 0.05, 0.75) for n in g["names"]}
    assert wd["blocks.0.attn.qkv.weight"] == 0.05 and wd["blocks.0.attn.qkv.bias"] == 0.0
    assert wd["blocks.0.norm1.weight"] == 0.0 and wd["pos_embed"] == 0.0


def test_a_pretrained_encoder_sets_the_fine_tuning_input_size(tmp_path):
    """A ViT pretrained at 64 px fine-tunes at 64 px whatever finetune.image_size says (its position
    embedding fixes the size); without an encoder the setting stands."""
    import json

    from activessf.config import FinetuneConfig
    from activessf.finetune.model import at_encoder_size

    (tmp_path / "encoder.json").write_text(json.dumps({"image_size": 64, "timm_name": "vit_tiny_patch16_224"}))
    assert at_encoder_size(FinetuneConfig(init=str(tmp_path), image_size=224)).image_size == 64
    assert at_encoder_size(FinetuneConfig(image_size=96)).image_size == 96


def test_what_timms_param_groups_layer_decay_would_change():
    """Why training/optim.py keeps its own groups: timm's public function agrees on weight decay and on
    every ViT layer but the final norm (last block's rate, not the head's), and splits a ResNet per block
    rather than per stage. If timm's grouping comes to equal ours, this fails: switch to it then."""
    from timm.optim import param_groups_layer_decay

    def timm_groups(model):
        names = {id(p): n for n, p in model.named_parameters()}
        skip = getattr(model, "no_weight_decay", set)()
        groups = param_groups_layer_decay(model, 0.05, no_weight_decay_list=skip, layer_decay=0.75)
        return {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}

    def ours(model):
        groups = layer_decay_groups(model, 0.05, 0.75)
        return {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}

    vit, _ = build_classifier(FinetuneConfig(backbone="vit_tiny_patch16_224", backbone_kwargs=VIT), 3)
    a, b = ours(vit), timm_groups(vit)
    assert {n: v[1] for n, v in a.items()} == {n: v[1] for n, v in b.items()}  # the same weight decay
    differ = {n for n in a if a[n][0] != pytest.approx(b[n][0])}
    assert differ == {"norm.weight", "norm.bias"} and b["norm.weight"][0] == pytest.approx(0.75)
    resnet, _ = build_classifier(FinetuneConfig(backbone="resnet18", drop_path=0.0), 4)
    a, b = ours(resnet), timm_groups(resnet)
    assert len({v[0] for v in a.values()}) == 6 and len({v[0] for v in b.values()}) > 6  # stages vs blocks
