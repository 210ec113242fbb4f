"""Supervised features: train the embedding backbone on the labelled set T itself.

An option for sites with no pretrained weights (none can be downloaded here):
a short cross-entropy training of ``embed.backbone`` on the labelled crops, the
classifier head dropped, the weights saved as a plain state dict that
``embed.weights`` then loads. These are *supervised features trained on T*,
not the paper's ResNet-50 features, and every output that uses them records
the weights file's digest.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data.labelled import list_labelled
from ..imageio import read_rgb
from .backbone import file_digest, preprocess

log = logging.getLogger(__name__)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations (cells have no orientation)."""
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(3)
    return torch.rot90(x, int(torch.randint(0, 4, (1,), generator=gen)), dims=(2, 3))


def train_supervised(labelled: str | Path, out: str | Path, cfg: Config, epochs: int = 8, image_size: int = 96,
                     batch_size: int = 32, lr: float = 1e-3) -> Path:
    """Train ``cfg.embed.backbone`` to classify the labelled set; returns the weights file (head removed)."""
    import timm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = list_labelled(labelled)
    classes = sorted({lab for _, lab in pairs})
    x = preprocess([read_rgb(p) for p, _ in pairs], image_size, cfg.embed.mean, cfg.embed.std)
    y = torch.tensor([classes.index(lab) for _, lab in pairs])
    torch.manual_seed(cfg.embed.seed)
    gen = torch.Generator().manual_seed(cfg.embed.seed)
    model = timm.create_model(cfg.embed.backbone, pretrained=False, num_classes=len(classes))
    # inverse-frequency weights: the long tail should not vanish from the features
    weight = torch.tensor(len(y) / (len(classes) * np.bincount(y.numpy(), minlength=len(classes))), dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * -(-len(y) // batch_size))
    history = []
    started = time.time()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        total, correct = 0.0, 0
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            logits = model(augment(x[idx], gen))
            loss = loss_fn(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        history.append({"epoch": epoch + 1, "loss": total / len(y), "train_accuracy": correct / len(y)})
        log.info("supervised features: epoch %d/%d loss %.3f train accuracy %.3f", epoch + 1, epochs,
                 history[-1]["loss"], history[-1]["train_accuracy"])
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(model.default_cfg.get(
        "classifier", "fc"))}
    path = out / f"{cfg.embed.backbone}_supervised_on_T.pt"
    torch.save(state, path)
    (out / "features.json").write_text(json.dumps({
        "kind": "supervised features trained on the labelled set T", "backbone": cfg.embed.backbone,
        "classes": classes, "samples": len(y), "epochs": epochs, "image_size": image_size,
        "seconds": round(time.time() - started, 1), "history": history, "weights": str(path),
        "weights_digest": file_digest(path)}, indent=2))
    return path
