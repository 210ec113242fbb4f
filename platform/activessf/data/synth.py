"""Synthetic bone-marrow smear fields: the embedded default data.

The clinical data of the paper is private and no public megakaryocyte images
exist, so the platform ships this generator. It writes

    DIR/smears/field_NNNNN.png          whole smear fields (PNG, RGB)
    DIR/labelled/<subtype>/<subtype>_NNNNN.png
                                        labelled crops from *separate* fields (the set T)
    DIR/labelled.csv                    path,label for the labelled crops
    DIR/ground_truth.json               every cell of every field: type, subtype, box
    DIR/config.yaml                     the generator settings

Deterministic: every field is drawn from its own seeded stream
``(seed, stream, index)``, so the same arguments give byte-identical files
whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..config import SynthConfig, save_config, to_yaml
from ..imageio import write_png
from ..subtypes import SUBTYPES
from .cells import OD_PRECIPITATE, OD_GRANULE, render_blob, render_cell, render_fibre, render_rbc
from .morphology import LEUKOCYTE_SHARES, LEUKOCYTES, leukocyte_style, megakaryocyte_style

log = logging.getLogger(__name__)

GROUND_TRUTH = "ground_truth.json"
FORMAT_VERSION = 1
_FIELDS, _LABELLED, _PLAN = 1, 2, 3  # independent random streams


@dataclass
class Cell:
    """One object in a field; ``box`` is (x, y, w, h) in pixels."""

    type: str  # megakaryocyte | leukocyte | platelet | rbc | debris
    box: tuple[int, int, int, int]
    subtype: str | None = None  # megakaryocyte subtype or leukocyte kind

    def as_dict(self) -> dict:
        return {"type": self.type, "subtype": self.subtype, "box": list(self.box)}


@dataclass
class Field:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    cells: list[Cell] = field(default_factory=list)


# ------------------------------------------------------------------ planning


def allocate(shares: Sequence[float], total: int) -> np.ndarray:
    """Integer counts summing to ``total``, proportional to ``shares`` (largest remainder)."""
    shares = np.asarray(shares, np.float64)
    exact = shares / shares.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def plan_field_subtypes(cfg: SynthConfig, seed: int) -> list[list[str]]:
    """Megakaryocyte subtypes of every field; the whole dataset follows ``cfg.mix`` exactly."""
    rng = np.random.default_rng([seed, _PLAN])
    lo, hi = cfg.megakaryocytes
    per_field = rng.integers(lo, hi + 1, size=cfg.images)
    names = np.repeat(np.array(SUBTYPES), allocate(list(cfg.mix.values()), int(per_field.sum())))
    rng.shuffle(names)
    bounds = np.concatenate([[0], np.cumsum(per_field)])
    return [list(names[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def labelled_counts(cfg: SynthConfig) -> dict[str, int]:
    """Per-subtype size of the labelled set: the mix, with a floor per class, summing to ``labelled``."""
    if cfg.labelled == 0:
        return {name: 0 for name in SUBTYPES}
    floor = cfg.labelled_min_per_class  # SynthConfig guarantees labelled >= floor * classes
    counts = allocate(list(cfg.mix.values()), cfg.labelled)
    deficit = np.maximum(floor - counts, 0)
    counts += deficit
    for _ in range(int(deficit.sum())):  # take the excess from the largest classes
        counts[int(np.argmax(counts))] -= 1
    return dict(zip(SUBTYPES, counts.tolist()))


def plan_labelled_subtypes(cfg: SynthConfig, seed: int, per_field: int = 3) -> list[list[str]]:
    counts = labelled_counts(cfg)
    names = np.repeat(np.array(SUBTYPES), [counts[n] for n in SUBTYPES])
    np.random.default_rng([seed, _PLAN, 1]).shuffle(names)
    return [list(names[i : i + per_field]) for i in range(0, len(names), per_field)]


# ------------------------------------------------------------------ one field


def _stamp(canvas: np.ndarray, patch: np.ndarray, cy: float, cx: float) -> tuple[int, int]:
    """Add ``patch`` centred at (cy, cx) into ``canvas`` (clipped); returns its top-left corner."""
    h, w = patch.shape[:2]
    y0, x0 = int(round(cy - h / 2)), int(round(cx - w / 2))
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + h, canvas.shape[0]), min(x0 + w, canvas.shape[1])
    if ys < ye and xs < xe:
        canvas[ys:ye, xs:xe] += patch[ys - y0 : ye - y0, xs - x0 : xe - x0]
    return y0, x0


def _box(mask: np.ndarray, y0: int, x0: int, shape, threshold: float = 0.25):
    """(x, y, w, h) of ``mask > threshold`` placed at (y0, x0), clipped to the field."""
    ys, xs = np.nonzero(mask > threshold)
    if len(ys) == 0:
        return None
    ya, yb = max(y0 + ys.min(), 0), min(y0 + ys.max() + 1, shape[0])
    xa, xb = max(x0 + xs.min(), 0), min(x0 + xs.max() + 1, shape[1])
    if ya >= yb or xa >= xb:
        return None
    return (int(xa), int(ya), int(xb - xa), int(yb - ya))


class FieldPainter:
    """Composes one smear field in optical density, then images it."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator, height: int, width: int):
        self.cfg, self.rng = cfg, rng
        self.shape = (height, width)
        self.od = np.zeros((height, width, 3), np.float32)
        self.cells: list[Cell] = []
        self.keep_out: list[tuple[float, float, float]] = []  # (y, x, r) discs red cells avoid
        jitter = cfg.stain_jitter
        self.stain = float(np.exp(rng.normal(0, jitter * 0.6)))
        self.tint = np.exp(rng.normal(0, jitter * 0.25, 3)).astype(np.float32)

    def add(self, od: np.ndarray, mask: np.ndarray, cy: float, cx: float, cell: Cell | None) -> None:
        y0, x0 = _stamp(self.od, od * self.tint, cy, cx)
        if cell is not None:
            box = _box(mask, y0, x0, self.shape)
            if box is not None:
                cell.box = box
                self.cells.append(cell)

    def place(self, radius: float, margin: float = 0.0, tries: int = 200) -> tuple[float, float]:
        """A centre whose disc of ``radius`` avoids the keep-out discs and fits the field."""
        h, w = self.shape
        lo = radius + margin
        for _ in range(tries):
            cy, cx = self.rng.uniform(lo, max(lo + 1, h - lo)), self.rng.uniform(lo, max(lo + 1, w - lo))
            if all(np.hypot(cy - y, cx - x) > radius + r for y, x, r in self.keep_out):
                return cy, cx
        return cy, cx

    def megakaryocyte(self, subtype: str) -> tuple[float, float, float]:
        style = megakaryocyte_style(self.rng, subtype, self.stain * self._cell_stain())
        od, mask = render_cell(self.rng, style)
        r = style.diameter / 2 * 1.1
        cy, cx = self.place(r, margin=4)
        self.keep_out.append((cy, cx, r))
        self.add(od, mask, cy, cx, Cell("megakaryocyte", (0, 0, 0, 0), subtype))
        return cy, cx, r

    def leukocyte(self) -> None:
        kind = LEUKOCYTES[int(self.rng.choice(len(LEUKOCYTES), p=LEUKOCYTE_SHARES))]
        style = leukocyte_style(self.rng, kind, self.stain * self._cell_stain())
        od, mask = render_cell(self.rng, style)
        cy, cx = self.place(style.diameter / 2)
        self.keep_out.append((cy, cx, style.diameter / 2))
        self.add(od, mask, cy, cx, Cell("leukocyte", (0, 0, 0, 0), kind))

    def platelets(self, count: int) -> None:
        i = 0
        while i < count:  # singles, and now and then a small clump
            n = 1 if self.rng.uniform() < 0.8 else int(self.rng.integers(3, 9))
            cy, cx = self.place(4)
            for _ in range(n):
                oy, ox = self.rng.normal(0, 5, 2) if n > 1 else (0.0, 0.0)
                od, mask = render_blob(self.rng, self.rng.uniform(4, 9), OD_GRANULE, 0.15, self.stain * 0.9)
                self.add(od, mask, cy + oy, cx + ox, Cell("platelet", (0, 0, 0, 0)))
            i += n

    def red_cells(self) -> None:
        h, w = self.shape
        mean_d = 26.0
        n = int(self.cfg.rbc_coverage * h * w / (np.pi * (mean_d / 2) ** 2))
        templates = [render_rbc(self.rng, d) for d in self.rng.uniform(21, 31, 8)]
        ys, xs = self.rng.uniform(0, h, 3 * n), self.rng.uniform(0, w, 3 * n)
        ok = np.ones(len(ys), bool)
        for y, x, r in self.keep_out:  # red cells are pushed aside by the big cells
            ok &= np.hypot(ys - y, xs - x) > r * 0.92 + mean_d / 2
        for y, x in list(zip(ys[ok], xs[ok]))[:n]:
            od, mask = templates[int(self.rng.integers(len(templates)))]
            self.add(od, mask, y, x, Cell("rbc", (0, 0, 0, 0)))

    def debris(self, count: int, clumps: int) -> None:
        for _ in range(count):
            if self.rng.uniform() < 0.3:
                od, mask = render_fibre(self.rng, self.rng.uniform(20, 110))
                cell = None  # fibres are not cells; they are noise, not ground truth
            else:
                od, mask = render_blob(self.rng, self.rng.uniform(2, 7), OD_PRECIPITATE, 0.3, 0.8)
                cell = Cell("debris", (0, 0, 0, 0), "speck")
            cy, cx = self.rng.uniform(0, self.shape[0]), self.rng.uniform(0, self.shape[1])
            self.add(od, mask, cy, cx, cell)
        for _ in range(clumps):  # large precipitate: the distractor that can pass the filter
            d = self.rng.uniform(35, 110)
            od, mask = render_blob(self.rng, d, OD_PRECIPITATE, self.rng.uniform(0.1, 0.35), self.rng.uniform(0.5, 1.1))
            cy, cx = self.place(d / 2)
            self.add(od, mask, cy, cx, Cell("debris", (0, 0, 0, 0), "clump"))

    def _cell_stain(self) -> float:
        return float(np.exp(self.rng.normal(0, self.cfg.stain_jitter * 0.4)))

    def image(self) -> np.ndarray:
        """Background, uneven illumination, optics blur and sensor noise; RGB uint8."""
        h, w = self.shape
        bg = 0.03 + 0.02 * cv2.resize(self.rng.standard_normal((6, 8)).astype(np.float32), (w, h),
                                      interpolation=cv2.INTER_CUBIC)
        od = self.od + np.clip(bg, 0, None)[..., None] * np.array([0.6, 1.6, 1.1], np.float32)
        yy = np.arange(h, dtype=np.float32)[:, None]
        xx = np.arange(w, dtype=np.float32)[None, :]
        cy, cx = self.rng.uniform(0.3, 0.7) * h, self.rng.uniform(0.3, 0.7) * w
        vignette = ((yy - cy) ** 2 + (xx - cx) ** 2) * np.float32(2.0 / (h * h + w * w))
        a = self.rng.uniform(0, 2 * np.pi)
        gradient = (yy / h - 0.5) * np.float32(np.sin(a)) + (xx / w - 0.5) * np.float32(np.cos(a)) + 0.5
        illum = 242.0 * (1.0 - np.float32(self.cfg.illumination) * (0.6 * vignette + 0.4 * gradient))
        img = illum[..., None] * np.exp(od * np.float32(-np.log(10.0)))
        img = cv2.GaussianBlur(img, (0, 0), 0.7)
        img += self.rng.standard_normal(img.shape, dtype=np.float32) * self.cfg.noise_sigma
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _span(rng, span: tuple[int, int]) -> int:
    return int(rng.integers(span[0], span[1] + 1))


def paint_field(cfg: SynthConfig, rng: np.random.Generator, subtypes: Sequence[str]) -> Field:
    """One smear field holding megakaryocytes of ``subtypes`` among distractors."""
    p = FieldPainter(cfg, rng, cfg.height, cfg.width)
    for name in subtypes:
        p.megakaryocyte(name)
    for _ in range(_span(rng, cfg.leukocytes)):
        p.leukocyte()
    p.debris(_span(rng, cfg.debris), int(rng.poisson(cfg.clumps)))
    p.red_cells()
    p.platelets(_span(rng, cfg.platelets))
    return Field(p.image(), p.cells)


# ------------------------------------------------------------------ dataset


def _field_job(args) -> dict:
    cfg, seed, index, subtypes, out = args
    fld = paint_field(cfg, np.random.default_rng([seed, _FIELDS, index]), subtypes)
    name = f"smears/field_{index:05d}.png"
    write_png(Path(out) / name, fld.image)
    return {"file": name, "width": cfg.width, "height": cfg.height,
            "cells": [c.as_dict() for c in fld.cells]}


def _labelled_job(args) -> list[dict]:
    cfg, seed, index, subtypes, out = args
    rng = np.random.default_rng([seed, _LABELLED, index])
    fld = paint_field(cfg, rng, subtypes)
    rows = []
    mks = [c for c in fld.cells if c.type == "megakaryocyte"]
    for j, cell in enumerate(mks):
        x, y, w, h = cell.box
        m = cfg.labelled_margin
        crop = fld.image[max(y - m, 0) : y + h + m, max(x - m, 0) : x + w + m]
        name = f"labelled/{cell.subtype}/{cell.subtype}_{index:05d}_{j}.png"
        write_png(Path(out) / name, crop)
        rows.append({"file": name, "subtype": cell.subtype, "field": index, "box": list(cell.box)})
    return rows


def _run(fn, jobs: list, workers: int, desc: str, progress: bool) -> list:
    bar = dict(total=len(jobs), desc=desc, unit="field", disable=not progress)
    if workers <= 1 or len(jobs) < 4:
        return [fn(j) for j in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(tqdm(pool.map(fn, jobs, chunksize=max(1, len(jobs) // (8 * workers))), **bar))


def generate(cfg: SynthConfig, out: str | Path, progress: bool = True) -> dict:
    """Write a synthetic dataset to ``out``; returns the ground-truth record.

    Refuses to write into a directory that already holds a dataset (no silent mixing).
    """
    out = Path(out)
    if (out / GROUND_TRUTH).exists() or (out / "smears").exists():
        raise FileExistsError(f"{out} already holds a synthetic dataset; choose an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    workers = cfg.workers or os.cpu_count() or 1
    seed = cfg.seed
    field_plan = plan_field_subtypes(cfg, seed)
    fields = _run(_field_job, [(cfg, seed, i, s, str(out)) for i, s in enumerate(field_plan)],
                  workers, "smear fields", progress)
    lab_plan = plan_labelled_subtypes(cfg, seed)
    labelled = [r for rows in _run(_labelled_job, [(cfg, seed, i, s, str(out)) for i, s in enumerate(lab_plan)],
                                   workers, "labelled fields", progress) for r in rows]
    record = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "subtypes": list(SUBTYPES),
        "box_format": "x, y, w, h (pixels, top-left origin)",
        "fields": fields,
        "labelled": labelled,
    }
    (out / GROUND_TRUTH).write_text(json.dumps(record, separators=(",", ":"), sort_keys=True))
    with open(out / "labelled.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows((r["file"], r["subtype"]) for r in labelled)
    save_config(data_settings(cfg), out)
    return record


def data_settings(cfg: SynthConfig) -> SynthConfig:
    """The settings that decide the files (the worker count does not)."""
    return cfg.model_copy(update={"workers": None})


def load_ground_truth(directory: str | Path) -> dict:
    path = Path(directory) / GROUND_TRUTH
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {directory} a directory written by `activessf synth`?")
    return json.loads(path.read_text())


def class_counts(record: dict) -> dict[str, dict[str, int]]:
    """Per subtype: megakaryocytes in the smear fields and crops in the labelled set."""
    fields = {n: 0 for n in SUBTYPES}
    for f in record["fields"]:
        for c in f["cells"]:
            if c["type"] == "megakaryocyte":
                fields[c["subtype"]] += 1
    labelled = {n: 0 for n in SUBTYPES}
    for r in record["labelled"]:
        labelled[r["subtype"]] += 1
    return {"fields": fields, "labelled": labelled}


def iter_labelled(record: dict, directory: str | Path) -> Iterable[tuple[str, Path]]:
    for r in record["labelled"]:
        yield r["subtype"], Path(directory) / r["file"]


def ensure_synthetic(cfg: SynthConfig, out: Path, progress: bool = True) -> dict:
    """The dataset at ``out`` for these settings: reused if identical, else regenerated."""
    saved = out / "config.yaml"
    if (out / GROUND_TRUTH).exists() and saved.exists() and saved.read_text() == to_yaml(data_settings(cfg)):
        log.info("reusing the synthetic dataset in %s (same settings)", out)
        return load_ground_truth(out)
    if out.exists():
        if not (out / GROUND_TRUTH).exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a synthetic dataset; refusing to replace it")
        shutil.rmtree(out)
    log.info("generating %d smear fields and %d labelled crops into %s", cfg.images, cfg.labelled, out)
    return generate(cfg, out, progress=progress)

