"""Training checkpoints as plain tensors and numbers, loadable with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch

FILE = "state.pt"


def save_state(directory: str | Path, **state) -> Path:
    """``state`` holds state dicts, numbers, strings and lists only (no pickled objects)."""
    path = Path(directory) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_state(directory: str | Path) -> dict:
    return torch.load(Path(directory) / FILE, map_location="cpu", weights_only=True)
