"""The eleven megakaryocyte subtypes, in the paper's order (Sec. I, Table I)."""

from __future__ import annotations

SUBTYPES: tuple[str, ...] = (
    "P-MK",
    "IMK",
    "CA-MK",
    "G-MK",
    "PP-MK",
    "NN-MK",
    "N-MK",
    "S-MK",
    "mMK",
    "MR-MK",
    "HL-MK",
)

DESCRIPTIONS: dict[str, str] = {
    "P-MK": "primitive megakaryocyte",
    "IMK": "immature megakaryocyte",
    "CA-MK": "megakaryocyte with cytoplasmic abnormalities",
    "G-MK": "granular megakaryocyte",
    "PP-MK": "platelet-producing megakaryocyte",
    "NN-MK": "naked nucleus megakaryocyte",
    "N-MK": "normal-sized megakaryocyte with unlobed or minimally lobed nucleus",
    "S-MK": "small megakaryocyte with unlobed or minimally lobed nucleus",
    "mMK": "micromegakaryocyte",
    "MR-MK": "multinucleated round megakaryocyte",
    "HL-MK": "large megakaryocyte with highly lobulated nucleus",
}

# The paper's long tail (Fig. 1): G-MK dominant, CA-MK and HL-MK rare. The
# figure's exact counts are not in the text; these shares follow its shape.
DEFAULT_MIX: dict[str, float] = {
    "P-MK": 0.05,
    "IMK": 0.08,
    "CA-MK": 0.015,
    "G-MK": 0.33,
    "PP-MK": 0.12,
    "NN-MK": 0.07,
    "N-MK": 0.11,
    "S-MK": 0.08,
    "mMK": 0.06,
    "MR-MK": 0.07,
    "HL-MK": 0.015,
}


def class_order(labels: list[str]) -> list[str]:
    """The paper's subtype order when the labels are subtypes, else sorted."""
    present = set(labels)
    return [s for s in SUBTYPES if s in present] if present <= set(SUBTYPES) else sorted(present)
