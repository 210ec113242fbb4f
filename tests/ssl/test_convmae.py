"""ConvMAE on tiny inputs: shapes, block-wise masks across stages, no leak from masked pixels,
learning, export to timm, fine-tuning from the export, layer-wise lr decay."""

import json

import pytest
import timm
import torch

import activessf.ssl.convmae  # noqa: F401  (registers "convmae")
from activessf.config import FinetuneConfig, PretrainConfig
from activessf.finetune.model import build_classifier, layer_decay_groups
from activessf.models.convvit import TIMM_NAME, convvit_kwargs
from activessf.ssl import METHODS, build_method
from activessf.ssl.convmae import ConvMAE, random_token_mask, upsample_mask

SIZE = 64  # a 4x4 token grid: L = 16, 4 visible at the default ratio 0.75


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors this small run fastest on one thread, and a busy machine cannot make threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cfg(**kw) -> PretrainConfig:
    return PretrainConfig(**{**dict(method="convmae", model="micro", image_size=SIZE, epochs=1, warmup_epochs=0), **kw})


def batch(n=4, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def spec_model(num_classes: int, **kw) -> torch.nn.Module:
    spec = ConvMAE.encoder_spec(cfg())
    return timm.create_model(spec["timm_name"], pretrained=False, num_classes=num_classes, **spec["timm_kwargs"], **kw)


def test_registry_has_convmae():
    assert "convmae" in METHODS and isinstance(build_method(cfg()), ConvMAE)


def test_output_shapes_and_patchify_roundtrip():
    m = build_method(cfg())
    imgs = batch()
    assert torch.equal(m.unpatchify(m.patchify(imgs)), imgs)
    out = m([imgs])
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.extras["pred"].shape == (4, 16, 16 * 16 * 3) and out.extras["mask"].shape == (4, 16)
    masked, recon = m.reconstruction(imgs, out.extras["pred"], out.extras["mask"])
    assert masked.shape == recon.shape == imgs.shape


def test_every_parameter_gets_a_gradient():
    """DDP without find_unused_parameters needs this: nothing in the method sits idle."""
    m = build_method(cfg())
    m([batch(2)]).loss.backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_token_mask_ratio_is_exact_and_ids_agree(ratio):
    ids_keep, mask, ids_restore = random_token_mask(3, 16, ratio)
    keep = int(16 * (1 - ratio))
    assert ids_keep.shape == (3, keep) and (mask.sum(1) == 16 - keep).all()
    assert (mask.gather(1, ids_keep) == 0).all()  # the kept ids are exactly the visible tokens
    assert (torch.argsort(ids_restore, 1)[:, :keep] == ids_keep).all()


def test_stage_masks_are_the_token_mask_upsampled():
    """The masks the CBlocks receive are the stage-3 mask repeated over 4x4 (stage 1) and 2x2 (stage 2) cells."""
    m = build_method(cfg())
    seen = {}
    m.convvit.blocks1[0].register_forward_pre_hook(lambda mod, args: seen.__setitem__(1, args[1]))
    m.convvit.blocks2[0].register_forward_pre_hook(lambda mod, args: seen.__setitem__(2, args[1]))
    _, mask, _ = m.forward_encoder(batch(), 0.75)
    grid = SIZE // 16
    for stage, scale in ((1, 4), (2, 2)):
        visible = seen[stage]
        assert visible.shape == (4, 1, grid * scale, grid * scale)
        rows = torch.arange(grid * scale) // scale  # which token each position belongs to
        expected = 1 - mask.reshape(4, grid, grid)[:, rows][:, :, rows]
        assert torch.equal(visible[:, 0], expected)
        assert visible.mean().item() == pytest.approx(1 - mask.mean().item())
    assert torch.equal(upsample_mask(torch.tensor([[0.0, 1, 1, 0]]), 2, 2)[0, 0],
                       torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]))


def _patch_pixels(mask_row: torch.Tensor, value: float) -> torch.Tensor:
    """(L,) 0/1 -> (3, SIZE, SIZE) image that is ``value`` inside the patches where mask_row == 1."""
    return upsample_mask(mask_row[None], SIZE // 16, 16)[0].expand(3, -1, -1) * value


def test_masked_pixels_do_not_reach_visible_latents():
    m = build_method(cfg()).eval()
    imgs = batch(2)

    def latent(x):
        torch.manual_seed(3)  # the same masks every call
        return m.forward_encoder(x, 0.75)

    base, mask, _ = latent(imgs)
    scribbled = imgs + torch.stack([_patch_pixels(mask[i], 5.0) for i in range(2)]) * torch.randn_like(imgs)
    again, mask2, _ = latent(scribbled)
    assert torch.equal(mask, mask2) and torch.allclose(base, again, atol=1e-5)
    touched = imgs + torch.stack([_patch_pixels(1 - mask[i], 5.0) for i in range(2)]) * torch.randn_like(imgs)
    changed, _, _ = latent(touched)
    assert not torch.allclose(base, changed, atol=1e-3)  # visible pixels do count: the test can fail


def test_exported_encoder_loads_strictly_into_timm():
    m = build_method(cfg())
    spec = ConvMAE.encoder_spec(cfg())
    assert json.loads(json.dumps(spec)) == spec and spec["timm_name"] == TIMM_NAME
    state = m.export_encoder()
    assert not any(k.startswith(("stage1_output_decode", "stage2_output_decode", "decoder")) for k in state)
    enc = spec_model(0)
    enc.load_state_dict(state, strict=True)
    x = batch(2)
    with torch.no_grad():
        feats = enc.eval()(x)
        assert feats.shape == (2, 64) and torch.allclose(feats, m.encoder().eval()(x), atol=1e-5)


def test_classifier_from_the_export(tmp_path):
    m = build_method(cfg())
    clf = spec_model(5, drop_path_rate=0.1)
    missing, unexpected = clf.load_state_dict(m.export_encoder(), strict=False)
    assert sorted(missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"] and not unexpected
    assert clf.default_cfg["classifier"] == ("head", "fc_norm")
    # the fine-tuning stage's own path: a `pretrain` output directory
    torch.save(m.export_encoder(), tmp_path / "encoder.pt")
    (tmp_path / "encoder.json").write_text(json.dumps({"method": "convmae", **ConvMAE.encoder_spec(cfg())}))
    model, info = build_classifier(FinetuneConfig(init=str(tmp_path), num_classes=5), 5)
    assert info["init"] == "pretrained" and info["timm_name"] == TIMM_NAME
    assert torch.equal(model.patch_embed1.proj.weight, m.convvit.patch_embed1.proj.weight)
    logits = model(batch(3))
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()


def test_layer_decay_scales_grow_with_depth():
    model = spec_model(5)  # micro: depths (1, 1, 2) -> layers 0..4, head 5
    s = {n: g["lr_scale"] for g in layer_decay_groups(model, 0.05, 0.75) for n in g["names"]}
    chain = ["patch_embed1.proj.weight", "blocks1.0.conv1.weight", "blocks2.0.conv1.weight",
             "blocks3.0.attn.qkv.weight", "blocks3.1.attn.qkv.weight", "head.weight"]
    assert [s[n] for n in chain] == pytest.approx([0.75**k for k in range(5, -1, -1)])
    assert min(s.values()) == s["patch_embed1.proj.weight"]
    assert s["patch_embed2.proj.weight"] == s["blocks2.0.attn.weight"]  # an embedding joins its stage's first block
    assert s["patch_embed4.weight"] == s["blocks3.0.mlp.fc1.weight"]
    assert s["norm.weight"] == s["fc_norm.weight"] == s["head.bias"] == 1.0  # the final norms: MAE's full rate


def test_image_size_not_a_multiple_of_16_is_refused():
    bad = cfg(image_size=40, patch_size=8)  # a valid MAE config, not a valid ConvMAE one
    with pytest.raises(ValueError, match="multiple of 16"):
        build_method(bad)
    with pytest.raises(ValueError, match="multiple of 16"):
        ConvMAE.encoder_spec(bad)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        timm.create_model(TIMM_NAME, pretrained=False, num_classes=0, **convvit_kwargs("micro", 40))
    with pytest.raises(ValueError, match="no downloadable weights"):
        timm.create_model(TIMM_NAME, pretrained=True)
