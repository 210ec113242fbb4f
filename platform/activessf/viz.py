"""Pictures people look at: contact sheets of cells, region overlays, the embedding map, PR curves and
galleries. Pure: arrays in, images (or PNG files) out."""

from __future__ import annotations

from typing import Optional, Sequence

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


# ------------------------------------------------------------------ the pictures people check first (issue 18)

KEPT_COLOUR = (0, 170, 0)  # RGB: kept regions
REJECTED_COLOUR = (220, 40, 40)  # RGB: regions rejected for their fill rate


def region_overlay(rgb: np.ndarray, kept: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]] = (),
                   title: str = "", max_side: int = 1024) -> np.ndarray:
    """A field with its kept boxes (green) and rejected-for-fill-rate boxes (red, thinner) drawn on it.

    ``kept`` / ``rejected``: (x, y, w, h) boxes in the field's pixels. The result is scaled down to at most
    ``max_side`` pixels and gets a white caption strip with ``title`` and the counts.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ValueError(f"region_overlay needs an RGB image (H, W, 3), got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    img = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1 else rgb.copy()
    thick = max(1, round(max(img.shape[:2]) / 400))
    for boxes, colour, t in ((rejected, REJECTED_COLOUR, max(1, thick - 1)), (kept, KEPT_COLOUR, thick + 1)):
        for x, y, bw, bh in boxes:
            p0 = (int(round(x * scale)), int(round(y * scale)))
            p1 = (int(round((x + bw) * scale)) - 1, int(round((y + bh) * scale)) - 1)
            cv2.rectangle(img, p0, p1, colour, t, cv2.LINE_AA)
    strip = np.full((40, img.shape[1], 3), 255, np.uint8)
    _text(strip, title[-90:], (6, 16), scale=0.45)
    _text(strip, f"kept {len(kept)}", (6, 34), colour=KEPT_COLOUR, scale=0.45)
    _text(strip, f"rejected: fill rate {len(rejected)}", (100, 34), colour=REJECTED_COLOUR, scale=0.45)
    return np.concatenate([strip, img])


def captioned_grid(images: Sequence[np.ndarray], captions: Sequence[str], columns: int = 6, thumb: int = 112,
                   gap: int = 6, empty: str = "none") -> np.ndarray:
    """Thumbnails with a caption (lines split on ``\\n``, up to 3) under each; ``empty`` says why there are none."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not images:
        tile = np.full((60, 360, 3), 255, np.uint8)
        _text(tile, empty, (10, 34), colour=(120, 120, 120))
        return tile
    cap_h = 3 * 14 + 4
    cell_w, cell_h = thumb + gap, thumb + cap_h + gap
    rows, cols = (len(images) + columns - 1) // columns, min(columns, len(images))
    sheet = np.full((gap + rows * cell_h, gap + cols * cell_w, 3), 255, np.uint8)
    for i, (img, cap) in enumerate(zip(images, captions)):
        y, x = gap + (i // columns) * cell_h, gap + (i % columns) * cell_w
        sheet[y : y + thumb, x : x + thumb] = thumbnail(img, thumb)
        for j, line in enumerate(cap.split("\n")[:3]):
            cv2.putText(sheet, line[: thumb // 6], (x, y + thumb + 13 + 14 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.36,
                        (20, 20, 20), 1, cv2.LINE_AA)
    return sheet


def pr_curves_figure(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], path, title: str = "") -> dict:
    """One panel: a precision-recall curve per class (one-vs-rest over every row of ``probs``), the average
    precision in the legend; a class with no positive row is listed as such. Returns class -> AP (None when
    it has no positives)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, probs = np.asarray(y), np.asarray(probs, float).reshape(len(y), -1)
    if probs.shape[1] != len(classes):
        raise ValueError(f"{probs.shape[1]} probability columns for {len(classes)} classes")
    fig, ax = plt.subplots(figsize=(8.4, 4.8))
    colours = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    aps = {}
    for c, name in enumerate(classes):
        truth = y == c
        if not truth.any():
            aps[name] = None
            ax.plot([], [], color=colours(c % colours.N), label=f"{name}: no positives")
            continue
        precision, recall, _ = precision_recall_curve(truth, probs[:, c])
        aps[name] = float(average_precision_score(truth, probs[:, c]))
        ax.step(recall, precision, where="post", color=colours(c % colours.N), lw=1.4,
                label=f"{name}: AP {aps[name]:.2f} ({int(truth.sum())})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.03),
           title=title or f"precision-recall per class ({len(y)} predictions)")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), title="class: AP (positives)",
              title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return aps


def embedding_map(path, regions: np.ndarray, selected: np.ndarray, centres: np.ndarray, thresholds: np.ndarray,
                  distance_ratio: Optional[np.ndarray] = None, labelled: Optional[np.ndarray] = None,
                  labels: Optional[Sequence[str]] = None, max_regions: int = 5000, seed: int = 0) -> dict:
    """A 2-D map of the embeddings: PCA fitted on the prototypes, the labelled cells and (a seeded sample of
    at most ``max_regions``) regions.

    Left: regions selected / rejected, labelled cells by class, prototypes (black crosses) with their
    threshold balls projected (circles of radius = threshold: a point inside a circle may still lie outside
    the ball in the full space). Right (with ``distance_ratio`` = distance / threshold per region): regions
    coloured by it, <= 1 selected. Returns what was drawn (counts, explained variance).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    regions, centres = np.asarray(regions, np.float32), np.asarray(centres, np.float32)
    selected = np.asarray(selected, bool)
    if len(centres) == 0 or centres.ndim != 2:
        raise ValueError(f"embedding_map needs prototypes (K, D), got shape {centres.shape}")
    if len(regions) != len(selected):
        raise ValueError(f"{len(regions)} regions but {len(selected)} selected flags")
    pick = np.arange(len(regions))
    if len(regions) > max_regions:
        pick = np.sort(np.random.default_rng(seed).choice(len(regions), max_regions, replace=False))
    regions, selected = regions.reshape(len(regions), centres.shape[1])[pick], selected[pick]
    ratio = None if distance_ratio is None else np.asarray(distance_ratio, float)[pick]
    labelled = np.zeros((0, centres.shape[1]), np.float32) if labelled is None else np.asarray(labelled, np.float32)
    stack = np.concatenate([centres, labelled.reshape(-1, centres.shape[1]), regions.reshape(-1, centres.shape[1])])
    n_comp = min(2, len(stack) - 1, stack.shape[1])  # one point (or one dimension) has no second axis
    pca = PCA(n_components=max(n_comp, 1), svd_solver="full", random_state=seed)
    xy = np.zeros((len(stack), 2))
    if n_comp >= 1:
        xy[:, :n_comp] = pca.fit_transform(stack)
    else:
        pca.explained_variance_ratio_ = np.zeros(0)
    pc, pl, pr = xy[: len(centres)], xy[len(centres): len(centres) + len(labelled)], xy[len(centres) + len(labelled):]
    panels = 2 if ratio is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.6 * panels, 5.6), squeeze=False)
    ax = axes[0, 0]
    ax.scatter(pr[~selected, 0], pr[~selected, 1], s=5, c="lightgrey", label=f"rejected ({int((~selected).sum())})")
    ax.scatter(pr[selected, 0], pr[selected, 1], s=6, c="tab:purple", alpha=0.7,
               label=f"selected ({int(selected.sum())})")
    names = sorted(set(labels)) if labels is not None and len(labelled) else []
    marks = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for i, name in enumerate(names):
        m = np.array([lab == name for lab in labels])
        ax.scatter(pl[m, 0], pl[m, 1], s=22, marker="^", color=marks(i % marks.N), edgecolors="k", linewidths=0.3,
                   label=f"labelled {name} ({int(m.sum())})")
    ax.scatter(pc[:, 0], pc[:, 1], s=70, marker="X", c="k", label=f"prototypes ({len(centres)})")
    limits = (ax.get_xlim(), ax.get_ylim())
    for (cx, cy), r in zip(pc, np.asarray(thresholds, float)):
        if r > 0:
            ax.add_patch(plt.Circle((cx, cy), r, fill=False, ls="--", lw=0.8, color="k", alpha=0.6))
    ax.set(xlim=limits[0], ylim=limits[1], xlabel=_pc_label(pca, 0), ylabel=_pc_label(pca, 1),
           title="regions, labelled cells and prototypes\n(circles: threshold balls projected to 2-D, approximate)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6, loc="best", markerscale=1.2)
    if ratio is not None:
        _ratio_panel(fig, axes[0, 1], pr, pc, ratio, limits, _pc_label(pca, 0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return {"regions_drawn": len(pick), "labelled": len(labelled), "prototypes": len(centres),
            "explained_variance": [float(v) for v in np.nan_to_num(pca.explained_variance_ratio_)]}


def _ratio_panel(fig, ax, pr: np.ndarray, pc: np.ndarray, ratio: np.ndarray, limits, xlabel: str) -> None:
    """Regions coloured by distance / own threshold (<= 1 selected), the nearest drawn on top."""
    shown = np.clip(ratio, 0, 3)
    order = np.argsort(-shown, kind="stable")
    sc = ax.scatter(pr[order, 0], pr[order, 1], s=6, c=shown[order], cmap="coolwarm", vmin=0, vmax=2)
    ax.scatter(pc[:, 0], pc[:, 1], s=70, marker="X", c="k")
    fig.colorbar(sc, ax=ax, label="distance / own prototype's threshold (<= 1: selected; clipped at 2)")
    ax.set(xlim=limits[0], ylim=limits[1], xlabel=xlabel, title="distance / threshold per region")
    ax.title.set_fontsize(9)


def _pc_label(pca, i: int) -> str:
    ratios = np.nan_to_num(pca.explained_variance_ratio_)
    return f"PC{i + 1} ({100 * ratios[i]:.0f}% of variance)" if i < len(ratios) else f"PC{i + 1}"
