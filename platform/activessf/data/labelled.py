"""The labelled set T: an ImageFolder directory or a CSV of path,label."""

from __future__ import annotations

import csv
from pathlib import Path

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
