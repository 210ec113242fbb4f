"""A timm backbone that maps images to one global-pooled feature vector each.

Weights come from a local file (a state dict, loaded with ``weights_only=True``),
the output of ``activessf pretrain`` (its ``encoder.json`` then names the
architecture, which replaces ``embed.backbone``), an MLflow model URI (``models:/name/version``, ``models:/name@alias``,
``runs:/id/path``) whose artifacts hold such a file, or nowhere: then the
network is randomly initialised and the run says so, loudly, and records it.
No weights are ever downloaded from a hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class WeightsError(ValueError):
    pass


@dataclass
class Backbone:
    """The model plus what produced it; ``weights_digest`` is ``random-init`` without weights."""

    model: torch.nn.Module
    name: str
    weights: Optional[str]
    weights_digest: str
    dim: int

    @property
    def random(self) -> bool:
        return self.weights_digest == RANDOM_INIT


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resolve_weights(spec: str) -> Path:
    """A local weights file for ``spec``: a path, or an MLflow URI whose artifacts hold one."""
    if "://" not in spec and ":/" not in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        return path
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
    if local.is_file():
        return local
    found = sorted(p for p in local.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    if not found:
        raise WeightsError(f"{spec} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    return found[0]


def encoder_record(spec: str | Path) -> tuple[dict | None, Path]:
    """(encoder.json of a `pretrain` output, weights file) for ``spec``: a `pretrain` output directory, a
    weights file or an MLflow URI; the record is None for weights that did not come from `pretrain`."""
    path = Path(spec)
    if path.is_dir() and (path / "encoder.json").is_file():
        return json.loads((path / "encoder.json").read_text()), path / "encoder.pt"
    local = resolve_weights(str(spec))
    record = local.parent / "encoder.json"
    return (json.loads(record.read_text()) if record.is_file() else None), local


def at_encoder(cfg, size_field: str = "image_size"):
    """``cfg`` (an embed or fine-tune config section) at the input size of the `pretrain` encoder its
    weights come from (a ViT's position embedding fixes it); unchanged for other weights or none."""
    spec = getattr(cfg, "weights", None) or getattr(cfg, "init", None)
    if not spec:
        return cfg
    record, _ = encoder_record(spec)
    size = (record or {}).get("image_size")
    if size is None or size == getattr(cfg, size_field):
        return cfg
    log.warning("running at %d px, the input size %s was pretrained at (image_size=%d does not apply to a "
                "pretrained encoder)", size, spec, getattr(cfg, size_field))
    return cfg.model_copy(update={size_field: size})


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``; accepts {'state_dict': ...} / {'model': ...} wrappers."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # not a tensor-only file: refuse rather than unpickle code
            raise WeightsError(f"{path} is not a plain state dict (loaded with weights_only=True): {exc}") from None
    for key in ("state_dict", "model", "encoder"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone(
    name: str, weights: Optional[str] = None, device: str | torch.device = "cpu", seed: int = 0
) -> Backbone:
    """timm model ``name`` with its classifier removed (global-pooled features), in eval mode.

    With the output of ``activessf pretrain`` as ``weights``, the encoder it
    trained is rebuilt from its ``encoder.json`` and ``name`` is not used.
    The initialisation is seeded, so that without weights every process (every
    Ray actor, every run) builds the *same* random network.
    """
    import timm

    from .. import models  # noqa: F401  (registers our encoder architectures with timm)

    record, path = encoder_record(weights) if weights else (None, None)
    kwargs = {}
    if record is not None:
        name, kwargs = record["timm_name"], dict(record["timm_kwargs"])
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as exc:
        raise WeightsError(f"unknown timm model {name!r}: {exc}") from None
    digest = RANDOM_INIT
    if weights:
        state = read_state_dict(path)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes differ: weights of another architecture
            first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
            raise WeightsError(f"{path} does not fit {name}: {first}") from None
        missing = [k for k in missing if not k.startswith(("fc.", "head.", "classifier."))]
        if missing:
            raise WeightsError(f"{path} does not fit {name}: {len(missing)} missing keys, e.g. {missing[:3]}")
        if unexpected:
            log.info("ignored %d keys of %s not used by %s (e.g. %s)", len(unexpected), path, name, unexpected[:3])
        digest = file_digest(path)
    else:
        msg = (f"NO WEIGHTS for backbone {name}: features come from a RANDOMLY INITIALISED network. "
               "Pass embed.weights=<file or MLflow URI> for meaningful prototypes.")
        log.warning(msg)
    model.eval().to(device)
    return Backbone(model, name, weights, digest, int(model.num_features))


def normalisation(name: str, weights: Optional[str] = None, mean: Optional[Sequence[float]] = None,
                  std: Optional[Sequence[float]] = None, kwargs: Optional[dict] = None) -> dict:
    """The mean and std images are normalised with before backbone ``name`` (or the encoder of ``weights``):
    ``{"mean", "std", "from", "input_size"}``. A value given (``embed.mean``, ``embed.std``) is used as
    given; a missing one is

    - for an ``activessf pretrain`` output: what the encoder was pretrained with (its ``encoder.json``'s
      ``mean``/``std``, else the SSL augmentations' ImageNet values);
    - otherwise: the model's own preprocessing, timm's ``resolve_data_config({}, model=model)`` over the
      model's ``pretrained_cfg`` (ImageNet's values for most timm models; 0.5/0.5 for many ViTs, CLIP's
      for CLIP towers): what weights made for that model expect. The model is built on the meta device
      (no memory, no weights: a fraction of a second).

    ``input_size`` is the model's own (informational: ``embed.image_size`` decides the size)."""
    given = {k: [float(x) for x in v] for k, v in (("mean", mean), ("std", std)) if v is not None}
    if len(given) == 2:
        return {**given, "from": "config", "input_size": None}
    record, _ = encoder_record(weights) if weights else (None, None)
    if record is not None:
        from ..ssl.augment import MEAN, STD

        size = record.get("image_size")
        found = {"mean": list(record.get("mean", MEAN)), "std": list(record.get("std", STD)), "from": "pretraining",
                 "input_size": [3, size, size] if size else None}
    else:
        import timm
        from timm.data import resolve_data_config

        from .. import models  # noqa: F401  (registers our encoder architectures with timm)

        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0, **(kwargs or {}))
        data = resolve_data_config({}, model=model)
        found = {"mean": [float(v) for v in data["mean"]], "std": [float(v) for v in data["std"]],
                 "from": "timm pretrained_cfg", "input_size": list(data["input_size"])}
    if given:  # one of the two set in the config: it wins
        found.update(given, **{"from": f"{found['from']}, {next(iter(given))} from config"})
    return found


def preprocess(images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB uint8 images of any size -> (N, 3, size, size) float tensor, resized and normalised."""
    batch = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


@torch.inference_mode()
def embed(backbone: Backbone, images: Sequence[np.ndarray], size: int, mean, std, device="cpu") -> np.ndarray:
    """Global-pooled features (N, D) float32 of RGB images."""
    if not len(images):
        return np.zeros((0, backbone.dim), np.float32)
    x = preprocess(images, size, mean, std).to(device)
    return backbone.model(x).float().cpu().numpy()


# ------------------------------------------------------------------ fail fast, on the driver

HEAD_PREFIXES = ("fc.", "head.", "classifier.")  # a classifier's head: never required of weights


def check_backbone(cfg, parts: Sequence[str], weights: bool = True) -> None:
    """Fail fast, on the driver and before any data is read: the models ``parts`` of ``cfg`` name exist,
    and (with ``weights``) the weights given for them exist and fit them. Raises ``ConfigError`` naming
    the field.

    ``parts``: ``embed`` (embed.backbone, embed.weights), ``finetune`` (finetune.backbone with
    finetune.backbone_kwargs, finetune.init), ``cnn_baseline`` (evaluate.cnn_baseline) and ``pretrain``
    (pretrain.method and its options, checked by the method). Weights given as an MLflow URI are
    checked where they are loaded (checking them here would download them).
    """
    checks = {
        "embed": lambda: check_model(cfg.embed.backbone, {}, cfg.embed.weights if weights else None,
                                     "embed.backbone", "embed.weights"),
        "finetune": lambda: check_model(cfg.finetune.backbone, cfg.finetune.backbone_kwargs,
                                        cfg.finetune.init if weights else None, "finetune.backbone", "finetune.init"),
        "cnn_baseline": lambda: check_model_name(cfg.evaluate.cnn_baseline, "evaluate.cnn_baseline"),
        "pretrain": lambda: _check_method(cfg.pretrain),
    }
    unknown = set(parts) - set(checks)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; known: {sorted(checks)}")
    for part in parts:
        checks[part]()


def _check_method(p) -> None:
    from ..config import ConfigError
    from ..ssl import method_class

    try:
        method_class(p)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_model_name(name: str, field: str) -> None:
    """``ConfigError`` unless ``name`` is in timm's registry (the platform's encoders included), with the
    closest names as suggestions."""
    import difflib

    import timm

    from .. import models  # noqa: F401  (registers our encoder architectures with timm)
    from ..config import ConfigError

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(f"{field}: unknown model {name!r}, not in timm {timm.__version__}'s registry nor the "
                      f"platform's encoders{hint} (timm.list_models('*pattern*') lists the names)")


def check_model(name: str, kwargs: dict, weights: Optional[str], name_field: str, weights_field: str) -> None:
    """``name`` exists; local ``weights`` (a file or a `pretrain` output, whose encoder.json then names
    the architecture) exist and fit it by the loaders' rules: every key of the model but its head is in
    the file, at the model's shape; keys the model does not have are ignored."""
    from ..config import ConfigError

    if weights and ("://" in weights or ":/" in weights):
        weights = None  # an MLflow URI: checked where it is loaded
    path = None
    if weights:
        try:
            record, path = encoder_record(weights)
        except WeightsError as exc:
            raise ConfigError(f"{weights_field}: {exc}") from None
        if record is not None:
            name, kwargs = record["timm_name"], dict(record["timm_kwargs"])
            name_field = f"{weights_field} ({path.parent / 'encoder.json'})"
    check_model_name(name, name_field)
    if kwargs and path is None:
        model_shapes(name, kwargs, name_field)  # timm takes these keyword arguments
    if path is not None:
        problems = weights_mismatch(model_shapes(name, kwargs, name_field), path, weights_field)
        if problems:
            raise ConfigError(f"{weights_field}: {path} does not fit {name}{f' {kwargs}' if kwargs else ''}: "
                              f"{problems}. Weights of another architecture: name the one they were trained as "
                              f"({name_field}), or give the weights of this one")


def model_shapes(name: str, kwargs: dict, field: str) -> dict[str, tuple]:
    """Parameter and buffer shapes of timm ``name`` without its head; built on the meta device (no memory,
    no initialisation) when the model allows it, else on the CPU."""
    import timm

    from ..config import ConfigError

    try:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        except NotImplementedError:  # an init that reads tensor values (e.g. a sin-cos table): build it for real
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise ConfigError(f"{field}: timm cannot build {name} with {kwargs}: {exc}") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def weights_mismatch(expected: dict[str, tuple], path: Path, field: str) -> str:
    """What keeps the state dict in ``path`` from loading into a model of ``expected`` shapes ('' if
    nothing): missing keys (but the head's), keys of another shape, and (only then, as a clue) the
    keys the model does not have."""
    from ..config import ConfigError

    try:
        state = read_state_dict(path)
    except WeightsError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    missing = [k for k in expected if k not in state and not k.startswith(HEAD_PREFIXES)]
    shaped = [f"{k} {tuple(state[k].shape)} in the file, {expected[k]} in the model"
              for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if not (missing or shaped):
        return ""
    unexpected = [k for k in state if k not in expected and not k.startswith(HEAD_PREFIXES)]
    parts = [f"{_keys(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
             f"{_keys(shaped)} of another shape (e.g. {'; '.join(shaped[:3])})" if shaped else "",
             f"{_keys(unexpected)} the model does not have (e.g. {', '.join(unexpected[:3])})" if unexpected else ""]
    return "; ".join(p for p in parts if p)


def _keys(items: list) -> str:
    return f"{len(items)} key{'' if len(items) == 1 else 's'}"
