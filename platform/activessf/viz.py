"""Pictures people look at: contact sheets of cells."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def thumbnail(rgb: np.ndarray, size: int) -> np.ndarray:
    """Fit an RGB image into a ``size`` x ``size`` white square, aspect kept."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w, 1)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    out = np.full((size, size, 3), 255, np.uint8)
    y, x = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    out[y : y + small.shape[0], x : x + small.shape[1]] = small
    return out


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]],
    thumb: int = 96,
    columns: int | None = None,
    label_width: int = 110,
    gap: int = 4,
) -> np.ndarray:
    """One labelled row of thumbnails per entry of ``rows``: ``[(label, [rgb, ...]), ...]``.

    Returns an RGB uint8 image; empty rows show their label and '(none)'.
    """
    columns = columns or max([len(images) for _, images in rows] + [1])
    width = label_width + columns * (thumb + gap) + gap
    height = len(rows) * (thumb + gap) + gap
    sheet = np.full((max(height, thumb), width, 3), 255, np.uint8)
    for r, (label, images) in enumerate(rows):
        y = gap + r * (thumb + gap)
        _text(sheet, label, (6, y + thumb // 2))
        if not images:
            _text(sheet, "(none)", (label_width + gap, y + thumb // 2), colour=(150, 150, 150))
        for c, img in enumerate(images[:columns]):
            x = label_width + gap + c * (thumb + gap)
            sheet[y : y + thumb, x : x + thumb] = thumbnail(img, thumb)
    return sheet


def _text(img: np.ndarray, text: str, org: tuple[int, int], colour=(20, 20, 20), scale: float = 0.5):
    for i, line in enumerate(text.split("\n")):
        cv2.putText(img, line, (org[0], org[1] + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
