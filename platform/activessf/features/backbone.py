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
