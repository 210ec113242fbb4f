"""The methods' augmentations and the classifier's views, on uint8 tensors (N, 3, S, S) or (3, S, S)."""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _common(size: int, scale: tuple[float, float]) -> list:
    return [v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip()]  # cells have no up or down


def mae_view(size: int) -> v2.Compose:
    """MAE: random resized crop (scale 0.2-1) and flips."""
    return v2.Compose(_common(size, (0.2, 1.0)) + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def moco_views(size: int) -> tuple[v2.Compose, v2.Compose]:
    """MoCo v3's asymmetric pair: colour jitter, greyscale, blur (always / 10%), solarise (never / 20%)."""

    def view(blur_p: float, solarize_p: float) -> v2.Compose:
        return v2.Compose(_common(size, (0.08, 1.0)) + [
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=blur_p),
            v2.RandomSolarize(128, p=solarize_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ])

    return view(1.0, 0.0), view(0.1, 0.2)


def classifier_view(size: int) -> v2.Compose:
    """Fine-tuning augmentation: random resized crop (scale 0.5-1) and flips."""
    return v2.Compose(_common(size, (0.5, 1.0)) + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def eval_view(size: int) -> v2.Compose:
    """Evaluation and serving: resize to ``size`` x ``size`` and normalise (uint8 (3, H, W) in)."""
    return v2.Compose([v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(MEAN, STD)])


def make_views(method, size: int):
    """A function: uint8 batch (N, 3, S, S) -> list of normalised float views, as ``method`` wants."""
    transforms: Sequence = (mae_view(size),) if method.augmentation == "mae" else moco_views(size)

    def apply(batch: torch.Tensor) -> list[torch.Tensor]:
        return [torch.stack([t(img) for img in batch]) for t in transforms]

    return apply
