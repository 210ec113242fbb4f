"""Supervised features: train the embedding backbone on the labelled set T itself.

An option for sites with no pretrained weights (none can be downloaded here):
a short cross-entropy training of ``embed.backbone`` on the labelled crops, the
classifier head dropped, the weights saved as a plain state dict that
``embed.weights`` then loads. These are *supervised features trained on T*,
not the paper's ResNet-50 features, and every output that uses them records
the weights file's digest. ``label_ids.json`` beside the weights lists the
cells they learned from: evaluation refuses to score those cells
(``evaluation.provenance``), so train them on a split's ``tune.csv``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..data.labelled import list_labelled
from ..evaluation.provenance import label_ids_record, refuse_evaluation_part, write_label_ids
from ..imageio import read_rgb
from ..training.engine import Schedule, classification_loss, inverse_frequency, train_one_epoch
from ..training.progress import EpochProgress
from .backbone import file_digest, normalisation, preprocess

log = logging.getLogger(__name__)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations (cells have no orientation)."""
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(3)
    return torch.rot90(x, int(torch.randint(0, 4, (1,), generator=gen)), dims=(2, 3))


def train_supervised(labelled: str | Path, out: str | Path, cfg: Config, epochs: int = 8, image_size: int = 96,
                     batch_size: int = 32, lr: float = 1e-3) -> Path:
    """Train ``cfg.embed.backbone`` to classify the labelled set; returns the weights file (head removed).

    The platform's training step (:func:`training.engine.train_one_epoch`), with AdamW, a warm-up over
    the first 30% of the steps then a half-cosine, and inverse-frequency class weights.
    """
    import timm

    refuse_evaluation_part(labelled, "supervised features")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = list_labelled(labelled)
    classes = sorted({lab for _, lab in pairs})
    norm = normalisation(cfg.embed.backbone, None, cfg.embed.mean, cfg.embed.std)  # what embedding will use
    x = preprocess([read_rgb(p) for p, _ in pairs], image_size, norm["mean"], norm["std"])
    y = torch.tensor([classes.index(lab) for _, lab in pairs])
    torch.manual_seed(cfg.embed.seed)
    gen = torch.Generator().manual_seed(cfg.embed.seed)
    model = timm.create_model(cfg.embed.backbone, pretrained=False, num_classes=len(classes))
    # inverse-frequency weights: the long tail should not vanish from the features
    loss_fn = classification_loss(inverse_frequency(torch.bincount(y, minlength=len(classes))))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    schedule = Schedule(lr, warmup_epochs=0.3 * epochs, epochs=epochs, steps_per_epoch=-(-len(y) // batch_size))

    def prepare(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:  # flips and rotations drawn from ``gen``
        return augment(batch["image"], gen), batch["label"]

    history = []
    started = time.time()
    progress = EpochProgress(epochs, 0, f"features {cfg.embed.backbone}", enabled=not cfg.run.quiet)
    for epoch in range(epochs):
        stats = train_one_epoch(model, opt, scaler, shuffled(x, y, batch_size, gen), epoch, schedule, prepare, loss_fn)
        history.append({"epoch": epoch + 1, "loss": stats["loss"], "train_accuracy": stats["train_accuracy"]})
        progress.update(epoch, stats["loss"], max(g["lr"] for g in opt.param_groups),
                        stats["images"] / max(stats["epoch_seconds"], 1e-9))
    labels = label_ids_record(pairs, "supervised features", labelled)
    write_label_ids(out, labels)
    return save_features(model, out, cfg, classes, {
        "samples": len(y), "epochs": epochs, "image_size": image_size, "seconds": round(time.time() - started, 1),
        "history": history, "labelled": str(labelled), "label_ids_digest": labels["digest"]})


def shuffled(x: torch.Tensor, y: torch.Tensor, batch_size: int, gen: torch.Generator):
    """Batches ``{"image": (B, 3, S, S), "label": (B,)}`` in a fresh random order (the last may be smaller)."""
    order = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), batch_size):
        idx = order[i : i + batch_size]
        yield {"image": x[idx], "label": y[idx]}


def save_features(model: nn.Module, out: Path, cfg: Config, classes: list[str], record: dict) -> Path:
    """The backbone's weights without its classifier head, and ``features.json`` describing them."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(model.default_cfg.get(
        "classifier", "fc"))}
    path = out / f"{cfg.embed.backbone}_supervised_on_T.pt"
    torch.save(state, path)
    (out / "features.json").write_text(json.dumps({
        "kind": "supervised features trained on the labelled set T", "backbone": cfg.embed.backbone,
        "classes": classes, **record, "weights": str(path), "weights_digest": file_digest(path)}, indent=2))
    return path
