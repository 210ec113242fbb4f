"""Drawing stained cells as optical density (OD) patches.

A smear is rendered in optical density (absorbance, base 10; Beer-Lambert), so
overlapping cells add up and the final image is ``illumination * 10 ** -OD``.
Every drawing function here returns a local ``(S, S, 3)`` float32 OD patch and
an ``(S, S)`` coverage mask; :mod:`activessf.data.synth` places them on a field.

Stain colours (OD per R, G, B channel) are chosen so that nuclei and
megakaryocyte cytoplasm fall inside the paper's purple HSV range while red
cells, pale leukocyte cytoplasm and eosinophil granules do not: the filter has
to work for its regions, it is not handed a colour code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

# Absorbance per channel (R, G, B) of each stained component at density 1.
OD_NUCLEUS = np.array([0.62, 0.80, 0.32], np.float32)  # azure/haematoxylin purple
OD_GRANULAR = np.array([0.30, 0.48, 0.12], np.float32)  # mature lilac cytoplasm
OD_BASOPHILIC = np.array([0.48, 0.36, 0.10], np.float32)  # immature blue cytoplasm
OD_GRANULE = np.array([0.40, 0.64, 0.22], np.float32)  # azurophilic granules, platelets
OD_RBC = np.array([0.03, 0.19, 0.12], np.float32)  # eosin pink
OD_PALE = np.array([0.06, 0.12, 0.08], np.float32)  # neutrophil cytoplasm
OD_EOSIN = np.array([0.05, 0.45, 0.55], np.float32)  # eosinophil granules (orange)
OD_GREY_BLUE = np.array([0.18, 0.20, 0.12], np.float32)  # monocyte cytoplasm
OD_PRECIPITATE = np.array([0.70, 0.85, 0.45], np.float32)  # stain precipitate
OD_FIBRE = np.array([0.22, 0.24, 0.25], np.float32)  # dust, fibres


@dataclass(frozen=True)
class CellStyle:
    """Everything that decides how one cell looks; sampled per cell."""

    diameter: float  # cytoplasm outline, pixels
    cyto_od: np.ndarray  # (3,) cytoplasm colour; zero = naked nucleus
    cyto_density: float
    irregularity: float  # amplitude of outline harmonics, relative to the radius
    nucleus: str  # round | indented | bilobed | lobulated | hyper | multi
    lobes: int
    nc_ratio: float  # nuclear extent radius / cell radius
    nucleus_density: float
    granules: float = 0.0  # granules per pixel of cytoplasm
    rim_granules: float = 0.0  # extra granules near the rim (platelet territories)
    granule_od: np.ndarray = field(default_factory=lambda: OD_GRANULE)
    buds: int = 0  # platelet buds at the rim
    blebs: int = 0  # cytoplasmic blebs
    vacuoles: int = 0
    nucleoli: int = 0
    eccentric: float = 0.0  # nucleus offset, relative to the cell radius


# ------------------------------------------------------------------ geometry


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates relative to the patch centre: (dy, dx), each (S, S)."""
    c = (size - 1) / 2.0
    dy, dx = np.mgrid[0:size, 0:size].astype(np.float32)
    return dy - c, dx - c


def ellipse_mask(dy, dx, cy, cx, ry, rx, angle) -> np.ndarray:
    """Anti-aliased filled ellipse (values in [0, 1]), rotated by ``angle`` radians."""
    y, x = dy - cy, dx - cx
    ca, sa = np.cos(angle), np.sin(angle)
    u = (x * ca + y * sa) / rx
    v = (-x * sa + y * ca) / ry
    d = np.sqrt(u * u + v * v)
    return np.clip((1.0 - d) * min(rx, ry) + 0.5, 0.0, 1.0)


def outline_radius(theta: np.ndarray, radius: float, harmonics: np.ndarray, phases: np.ndarray):
    """R(theta) = r (1 + sum_k a_k cos(k theta + phi_k)), k = 2, 3, ... (irregular outline)."""
    theta = np.asarray(theta, np.float32)
    k = np.arange(2, 2 + len(harmonics), dtype=np.float32).reshape((-1,) + (1,) * theta.ndim)
    shape = (-1,) + (1,) * theta.ndim
    wobble = (harmonics.reshape(shape) * np.cos(k * theta + phases.reshape(shape))).sum(0)
    return radius * (1.0 + wobble)


def smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] over a (size, size) patch; ``scale`` = blob size in px."""
    cells = max(2, size // max(scale, 1) + 2)
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(field / 2.0, -1.0, 1.0)


def scatter_points(mask: np.ndarray, count: int, rng: np.random.Generator, weight=None) -> np.ndarray:
    """``count`` pixel positions (N, 2) drawn inside ``mask > 0.5``, optionally weighted."""
    ys, xs = np.nonzero(mask > 0.5)
    if count <= 0 or len(ys) == 0:
        return np.zeros((0, 2), np.int64)
    p = None
    if weight is not None:
        w = weight[ys, xs].astype(np.float64)
        p = w / w.sum() if w.sum() > 0 else None
    idx = rng.choice(len(ys), size=count, replace=True, p=p)
    return np.stack([ys[idx], xs[idx]], 1)


def dots(shape, points: np.ndarray, sigma: float, peak: float) -> np.ndarray:
    """Gaussian dots of height ``peak`` at ``points`` (N, 2); overlapping dots add."""
    img = np.zeros(shape, np.float32)
    if len(points):
        np.add.at(img, (points[:, 0], points[:, 1]), 1.0)
        img = cv2.GaussianBlur(img, (0, 0), sigma) * (2 * np.pi * sigma * sigma * peak)
    return img


# ------------------------------------------------------------------ nuclei


def lobe_chain(rng, n: int, extent: float, step: float, turn: float) -> tuple[np.ndarray, float]:
    """Centres (n, 2) of a chain of touching lobes from a turning random walk, and the lobe radius.

    The chain is built with unit lobes and then scaled as a whole so that it
    reaches exactly ``extent`` from its centre: lobes keep their overlap.
    """
    pts = np.zeros((n, 2), np.float32)
    heading = rng.uniform(0, 2 * np.pi)
    for i in range(1, n):
        heading += rng.normal(0.0, turn)
        pts[i] = pts[i - 1] + step * np.array([np.sin(heading), np.cos(heading)])
    pts -= pts.mean(0)
    lobe = 1.25  # lobe radius in step units: neighbouring lobes overlap a little
    scale = extent / (np.sqrt((pts**2).sum(1)).max() + lobe)
    return pts * scale, lobe * scale


def separate_centres(rng, n: int, radius: float, extent: float, gap: float) -> np.ndarray:
    """Up to ``n`` centres (k, 2) of non-touching discs of ``radius`` inside ``extent``."""
    pts: list[np.ndarray] = []
    for _ in range(400):
        if len(pts) == n:
            break
        r = np.sqrt(rng.uniform()) * max(extent - radius, 0.0)
        a = rng.uniform(0, 2 * np.pi)
        p = np.array([r * np.sin(a), r * np.cos(a)], np.float32)
        if all(np.hypot(*(p - q)) >= 2 * radius + gap for q in pts):
            pts.append(p)
    return np.array(pts, np.float32).reshape(-1, 2)


def nucleus_mask(rng, dy, dx, style: CellStyle, radius: float, centre) -> np.ndarray:
    """Soft nuclear mask (S, S) of the configured shape, extent ``nc_ratio * radius``."""
    extent = style.nc_ratio * radius
    cy, cx = centre
    kind, n = style.nucleus, max(style.lobes, 1)
    if kind in ("round", "indented"):
        ang = rng.uniform(0, np.pi)
        m = ellipse_mask(dy, dx, cy, cx, extent * rng.uniform(0.8, 1.0), extent, ang)
        if kind == "indented":  # kidney shape: bite out of one side
            a = rng.uniform(0, 2 * np.pi)
            bite = ellipse_mask(dy, dx, cy + extent * np.sin(a), cx + extent * np.cos(a),
                                extent * 0.45, extent * 0.45, 0.0)
            m = m * (1.0 - bite)
        return m
    if kind == "bilobed":
        pts, lobe_r = lobe_chain(rng, 2, extent, step=rng.uniform(1.0, 1.5), turn=0.0)
    elif kind == "lobulated":
        pts, lobe_r = lobe_chain(rng, n, extent, step=rng.uniform(1.1, 1.5), turn=1.1)
    elif kind == "hyper":  # many lobes around a ring: the "cluster of grapes" look
        lobe_r = extent * rng.uniform(0.26, 0.34)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n)) + rng.normal(0, 0.1, n)
        ring = (extent - lobe_r) * rng.uniform(0.75, 1.0, n)
        pts = np.stack([ring * np.sin(ang), ring * np.cos(ang)], 1).astype(np.float32)
    elif kind == "multi":
        lobe_r = extent * rng.uniform(0.75, 0.9) / np.sqrt(n)
        pts = separate_centres(rng, n, lobe_r, extent, gap=max(2.0, 0.25 * lobe_r))
        while len(pts) < n:  # did not fit: smaller nuclei until all n are separate
            lobe_r *= 0.85
            pts = separate_centres(rng, n, lobe_r, extent, gap=max(2.0, 0.25 * lobe_r))
    else:
        raise ValueError(f"unknown nucleus kind {kind!r}")
    m = np.zeros(dy.shape, np.float32)
    for py, px in pts:
        r = lobe_r * rng.uniform(0.8, 1.1)
        lobe = ellipse_mask(dy, dx, cy + py, cx + px, r * rng.uniform(0.7, 1.0), r, rng.uniform(0, np.pi))
        np.maximum(m, lobe, out=m)
    if kind in ("lobulated", "hyper") and len(pts) > 1:  # thin chromatin bridges between lobes
        m = np.maximum(m, _bridges(dy.shape, pts + np.array([cy, cx]), width=max(1, int(lobe_r * 0.25))))
    return m


def _bridges(shape, pts: np.ndarray, width: int) -> np.ndarray:
    img = np.zeros(shape, np.float32)
    c = (shape[0] - 1) / 2.0
    line = [(int(round(x + c)), int(round(y + c))) for y, x in pts]
    for a, b in zip(line[:-1], line[1:]):
        cv2.line(img, a, b, 1.0, width, cv2.LINE_AA)
    return img


# ------------------------------------------------------------------ one cell


def render_cell(rng: np.random.Generator, style: CellStyle) -> tuple[np.ndarray, np.ndarray]:
    """OD patch (S, S, 3) and coverage mask (S, S) of one cell at the patch centre."""
    # long: the cell's layers (outline, nucleus, cytoplasm, granules, buds) drawn in one fixed order of RNG
    # calls; that order is what makes a seed reproduce a dataset byte for byte, so it stays in one place.
    radius = style.diameter / 2.0
    size = int(np.ceil(radius * 1.3 + 10)) * 2
    dy, dx = _grid(size)
    theta = np.arctan2(dy, dx)
    rr = np.sqrt(dy * dy + dx * dx)

    harmonics = rng.standard_normal(5).astype(np.float32) * style.irregularity / np.arange(2, 7) * 1.5
    phases = rng.uniform(0, 2 * np.pi, 5).astype(np.float32)
    outline = outline_radius(theta, radius, harmonics, phases)
    cyto = np.clip(outline - rr + 0.5, 0.0, 1.0)
    for _ in range(style.blebs):  # rounded cytoplasmic protrusions
        a = rng.uniform(-np.pi, np.pi)
        r_edge = float(outline_radius(np.float32(a), radius, harmonics, phases))
        br = radius * rng.uniform(0.12, 0.22)
        np.maximum(cyto, ellipse_mask(dy, dx, r_edge * np.sin(a), r_edge * np.cos(a), br, br, 0.0), out=cyto)

    ecc = style.eccentric * radius
    a = rng.uniform(0, 2 * np.pi)
    centre = (ecc * np.sin(a), ecc * np.cos(a))
    nuc = nucleus_mask(rng, dy, dx, style, radius, centre)
    nuc *= style.nucleus_density * (0.88 + 0.24 * smooth_noise(rng, size, 6))
    for _ in range(style.nucleoli):  # pale nucleoli inside the nucleus
        p = scatter_points(nuc > 0.6, 1, rng)
        if len(p):
            r = style.nc_ratio * radius * rng.uniform(0.1, 0.18)
            spot = ellipse_mask(dy, dx, p[0, 0] - (size - 1) / 2, p[0, 1] - (size - 1) / 2, r, r, 0.0)
            nuc *= 1.0 - 0.5 * spot

    has_cyto = float(style.cyto_od.sum() > 0)
    texture = 0.88 + 0.24 * smooth_noise(rng, size, 10)
    cyto_density = cyto * style.cyto_density * texture * has_cyto
    for _ in range(style.vacuoles):  # clear vacuoles punched into the cytoplasm
        p = scatter_points((cyto > 0.9) & (nuc < 0.1), 1, rng)
        if len(p):
            r = rng.uniform(2.5, max(3.0, radius * 0.09))
            hole = ellipse_mask(dy, dx, p[0, 0] - (size - 1) / 2, p[0, 1] - (size - 1) / 2, r, r * rng.uniform(0.7, 1), 0.0)
            cyto_density *= 1.0 - 0.92 * hole
            cyto *= 1.0 - 0.92 * hole

    area = float((cyto > 0.5).sum()) * has_cyto
    grains = scatter_points(cyto * (nuc < 0.3), int(style.granules * area), rng)
    rim = np.clip(rr / np.maximum(outline, 1.0), 0, 1) ** 4
    grains = np.concatenate([grains, scatter_points(cyto, int(style.rim_granules * area), rng, weight=rim)])
    granule = dots((size, size), grains, sigma=0.9, peak=0.55) * (cyto > 0.3)

    buds = np.zeros((size, size), np.float32)
    for _ in range(style.buds):  # platelets budding off the rim
        a = rng.uniform(-np.pi, np.pi)
        r_edge = float(outline_radius(np.float32(a), radius, harmonics, phases)) * rng.uniform(1.0, 1.1)
        br = rng.uniform(2.5, 5.5)
        np.maximum(buds, ellipse_mask(dy, dx, r_edge * np.sin(a), r_edge * np.cos(a), br, br * rng.uniform(0.7, 1), 0.0), out=buds)

    free = 1.0 - np.clip(nuc, 0, 1)
    od = (
        (cyto_density * free)[..., None] * style.cyto_od
        + (granule * free)[..., None] * style.granule_od
        + (buds * 0.9)[..., None] * OD_GRANULE
        + nuc[..., None] * OD_NUCLEUS
    )
    coverage = np.maximum(np.maximum(cyto * has_cyto, np.clip(nuc, 0, 1)), buds)
    return od.astype(np.float32), coverage


# ------------------------------------------------------------------ others


def render_rbc(rng: np.random.Generator, diameter: float) -> tuple[np.ndarray, np.ndarray]:
    """A biconcave red cell: denser rim, pale centre (central pallor)."""
    r = diameter / 2.0
    size = int(np.ceil(r + 2)) * 2
    dy, dx = _grid(size)
    disk = ellipse_mask(dy, dx, 0, 0, r * rng.uniform(0.85, 1.0), r, rng.uniform(0, np.pi))
    rr = np.sqrt(dy * dy + dx * dx) / r
    density = disk * (0.5 + 0.5 * np.clip(rr, 0, 1) ** 2) * rng.uniform(0.8, 1.15)
    return density[..., None] * OD_RBC, disk


def render_blob(rng, diameter: float, od: np.ndarray, irregularity: float, density: float):
    """An irregular dense blob (stain precipitate, debris clump, a platelet)."""
    r = diameter / 2.0
    size = int(np.ceil(r * 1.4 + 3)) * 2
    dy, dx = _grid(size)
    theta = np.arctan2(dy, dx)
    harmonics = rng.standard_normal(5).astype(np.float32) * irregularity / np.sqrt(np.arange(2, 7))
    outline = outline_radius(theta, r, harmonics, rng.uniform(0, 2 * np.pi, 5).astype(np.float32))
    mask = np.clip(outline - np.sqrt(dy * dy + dx * dx) + 0.5, 0, 1)
    texture = 0.75 + 0.5 * (smooth_noise(rng, size, max(2, int(r / 3))) * 0.5 + 0.5)
    return (mask * texture * density)[..., None] * od, mask


def render_fibre(rng, length: float) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved grey fibre (dust); low saturation, so the colour masks ignore it."""
    size = int(length) + 8
    img = np.zeros((size, size), np.float32)
    p = np.array([size / 2, size / 2], np.float64)
    heading = rng.uniform(0, 2 * np.pi)
    pts = [p.copy()]
    for _ in range(int(length / 4)):
        heading += rng.normal(0, 0.25)
        p = np.clip(p + 4 * np.array([np.cos(heading), np.sin(heading)]), 2, size - 3)
        pts.append(p.copy())
    cv2.polylines(img, [np.round(np.array(pts)).astype(np.int32)], False, 1.0, int(rng.integers(1, 3)), cv2.LINE_AA)
    return img[..., None] * OD_FIBRE * rng.uniform(0.5, 1.2), img
