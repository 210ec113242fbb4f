"""What each megakaryocyte subtype looks like: distributions of cell styles.

Subtypes differ by the morphology their names describe (NOTES, "The eleven
subtypes"): size, nuclear shape and lobation, number of nuclei, presence and
maturity of cytoplasm, granularity, platelet budding, vacuoles. Ranges overlap
between neighbouring subtypes (S-MK vs N-MK vs mMK by size, G-MK vs PP-MK by
budding, N-MK vs G-MK by lobation) so that classification is a real task.
Diameters are in pixels at the generator's scale (red cells about 22-30 px).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..subtypes import SUBTYPES
from .cells import (
    OD_BASOPHILIC,
    OD_EOSIN,
    OD_GRANULAR,
    OD_GREY_BLUE,
    OD_PALE,
    CellStyle,
)

Span = tuple[float, float]


@dataclass(frozen=True)
class SubtypeSpec:
    """Ranges from which one megakaryocyte of a subtype is drawn (uniform in each)."""

    diameter: Span
    maturity: Span  # 0 = basophilic (blue) cytoplasm, 1 = mature granular (lilac)
    nc_ratio: Span  # nuclear extent / cell radius
    nucleus: tuple[str, ...]  # nuclear shapes, one chosen per cell
    lobes: tuple[int, int]
    irregularity: Span = (0.02, 0.07)
    granules: Span = (0.0, 0.0)
    rim_granules: Span = (0.0, 0.0)
    buds: tuple[int, int] = (0, 0)
    blebs: tuple[int, int] = (0, 0)
    vacuoles: tuple[int, int] = (0, 0)
    nucleoli: tuple[int, int] = (0, 0)
    naked: bool = False
    nucleus_density: Span = (0.9, 1.1)
    eccentric: Span = (0.0, 0.15)


SPECS: dict[str, SubtypeSpec] = {
    # primitive: small, deep-blue scanty cytoplasm, big round nucleus with nucleoli, blebs
    "P-MK": SubtypeSpec((72, 108), (0.0, 0.15), (0.68, 0.82), ("round",), (1, 1),
                        irregularity=(0.03, 0.09), granules=(0.0, 0.002), blebs=(0, 4), nucleoli=(1, 3)),
    # immature: larger, blue-to-lilac cytoplasm, few granules, round or indented nucleus
    "IMK": SubtypeSpec((95, 140), (0.2, 0.55), (0.5, 0.68), ("round", "indented", "bilobed"), (1, 2),
                       granules=(0.003, 0.012), blebs=(0, 2), nucleoli=(0, 1)),
    # cytoplasmic abnormalities: vacuoles, irregular ragged outline, hypogranular
    "CA-MK": SubtypeSpec((110, 170), (0.55, 1.0), (0.4, 0.56), ("lobulated", "bilobed"), (2, 5),
                         irregularity=(0.09, 0.2), granules=(0.004, 0.02), vacuoles=(4, 14)),
    # granular: large, abundant densely granular cytoplasm, lobulated nucleus
    "G-MK": SubtypeSpec((118, 182), (0.85, 1.0), (0.42, 0.6), ("lobulated",), (3, 6),
                        granules=(0.025, 0.045), buds=(0, 2), vacuoles=(0, 1)),
    # platelet-producing: granular with platelet buds and granule clusters at the rim
    "PP-MK": SubtypeSpec((118, 182), (0.9, 1.0), (0.4, 0.56), ("lobulated",), (3, 6),
                         irregularity=(0.05, 0.12), granules=(0.02, 0.04), rim_granules=(0.01, 0.03),
                         buds=(6, 22)),
    # naked nucleus: a dense lobulated nucleus with no cytoplasm
    "NN-MK": SubtypeSpec((72, 112), (1.0, 1.0), (0.85, 0.98), ("lobulated", "bilobed"), (2, 6),
                         naked=True, nucleus_density=(1.05, 1.3)),
    # normal-sized, unlobed or minimally lobed nucleus
    "N-MK": SubtypeSpec((115, 160), (0.8, 1.0), (0.38, 0.52), ("round", "indented", "bilobed"), (1, 2),
                        granules=(0.02, 0.04), buds=(0, 1)),
    # small, unlobed or minimally lobed nucleus
    "S-MK": SubtypeSpec((84, 120), (0.75, 1.0), (0.42, 0.58), ("round", "indented", "bilobed"), (1, 2),
                        granules=(0.02, 0.04)),
    # micromegakaryocyte: very small, dense round nucleus, thin mature cytoplasm
    "mMK": SubtypeSpec((70, 90), (0.7, 1.0), (0.5, 0.68), ("round",), (1, 1),
                       granules=(0.015, 0.035), nucleus_density=(1.0, 1.2)),
    # multinucleated round: several separate round nuclei
    "MR-MK": SubtypeSpec((110, 172), (0.75, 1.0), (0.5, 0.68), ("multi",), (2, 7),
                         granules=(0.02, 0.04)),
    # large, highly lobulated nucleus
    "HL-MK": SubtypeSpec((162, 218), (0.85, 1.0), (0.5, 0.66), ("hyper",), (7, 14),
                         granules=(0.025, 0.045), buds=(0, 2)),
}

assert tuple(SPECS) == SUBTYPES


def _u(rng: np.random.Generator, span: Span) -> float:
    return float(rng.uniform(span[0], span[1])) if span[1] > span[0] else float(span[0])


def _i(rng: np.random.Generator, span: tuple[int, int]) -> int:
    return int(rng.integers(span[0], span[1] + 1))


def megakaryocyte_style(rng: np.random.Generator, subtype: str, stain: float = 1.0) -> CellStyle:
    """Draw the look of one megakaryocyte of ``subtype``; ``stain`` scales intensity."""
    spec = SPECS[subtype]
    maturity = _u(rng, spec.maturity)
    cyto_od = (1 - maturity) * OD_BASOPHILIC + maturity * OD_GRANULAR
    lobes = _i(rng, spec.lobes)
    nucleus = spec.nucleus[int(rng.integers(len(spec.nucleus)))]
    if nucleus == "bilobed":
        lobes = 2
    return CellStyle(
        diameter=_u(rng, spec.diameter),
        cyto_od=(cyto_od * 0 if spec.naked else cyto_od).astype(np.float32),
        cyto_density=stain * rng.uniform(0.85, 1.15),
        irregularity=_u(rng, spec.irregularity),
        nucleus=nucleus,
        lobes=lobes,
        nc_ratio=_u(rng, spec.nc_ratio),
        nucleus_density=stain * _u(rng, spec.nucleus_density),
        granules=_u(rng, spec.granules),
        rim_granules=_u(rng, spec.rim_granules),
        buds=_i(rng, spec.buds),
        blebs=_i(rng, spec.blebs),
        vacuoles=_i(rng, spec.vacuoles),
        nucleoli=_i(rng, spec.nucleoli),
        eccentric=_u(rng, spec.eccentric),
    )


LEUKOCYTES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "normoblast")
LEUKOCYTE_SHARES = (0.35, 0.25, 0.1, 0.1, 0.2)


def leukocyte_style(rng: np.random.Generator, kind: str, stain: float = 1.0) -> CellStyle:
    """Small marrow cells, all well below the 70 px box of the region filter."""
    d = stain
    if kind == "neutrophil":
        return CellStyle(rng.uniform(26, 36), OD_PALE, d, 0.03, "lobulated", int(rng.integers(3, 6)),
                         0.6, d * 1.1, granules=0.01)
    if kind == "lymphocyte":
        return CellStyle(rng.uniform(18, 26), OD_BASOPHILIC * 0.8, d, 0.02, "round", 1, 0.85, d * 1.15)
    if kind == "monocyte":
        return CellStyle(rng.uniform(30, 44), OD_GREY_BLUE, d, 0.05, "indented", 1, 0.6, d)
    if kind == "eosinophil":
        return CellStyle(rng.uniform(26, 34), OD_PALE, d, 0.03, "bilobed", 2, 0.55, d,
                         granules=0.25, granule_od=OD_EOSIN)
    if kind == "normoblast":
        return CellStyle(rng.uniform(16, 24), OD_PALE * 1.5, d, 0.02, "round", 1, 0.7, d * 1.3)
    raise ValueError(f"unknown leukocyte kind {kind!r}; known: {LEUKOCYTES}")
