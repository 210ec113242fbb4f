"""SSL methods on tiny inputs: shapes, masking, learning, momentum, symmetry, export to timm."""

import pytest
import torch

from activessf.config import PretrainConfig
from activessf.ssl import METHODS, build_method
from activessf.ssl.mae import random_masking
from activessf.ssl.mocov3 import momentum_at
from activessf.ssl.vit import SIZES

TINY = dict(model="micro", image_size=32, patch_size=8, epochs=1, warmup_epochs=0)
MOCO_TINY = {"mlp_dim": 32, "dim": 16}  # MoCo v3's own settings (pretrain.options)


def cfg(**kw) -> PretrainConfig:
    return PretrainConfig(**{**TINY, **kw})


def batch(n=4, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_registry_and_unknown_method():
    assert {"mae", "mocov3"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown SSL method 'simclr'"):
        build_method(cfg(method="simclr"))


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_random_masking_shapes_and_ratio(ratio):
    x = torch.randn(3, 16, 8)
    kept, mask, restore = random_masking(x, ratio)
    keep = int(16 * (1 - ratio))
    assert kept.shape == (3, keep, 8) and mask.shape == (3, 16) and restore.shape == (3, 16)
    assert (mask.sum(1) == 16 - keep).all()
    for i in range(3):  # the kept tokens are exactly the unmasked ones, in shuffled order
        unmasked = x[i][mask[i] == 0]
        assert torch.equal(torch.sort(kept[i].sum(1)).values, torch.sort(unmasked.sum(1)).values)


def test_mae_patchify_roundtrip_and_output_shapes():
    m = build_method(cfg())
    imgs = batch()
    assert torch.equal(m.unpatchify(m.patchify(imgs)), imgs)
    out = m([imgs])
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.extras["pred"].shape == (4, 16, 8 * 8 * 3) and out.extras["mask"].shape == (4, 16)
    masked, recon = m.reconstruction(imgs, out.extras["pred"], out.extras["mask"])
    assert masked.shape == recon.shape == imgs.shape


def test_mocov3_loss_is_symmetric_in_its_views():
    torch.manual_seed(0)
    m = build_method(cfg(method="mocov3", options=MOCO_TINY)).eval()  # eval: BatchNorm uses fixed statistics
    a, b = batch(6, 1), batch(6, 2)
    assert torch.allclose(m([a, b]).loss, m([b, a]).loss, atol=1e-6)


def test_mocov3_momentum_encoder_follows_the_schedule():
    m = build_method(cfg(method="mocov3", options={**MOCO_TINY, "momentum": 0.9}))
    assert momentum_at(0.0, 0.9) == pytest.approx(0.9) and momentum_at(1.0, 0.9) == pytest.approx(1.0)
    assert momentum_at(0.5, 0.9) == pytest.approx(0.95)
    with torch.no_grad():
        for p in m.base.parameters():
            p.add_(1.0)
    before = [q.clone() for q in m.momentum_base.parameters()]
    m.after_step(0.0)
    for p, q, q0 in zip(m.base.parameters(), m.momentum_base.parameters(), before):
        assert torch.allclose(q, 0.9 * q0 + 0.1 * p)
    assert not any(q.requires_grad for q in m.momentum_base.parameters())


def test_mocov3_loss_decreases():
    torch.manual_seed(0)
    m = build_method(cfg(method="mocov3", options=MOCO_TINY))
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    a = batch(16, 3)
    b = a.flip(3) + 0.02 * torch.randn_like(a)
    losses = []
    for step in range(30):
        loss = m([a, b]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(step / 30)
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5]), losses[::5]


@pytest.mark.parametrize("method", ["mae", "mocov3"])
def test_exported_encoder_loads_into_timm(method):
    import timm

    m = build_method(cfg(method=method, options=MOCO_TINY if method == "mocov3" else {}))
    state = m.export_encoder()
    s = SIZES["micro"]
    vit = timm.create_model(s.timm_name, pretrained=False, num_classes=0, img_size=32, patch_size=8,
                            embed_dim=s.dim, depth=s.depth, num_heads=s.heads)
    vit.load_state_dict(state, strict=True)  # every key matches: a timm ViT
    x = batch(2)
    assert torch.allclose(vit.eval()(x), m.encoder().eval()(x), atol=1e-5)


# what each method needs besides TINY: MixMIM mixes 32 px blocks, so its images hold at least two
METHOD_SIZES = {"mixmim": {"image_size": 64}}


@pytest.fixture
def process_group(tmp_path):
    """A real gloo process group of one: what DDP needs in a single process (Ray Train runs 2 in tests/stages)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_learns_a_fixed_batch_under_ddp_and_exports_into_timm(name, process_group):
    """The training loop's path for each registered method: its own views, DDP's reducer (which fails on
    parameters a step leaves without gradients), the optimiser groups, ``after_step``; then the export."""
    import timm
    from torch.nn.parallel import DistributedDataParallel

    from activessf.ssl.augment import make_views
    from activessf.training.optim import layer_decay_groups
    from activessf.training.schedule import set_lr

    options = MOCO_TINY if name == "mocov3" else {"norm_pix_loss": False}
    p = cfg(method=name, options=options, **METHOD_SIZES.get(name, {}))
    torch.manual_seed(0)
    method = build_method(p)
    model = DistributedDataParallel(method)
    opt = torch.optim.AdamW(layer_decay_groups(method, 0.05, p.layer_decay, method.encoder(), method.no_weight_decay()))
    set_lr(opt, 2e-3)  # each group at its layer's share of it, as the loop's schedule does
    images = torch.randint(0, 256, (8, 3, p.image_size, p.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    views = make_views(method, p.image_size)(images)
    losses = []
    for step in range(20):
        torch.manual_seed(1)  # the same masks every step: a fixed problem to fit
        loss = model(views).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(step / 20)
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0] and max(losses[-5:]) < min(losses[:5]), losses[::4]
    spec = METHODS[name].encoder_spec(p)
    encoder = timm.create_model(spec["timm_name"], pretrained=False, num_classes=0, **spec["timm_kwargs"])
    encoder.load_state_dict(method.export_encoder(), strict=True)


# per method at the micro size: (first block, last block, blocks) of its encoder, by parameter name prefix
BLOCKS = {"mae": ("vit.blocks.0.", "vit.blocks.1.", 2), "mocov3": ("base.blocks.0.", "base.blocks.1.", 2),
          "convmae": ("convvit.blocks1.0.", "convvit.blocks3.1.", 4),
          "mixmim": ("mixvit.stages.0.blocks.0.", "mixvit.stages.3.blocks.0.", 4)}


def lr_scales(method, decay: float) -> dict[str, float]:
    """Parameter name -> lr scale of the pretraining optimiser's groups; each trainable parameter once."""
    from activessf.training.optim import layer_decay_groups

    groups = layer_decay_groups(method, 0.05, decay, method.encoder(), method.no_weight_decay())
    names = [n for g in groups for n in g["names"]]
    trainable = {n for n, q in method.named_parameters() if q.requires_grad}
    assert len(names) == len(set(names)) and set(names) == trainable  # in exactly one group each
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    return {n: g["lr_scale"] for g in groups for n in g["names"]}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_pretraining_decays_the_encoder_blocks_layer_by_layer(name):
    """pretrain.layer_decay: block i of depth d at decay ** (d - i), the embeddings below the first block;
    the encoder's final norm and everything outside the encoder (decoder, projector, predictor) at 1."""
    method = build_method(cfg(method=name, options=MOCO_TINY if name == "mocov3" else {}, **METHOD_SIZES.get(name, {})))
    first, last, depth = BLOCKS[name]
    prefix = first.split(".")[0] + "."
    s = lr_scales(method, 0.75)
    block = lambda start: [v for k, v in s.items() if k.startswith(start)]  # noqa: E731
    assert block(first) and block(first) == pytest.approx([0.75**depth] * len(block(first)))
    assert block(last) and block(last) == pytest.approx([0.75] * len(block(last)))
    stem = next(k for k in (prefix + "patch_embed.proj.weight", prefix + "patch_embed1.proj.weight") if k in s)
    assert s[stem] == pytest.approx(0.75 ** (depth + 1))  # the patch embedding: layer 0
    assert s[prefix + "norm.weight"] == 1.0
    outside = [k for k in s if not k.startswith(prefix)]
    assert outside and all(s[k] == 1.0 for k in outside), outside  # the decoder or the MoCo heads
    assert set(lr_scales(method, 1.0).values()) == {1.0}  # 1.0: off, MAE's own pretraining recipe
