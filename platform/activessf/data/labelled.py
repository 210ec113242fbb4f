"""The labelled set T: an ImageFolder directory or a CSV of path,label."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Iterable

from .sources import IMAGE_SUFFIXES


def list_labelled(spec: str | Path) -> list[tuple[Path, str]]:
    """(image path, label) pairs, sorted; CSV paths are relative to the CSV's folder unless absolute."""
    spec = Path(spec)
    if spec.is_dir():
        pairs = [(p, d.name) for d in sorted(spec.iterdir()) if d.is_dir()
                 for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not pairs:
            raise FileNotFoundError(f"{spec}: no ImageFolder layout (<label>/<image>) with images found")
        return pairs
    if spec.suffix.lower() == ".csv" and spec.is_file():
        with open(spec, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{spec}: a labelled CSV needs the columns path,label (got {reader.fieldnames})")
            pairs = [((spec.parent / r["path"]) if not Path(r["path"]).is_absolute() else Path(r["path"]),
                      r["label"]) for r in reader]
        if not pairs:
            raise ValueError(f"{spec}: no rows")
        return sorted(pairs)
    raise FileNotFoundError(f"{spec}: expected an ImageFolder directory or a CSV of path,label")


def cell_id(path: str | Path) -> str:
    """A labelled cell's id: the digest of its image file's bytes, the same whatever path or copy it is
    listed under (what `label_ids.json` records and the leakage check compares)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def labelled_digest(spec: str | Path) -> dict:
    """The labelled set's content: ``cells`` (rows) and ``digest``, 16 hex digits over every (cell id, label)
    pair: the same for the same images and labels under any paths or layout (ImageFolder or CSV), different
    when an image or a label changes. What runs record as their labelled-set input."""
    pairs = sorted(f"{cell_id(p)}\t{label}" for p, label in list_labelled(spec))
    return {"cells": len(pairs), "digest": hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:16]}


def write_labelled_csv(pairs: Iterable[tuple[Path, str]], path: str | Path) -> Path:
    """A labelled CSV (``path,label``, absolute paths) that :func:`list_labelled` reads back."""
    path = Path(path)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows((str(Path(p).resolve()), label) for p, label in pairs)
    return path
