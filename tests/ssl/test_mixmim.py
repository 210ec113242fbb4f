"""MixMIM on tiny inputs: masks, mixing, source-restricted attention, no leakage, learning, export to timm."""

import json

import pytest
import timm
import torch
import torch.nn.functional as F

import activessf.models.mixvit  # noqa: F401  (registers mixmim_activessf with timm)
import activessf.ssl.mixmim  # noqa: F401  (registers "mixmim" until ssl/__init__ imports it)
from activessf.config import FinetuneConfig, PretrainConfig
from activessf.finetune.model import build_classifier, layer_decay_groups
from activessf.models.mixvit import fit_window, upsample_nearest
from activessf.ssl import METHODS, build_method
from activessf.ssl.mixmim import MixMIM, mix, random_block_mask, unmix

TINY = dict(method="mixmim", model="micro", image_size=64, epochs=1, warmup_epochs=0)


def cfg(**kw) -> PretrainConfig:
    return PretrainConfig(**{**TINY, **kw})


def batch(n=4, size=64, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def pixel_mask(mask: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, L) block mask -> (1, 1, 32*grid, 32*grid) in pixels."""
    return upsample_nearest(mask.view(1, grid, grid), 32).unsqueeze(1)


def unrestricted_encoder(m: MixMIM, imgs, mask):
    """forward_encoder without the same-source attention mask: what MixMIM must not do."""
    group = mask.view(1, m.grid, m.grid)
    x = mix(m.mixvit.embed(imgs), upsample_nearest(group, 8).unsqueeze(-1))
    return m.mixvit.forward_tokens(x, group=None).flatten(1, 2)


def test_registry_and_interface():
    m = build_method(cfg())
    assert "mixmim" in METHODS and isinstance(m, MixMIM)
    assert m.views == 1 and m.augmentation == "mae" and m.no_weight_decay() == {"mask_token"}
    spec = MixMIM.encoder_spec(cfg())
    assert json.loads(json.dumps(spec)) == spec and spec["timm_name"] == "mixmim_activessf"


def test_output_shapes_finite_loss_and_reconstruction():
    m = build_method(cfg())
    imgs = batch(4)
    out = m([imgs])
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.extras["pred"].shape == (4, 4, 32 * 32 * 3) and out.extras["mask"].shape == (4, 4)
    assert out.extras["images"] is imgs
    mixed, recon = m.reconstruction(imgs, out.extras["pred"], out.extras["mask"])
    assert mixed.shape == recon.shape == imgs.shape
    pm = pixel_mask(out.extras["mask"][:1], 2)  # the visualised input is the mixed image
    assert torch.equal(mixed, imgs * (1 - pm) + imgs.flip(0) * pm)


def test_patchify_roundtrip():
    m = build_method(cfg(image_size=96))
    imgs = batch(2, 96)
    assert m.patchify(imgs).shape == (2, 9, 32 * 32 * 3)
    assert torch.equal(m.unpatchify(m.patchify(imgs)), imgs)


@pytest.mark.parametrize("grid,ratio", [(2, 0.5), (3, 0.5), (7, 0.5), (7, 0.3)])
def test_block_mask_ratio_is_exact_and_stages_agree(grid, ratio):
    torch.manual_seed(grid)
    mask = random_block_mask(grid, ratio)
    assert mask.shape == (1, grid * grid) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum().item() == int(grid * grid * ratio)
    m4 = mask.view(1, grid, grid)
    for factor in (2, 4, 8):  # stages 3, 2, 1: the official code's nearest interpolation
        up = upsample_nearest(m4, factor)
        assert torch.equal(up, F.interpolate(m4[None], scale_factor=factor, mode="nearest")[0])
        assert up.mean().item() == pytest.approx(mask.mean().item())


def test_mixing_is_invertible_and_pairs_flipped_images():
    x = torch.randn(5, 8, 8, 4)  # odd batch: the middle image is its own partner
    m = (torch.rand(1, 8, 8, 1) < 0.5).float()
    mixed = mix(x, m)
    assert torch.equal(unmix(mixed, m), x)
    assert torch.equal(mixed[0] * m[0], x[4] * m[0]) and torch.equal(mixed[0] * (1 - m[0]), x[0] * (1 - m[0]))
    assert torch.equal(mixed[2], x[2])


def test_attention_stays_within_each_source_image():
    torch.manual_seed(0)
    m = build_method(cfg(image_size=96)).eval()  # windows (12, 12, 6, 3) straddle the 32-px blocks
    imgs, mask = batch(2, 96), random_block_mask(3, 0.5)
    own = mask[0] == 0  # positions of mixed sample 0 that hold image 0's tokens
    partner_changed = imgs.clone()
    partner_changed[1] = batch(1, 96, seed=7)[0]
    with torch.no_grad():
        z, z_partner = m.forward_encoder(imgs, mask), m.forward_encoder(partner_changed, mask)
        free, free_partner = unrestricted_encoder(m, imgs, mask), unrestricted_encoder(m, partner_changed, mask)
        own_changed = imgs + (1 - pixel_mask(mask, 3)) * 0.5 * torch.eye(2)[:, 0].view(2, 1, 1, 1)
        z_own = m.forward_encoder(own_changed, mask)
    assert torch.allclose(z_partner[0, own], z[0, own], atol=1e-5)
    assert not torch.allclose(z_partner[0, ~own], z[0, ~own], atol=1e-3)  # the partner's own tokens moved
    assert not torch.allclose(free_partner[0, own], free[0, own], atol=1e-3)  # unrestricted: they leak
    assert not torch.allclose(z_own[0, own], z[0, own], atol=1e-3)  # image 0's visible pixels do count


@pytest.mark.parametrize("n,size", [(2, 64), (3, 96)])
def test_each_half_of_an_image_is_predicted_from_its_other_half_only(n, size):
    """pred[i] where image i was hidden in its own sample (m = 1) depends only on image i's blocks at
    m = 0, and vice versa: no leakage, and the right partner copy is unmixed. Covers the middle image
    of an odd batch (its own partner)."""
    torch.manual_seed(0)
    m = build_method(cfg(image_size=size)).eval()
    grid = size // 32
    imgs, mask = batch(n, size), random_block_mask(grid, 0.5)
    hidden, pm = mask[0] == 1, pixel_mask(mask, grid)[0]
    with torch.no_grad():
        pred = m.forward_decoder(m.forward_encoder(imgs, mask), mask)
        for i in range(n):
            for keep, fixed in ((1 - pm, hidden), (pm, ~hidden)):
                changed = batch(n, size, seed=10 + i)  # every other image replaced ...
                changed[i] = imgs[i] * keep + changed[i] * (1 - keep)  # ... and image i outside ``keep``
                pred_changed = m.forward_decoder(m.forward_encoder(changed, mask), mask)
                assert torch.allclose(pred_changed[i, fixed], pred[i, fixed], atol=1e-5), i
                assert not torch.allclose(pred_changed[i, ~fixed], pred[i, ~fixed], atol=1e-3), i


def test_loss_decreases_on_a_fixed_batch():
    """On per-patch normalised targets, predicting each patch's mean scores 1.0: going well below it
    means the decoder fits the images' content, not just their average colour."""
    torch.manual_seed(0)
    m = build_method(cfg(options={"norm_pix_loss": True}))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    imgs = batch(4)
    losses = []
    for _ in range(40):
        torch.manual_seed(1)  # the same mask every step: a fixed problem to fit
        loss = m([imgs]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.95 and losses[-1] < 0.85, losses[::8]


def test_exported_encoder_loads_into_timm_and_matches():
    torch.manual_seed(0)
    m = build_method(cfg())
    spec = MixMIM.encoder_spec(cfg())
    enc = timm.create_model(spec["timm_name"], pretrained=False, num_classes=0, **spec["timm_kwargs"])
    enc.load_state_dict(m.export_encoder(), strict=True)
    x = batch(2)
    feats = enc.eval()(x)
    assert feats.shape == (2, 8 * 16)
    assert torch.allclose(feats, m.encoder().eval()(x), atol=1e-5)


def test_classifier_loads_the_export(tmp_path):
    torch.manual_seed(0)
    m = build_method(cfg())
    spec = MixMIM.encoder_spec(cfg())
    clf = timm.create_model("mixmim_activessf", pretrained=False, num_classes=5, drop_path_rate=0.1,
                            **spec["timm_kwargs"])
    missing, unexpected = clf.load_state_dict(m.export_encoder(), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected
    assert clf.default_cfg["classifier"] == "head" and clf(batch(2)).shape == (2, 5)
    # the fine-tuning stage's path: a `pretrain` output directory
    torch.save(m.export_encoder(), tmp_path / "encoder.pt")
    (tmp_path / "encoder.json").write_text(json.dumps({"method": "mixmim", **spec}))
    model, info = build_classifier(FinetuneConfig(init=str(tmp_path)), 5)
    assert info["init"] == "pretrained" and model(batch(2)).shape == (2, 5)
    assert torch.equal(model.stages[2].blocks[0].attn.qkv.weight, m.mixvit.stages[2].blocks[0].attn.qkv.weight)


def test_layer_decay_scales_increase_with_block_depth():
    model = timm.create_model("mixmim_activessf", num_classes=5, img_size=64, embed_dim=16, depths=(1, 2, 2, 1),
                              num_heads=(1, 2, 2, 4))
    scales = {n: g["lr_scale"] for g in layer_decay_groups(model, 0.05, 0.75) for n in g["names"]}
    blocks = [f"stages.{s}.blocks.{j}.attn.qkv.weight" for s, d in enumerate((1, 2, 2, 1)) for j in range(d)]
    # patch embedding is layer 0, the 6 blocks layers 1-6, final norm and head layer 7
    assert scales["patch_embed.proj.weight"] == pytest.approx(0.75**7)
    assert [scales[b] for b in blocks] == pytest.approx([0.75 ** (7 - i) for i in range(1, 7)])
    for s in (1, 2, 3):  # patch merging shares its stage's first block's layer
        assert scales[f"stages.{s}.downsample.reduction.weight"] == scales[f"stages.{s}.blocks.0.attn.qkv.weight"]
    assert scales["head.weight"] == 1.0 and scales["norm.weight"] == 1.0


def test_windows_tile_every_stage():
    assert [fit_window(g, w) for g, w in zip((56, 28, 14, 7), (14, 14, 14, 7))] == [14, 14, 14, 7]
    assert [fit_window(g, w) for g, w in zip((16, 8, 4, 2), (14, 14, 14, 7))] == [8, 8, 4, 2]


def test_clear_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        build_method(cfg(image_size=48))
    with pytest.raises(ValueError, match="multiple of 32"):
        timm.create_model("mixmim_activessf", img_size=80, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
    with pytest.raises(ValueError, match="blocks of 32x32 px"):
        build_method(cfg(image_size=32))  # one block: nothing to mix at ratio 0.5
    with pytest.raises(ValueError, match="batch of 1"):
        build_method(cfg())([batch(1)])
    with pytest.raises(ValueError, match="no downloadable weights"):
        timm.create_model("mixmim_activessf", pretrained=True)
