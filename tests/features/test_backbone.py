"""Backbones: seeded random init, weights from a file or an MLflow URI, clear refusals, supervised features."""

import pickle

import numpy as np
import pytest
import torch

from activessf.config import SynthConfig, load_config
from activessf.data import synth
from activessf.features.backbone import RANDOM_INIT, WeightsError, embed, file_digest, load_backbone

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8) for i in range(n)]


def test_random_init_is_seeded_so_every_actor_builds_the_same_network(caplog):
    a, b = load_backbone("test_resnet"), load_backbone("test_resnet")
    assert a.random and a.weights_digest == RANDOM_INIT
    assert "RANDOMLY INITIALISED" in caplog.text
    fa, fb = embed(a, images(), 32, MEAN, STD), embed(b, images(), 32, MEAN, STD)
    assert fa.shape == (3, a.dim) and np.array_equal(fa, fb)
    c = load_backbone("test_resnet", seed=1)
    assert not np.array_equal(fa, embed(c, images(), 32, MEAN, STD))
    assert embed(a, [], 32, MEAN, STD).shape == (0, a.dim)


def test_weights_from_a_file_and_from_mlflow(tmp_path):
    import mlflow

    from activessf.tracking import init_mlflow

    src = load_backbone("test_resnet", seed=5)
    path = tmp_path / "w.pt"
    torch.save(src.model.state_dict(), path)
    loaded = load_backbone("test_resnet", str(path))
    assert loaded.weights_digest == file_digest(path) != RANDOM_INIT
    assert np.array_equal(embed(loaded, images(), 32, MEAN, STD), embed(src, images(), 32, MEAN, STD))
    init_mlflow(tmp_path / "work", "weights")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(path), "weights")
    via_uri = load_backbone("test_resnet", f"runs:/{run.info.run_id}/weights")
    assert via_uri.weights_digest == loaded.weights_digest


def test_bad_weights_are_refused_clearly(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_backbone("test_resnet", str(tmp_path / "nope.pt"))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weights": object()}))
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_backbone("test_resnet", str(evil))
    other = tmp_path / "other.pt"
    torch.save(load_backbone("resnet18").model.state_dict(), other)
    with pytest.raises(WeightsError, match="does not fit test_resnet"):
        load_backbone("test_resnet", str(other))
    with pytest.raises(WeightsError, match="unknown timm model"):
        load_backbone("no_such_net")


def test_supervised_features_train_and_load(tmp_path):
    from activessf.features.supervised import train_supervised

    synth.generate(SynthConfig(images=1, labelled=55, width=512, height=384, workers=1), tmp_path / "d",
                   progress=False)
    cfg = load_config(overrides=["embed.backbone=test_resnet"])
    path = train_supervised(tmp_path / "d" / "labelled", tmp_path / "f", cfg, epochs=2, image_size=32)
    info = (tmp_path / "f" / "features.json").read_text()
    assert "supervised features trained on the labelled set" in info and len(info) > 100
    b = load_backbone("test_resnet", str(path))
    assert b.weights_digest == file_digest(path)
    assert np.isfinite(embed(b, images(), 32, MEAN, STD)).all()


def test_a_pretrain_output_is_an_encoder_to_embed_with(tmp_path):
    """embed.weights = a `pretrain` output: its encoder.json names the architecture (embed.backbone is not
    used) and the input size (embed.image_size follows it)."""
    import json

    import timm

    from activessf.config import EmbedConfig
    from activessf.features.backbone import at_encoder

    kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, **kwargs)
    torch.save(vit.state_dict(), tmp_path / "encoder.pt")
    (tmp_path / "encoder.json").write_text(json.dumps({"timm_name": "vit_tiny_patch16_224", "timm_kwargs": kwargs,
                                                       "image_size": 32, "method": "mae"}))
    b = load_backbone("resnet50", str(tmp_path))
    assert b.name == "vit_tiny_patch16_224" and b.dim == 64 and b.weights_digest == file_digest(tmp_path / "encoder.pt")
    with torch.inference_mode():
        expected = vit.eval()(torch.zeros(1, 3, 32, 32))
    assert torch.allclose(b.model(torch.zeros(1, 3, 32, 32)), expected)
    assert at_encoder(EmbedConfig(weights=str(tmp_path), image_size=224)).image_size == 32
    assert at_encoder(EmbedConfig(image_size=224)).image_size == 224
    assert load_backbone("resnet50", str(tmp_path / "encoder.pt")).dim == 64  # the file alone finds its record


def test_normalisation_is_the_models_own_unless_the_config_sets_it(tmp_path):
    """timm's data config of the model (ImageNet for a ResNet-50, 0.5 for a ViT: no weights downloaded,
    the model built on the meta device), an encoder's pretraining values, or the
    config's; run_embed resolves them once, records them in embed.json and gives them to every actor."""
    import json

    from activessf.features.backbone import normalisation
    from activessf.stages.embed import normalised

    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    resnet = normalisation("resnet50")
    assert resnet["mean"] + resnet["std"] == pytest.approx(imagenet[0] + imagenet[1])
    vit = normalisation("vit_tiny_patch16_224")
    assert vit["mean"] == [0.5] * 3 and vit["std"] == [0.5] * 3 and vit["from"] == "timm pretrained_cfg"
    assert vit["input_size"] == [3, 224, 224]
    assert normalisation("vit_tiny_patch16_224", mean=MEAN, std=STD) == {
        "mean": list(MEAN), "std": list(STD), "from": "config", "input_size": None}
    half = normalisation("vit_tiny_patch16_224", std=STD)  # one set: it wins, the other is the model's
    assert half["mean"] == [0.5] * 3 and half["std"] == list(STD) and "std from config" in half["from"]
    (tmp_path / "encoder.json").write_text(json.dumps({"timm_name": "vit_tiny_patch16_224", "image_size": 64}))
    (tmp_path / "encoder.pt").write_bytes(b"")
    pretrained = normalisation("resnet50", str(tmp_path))  # what the encoder was pretrained with
    assert pretrained["mean"] + pretrained["std"] == pytest.approx(imagenet[0] + imagenet[1])
    assert pretrained["from"] == "pretraining" and pretrained["input_size"] == [3, 64, 64]

    cfg = load_config(overrides=["embed.backbone=vit_tiny_patch16_224"]).embed
    assert cfg.mean is None and cfg.std is None
    resolved, record = normalised(cfg)
    assert resolved.mean == (0.5, 0.5, 0.5) and record["from"] == "timm pretrained_cfg"
    x = load_backbone("test_resnet")
    ours = embed(x, images(), 32, resolved.mean, resolved.std)
    assert not np.allclose(ours, embed(x, images(), 32, *imagenet))  # the normalisation reaches the features
