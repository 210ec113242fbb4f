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


def image_grid(images: Sequence[np.ndarray], columns: int = 8, thumb: int = 96, gap: int = 4) -> np.ndarray:
    """Thumbnails in rows of ``columns``; an empty list gives a small 'no images' tile."""
    if not images:
        tile = np.full((thumb, thumb * 2, 3), 255, np.uint8)
        _text(tile, "no images", (10, thumb // 2), colour=(150, 150, 150))
        return tile
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    sheet = np.full((gap + rows * (thumb + gap), gap + cols * (thumb + gap), 3), 255, np.uint8)
    for i, img in enumerate(images):
        y, x = gap + (i // columns) * (thumb + gap), gap + (i % columns) * (thumb + gap)
        sheet[y : y + thumb, x : x + thumb] = thumbnail(img, thumb)
    return sheet


def region_stats_figure(kept: dict, rejected: dict, min_box: int, fill_rate: float, path) -> None:
    """Histograms of box side and fill rate, kept vs rejected-for-fill, thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for data, label, colour in ((kept, "kept", "tab:purple"), (rejected, "rejected: fill rate", "tab:grey")):
        side = np.minimum(np.asarray(data["w"], float), np.asarray(data["h"], float))
        axes[0].hist(side, bins=30, alpha=0.6, label=f"{label} ({len(side)})", color=colour)
        axes[1].hist(np.asarray(data["fill_rate"], float), bins=30, range=(0, 1), alpha=0.6, label=label, color=colour)
    axes[0].axvline(min_box, color="k", ls="--", lw=1)
    axes[0].set(xlabel="shorter box side (px)", ylabel="regions", title=f"box size (min {min_box} px)")
    axes[1].axvline(fill_rate, color="k", ls="--", lw=1)
    axes[1].set(xlabel="fill rate (region px / box px)", title=f"fill rate (min {fill_rate})")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def distance_histograms(cluster: np.ndarray, distance: np.ndarray, thresholds: np.ndarray, path) -> None:
    """One small histogram per cluster of its candidates' distances, the threshold as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(thresholds)
    cols = min(4, max(k, 1))
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    top = float(np.nanmax(np.concatenate([distance, thresholds]))) if len(distance) else float(thresholds.max(initial=1))
    for i, ax in enumerate(axes.ravel()):
        if i >= k:
            ax.axis("off")
            continue
        d = distance[cluster == i]
        ax.hist(d, bins=20, range=(0, top * 1.05 or 1), color="tab:purple", alpha=0.7)
        ax.axvline(thresholds[i], color="k", ls="--", lw=1)
        kept = int((d <= thresholds[i]).sum())
        ax.set_title(f"cluster {i}: {kept}/{len(d)} kept", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.supxlabel("distance to prototype (threshold dashed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def reconstruction_grid(images, masked, recon, path, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                        max_items: int = 8) -> None:
    """Rows: originals, masked inputs, reconstructions (normalised tensors (N, 3, H, W))."""
    import torch

    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)

    def rgb(t):
        t = (t.detach().float().cpu()[:max_items] * s + m).clamp(0, 1)
        return [(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for x in t]

    rows = [("original", rgb(images)), ("masked", rgb(masked)), ("reconstructed", rgb(recon))]
    sheet = contact_sheet(rows, thumb=max(images.shape[-1], 64), label_width=120)
    import cv2

    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
