"""Our encoders (convvit_activessf, mixmim_activessf) keep timm's model contract.

What timm's own model tests ask of every model (tests/test_models.py in timm's sdist), at tiny sizes:
create by name, forward + backward at an input size other than the built one, default cfg fields,
``features_only`` / ``feature_info``, ``forward_intermediates``, TorchScript and FX.
"""

import pytest
import timm
import torch

# importing activessf.models (here through its modules) registers both names with timm
from activessf.models.convvit import checkpoint_filter_fn, convvit_kwargs
from activessf.models.mixvit import SIZES as MIX_SIZES

BUILT = 64  # the size the models are built for; the tests also feed 96 px, a size neither was built for
MODELS = {
    # name: (kwargs, feature (channels, reductions), output stride)
    "convvit_activessf": (convvit_kwargs("micro", BUILT), ([16, 32, 64], [4, 8, 16]), 16),
    "mixmim_activessf": (MIX_SIZES["micro"].timm_kwargs(BUILT), ([16, 32, 64, 128], [4, 8, 16, 32]), 32),
}
NAMES = sorted(MODELS)


def create(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **{**MODELS[name][0], **kw})


@pytest.mark.parametrize("name", NAMES)
def test_default_cfg_describes_the_model(name):
    model = create(name, num_classes=3).eval()
    cfg, stride = model.pretrained_cfg, MODELS[name][2]
    assert cfg["input_size"] == (3, BUILT, BUILT) and model.in_chans == 3
    assert cfg["pool_size"] == (BUILT // stride,) * 2 and cfg["crop_pct"] == 1.0
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and cfg["num_classes"] == 0  # an encoder without weights
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state
    heads = cfg["classifier"] if isinstance(cfg["classifier"], tuple) else (cfg["classifier"],)
    assert all(h + ".weight" in state for h in heads)
    assert model.num_classes == 3 and model.head_hidden_size == model.num_features > 0
    feats = model.forward_features(torch.randn(1, 3, BUILT, BUILT))
    assert model.output_fmt == "NHWC" and feats.shape == (1, *cfg["pool_size"], model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
    model.reset_classifier(0, "")  # no head, no pooling: the map
    assert model(torch.randn(1, 3, BUILT, BUILT)).shape == feats.shape
    with pytest.raises(TypeError):
        create(name, not_a_model_arg=1)


def test_convvit_keeps_its_state_dict_keys():
    """pos_embed became a buffer (fixed sin-cos; timm wants every parameter to get a gradient) but stays
    in the state dict under its old name, so encoders saved by earlier versions load strictly."""
    model = create("convvit_activessf")
    assert "pos_embed" in model.state_dict() and "pos_embed" not in dict(model.named_parameters())


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_at_another_size(name):
    model = create(name, num_classes=5).train()
    x = torch.randn(2, 3, 96, 96)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"no gradient for {no_grad[:3]}"
    # set_input_size makes the resampling permanent without changing what a forward at that size gives
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.set_input_size(96)
        assert torch.allclose(model(x), before, atol=1e-5)
    assert model.pretrained_cfg["input_size"] == (3, BUILT, BUILT)  # the checkpoint's metadata, as timm keeps it


def test_convvit_checkpoint_at_another_size_loads_through_the_filter():
    small = create("convvit_activessf").eval()
    big = timm.create_model("convvit_activessf", **convvit_kwargs("micro", 96)).eval()
    with pytest.raises(RuntimeError, match="pos_embed"):
        big.load_state_dict(small.state_dict())
    big.load_state_dict(checkpoint_filter_fn(small.state_dict(), big))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(big(x), small(x), atol=1e-5)  # = the built-at-64 model fed 96 px


@pytest.mark.parametrize("name", NAMES)
def test_features_only_matches_feature_info(name):
    channels, reductions = MODELS[name][1]
    model = create(name, features_only=True).eval()
    assert model.feature_info.channels() == channels and model.feature_info.reduction() == reductions
    outs = model(torch.randn(1, 3, 96, 96))
    assert [tuple(o.shape) for o in outs] == [(1, c, 96 // r, 96 // r) for c, r in zip(channels, reductions)]
    last2 = create(name, features_only=True, out_indices=(-2, -1))
    assert [o.shape[1] for o in last2(torch.randn(1, 3, 96, 96))] == channels[-2:]


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates(name):
    channels, reductions = MODELS[name][1]
    model = create(name).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x), atol=1e-6)
        assert [tuple(o.shape) for o in inter] == [(1, c, 96 // r, 96 // r) for c, r in zip(channels, reductions)]
        nhwc = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NHWC", intermediates_only=True)
        assert len(nhwc) == 1 and torch.allclose(nhwc[0], final, atol=1e-6)  # the normed last stage
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert torch.equal(first[0], inter[0])


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_and_fx(name):
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    model = create(name).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(torch.jit.script(model)(x), ref, atol=1e-5)
        tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
        last = get_graph_node_names(model, tracer_kwargs=tracer)[1][-1]
        fx = create_feature_extractor(model, return_nodes=[last], tracer_kwargs=tracer)
        assert torch.allclose(fx(x)[last], ref, atol=1e-5)
