"""Decode and resize images for training: crops stored by the filter, or labelled files on disk.

Both are Ray Data UDFs (a batch of columns in, a batch out) and plain functions
on in-memory batches alike.
"""

from __future__ import annotations

import numpy as np

from ..imageio import decode_png
from ..process import image_worker
from .decode import decode_image
from .sources import read_bytes


def source_size(image_size: int) -> int:
    """Stored crop size: a margin above the training size for random resized crops."""
    return int(round(image_size * 1.15))


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    image_worker()  # one core per task; Ray does the parallelism
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _stack(images: list, size: int) -> np.ndarray:
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)


def decode_resize(batch: dict, size: int, keep: tuple[str, ...] = ()) -> dict:
    """PNG crops (``crop``) -> uint8 (N, size, size, 3) ``image``, plus the ``keep`` columns."""
    out = [_resize(decode_png(bytes(c)), size) for c in batch["crop"]]
    return {**{k: batch[k] for k in keep}, "image": _stack(out, size)}


def load_resize(batch: dict, size: int, keep: tuple[str, ...] = ("label", "idx", "fold")) -> dict:
    """Image files (``path``) -> uint8 (N, size, size, 3) ``image``, plus the ``keep`` columns."""
    out = [_resize(decode_image(read_bytes(str(p)), 10**9), size) for p in batch["path"]]
    return {**{k: batch[k] for k in keep}, "image": _stack(out, size)}
