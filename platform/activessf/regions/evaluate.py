"""Scoring filtered regions against ground-truth boxes: recall, precision, matched IoU.

Matching is one-to-one and greedy by IoU (highest first) within each image, at
IoU >= ``iou``. Only regions of annotated images count towards precision.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

Box = tuple[int, int, int, int]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4); boxes are x, y, w, h."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
                 - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
                 - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def match(regions: np.ndarray, truth: np.ndarray, iou: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches (region index, truth index, IoU) with IoU >= ``iou``."""
    m = iou_matrix(regions, truth)
    pairs = sorted(((m[i, j], i, j) for i, j in zip(*np.nonzero(m >= iou))), key=lambda t: (-t[0], t[1], t[2]))
    used_r, used_t, out = set(), set(), []
    for v, i, j in pairs:
        if i not in used_r and j not in used_t:
            used_r.add(i), used_t.add(j), out.append((int(i), int(j), float(v)))
    return out


@dataclass
class EvalReport:
    label: str
    iou_threshold: float
    images: int
    truth_boxes: int
    regions: int
    matched: int
    recall: float
    precision: float
    mean_matched_iou: float
    unmatched_regions_by_overlap: dict[str, int] = field(default_factory=dict)
    regions_outside_annotations: int = 0
    recall_by_subtype: dict[str, float] = field(default_factory=dict)  # when the truth has subtypes
    best_iou_quantiles: dict[str, float] = field(default_factory=dict)  # each truth box's best IoU (0: none)

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate(
    regions_by_image: dict[str, list[Box]],
    truth_by_image: dict[str, list[tuple]],
    label: str,
    iou: float = 0.3,
) -> EvalReport:
    """Recall of ``label`` boxes and precision of regions, over the annotated images.

    Unmatched regions are tallied by the label of the ground-truth box they
    overlap most (``none`` if they overlap nothing): what the distractors are.
    """
    n_truth = n_regions = 0
    ious: list[float] = []
    distractors: Counter = Counter()
    found, present = Counter(), Counter()
    best: list[float] = []
    for key, objects in truth_by_image.items():
        targets = [o for o in objects if o[0] == label]
        truth = np.array([o[1] for o in targets], float).reshape(-1, 4)
        regs = np.array(regions_by_image.get(key, []), float).reshape(-1, 4)
        n_truth, n_regions = n_truth + len(truth), n_regions + len(regs)
        matched = match(regs, truth, iou)
        best += iou_matrix(truth, regs).max(1).tolist() if len(regs) else [0.0] * len(truth)
        ious += [v for _, _, v in matched]
        hit = {i for i, _, _ in matched}
        for j, o in enumerate(targets):
            if len(o) > 2 and o[2] is not None:
                present[o[2]] += 1
                found[o[2]] += any(t == j for _, t, _ in matched)
        all_boxes = np.array([o[1] for o in objects], float).reshape(-1, 4)
        overlap = iou_matrix(regs, all_boxes)
        for i in range(len(regs)):
            if i not in hit:
                j = int(np.argmax(overlap[i])) if overlap.shape[1] else -1
                distractors[objects[j][0] if j >= 0 and overlap[i, j] > 0 else "none"] += 1
    outside = sum(len(v) for k, v in regions_by_image.items() if k not in truth_by_image)
    return EvalReport(
        label=label,
        iou_threshold=iou,
        images=len(truth_by_image),
        truth_boxes=n_truth,
        regions=n_regions,
        matched=len(ious),
        recall=len(ious) / n_truth if n_truth else float("nan"),
        precision=len(ious) / n_regions if n_regions else float("nan"),
        mean_matched_iou=float(np.mean(ious)) if ious else float("nan"),
        unmatched_regions_by_overlap=dict(sorted(distractors.items())),
        regions_outside_annotations=outside,
        recall_by_subtype={k: found[k] / present[k] for k in sorted(present)},
        best_iou_quantiles=({f"q{int(q * 100)}": round(float(np.quantile(best, q)), 3)
                             for q in (0.1, 0.25, 0.5, 0.75, 0.9)} if best else {}),
    )


def group_regions(sources: list[str], boxes: list[Box], key) -> dict[str, list[Box]]:
    out: dict[str, list[Box]] = defaultdict(list)
    for s, b in zip(sources, boxes):
        out[key(s)].append(tuple(b))
    return dict(out)
