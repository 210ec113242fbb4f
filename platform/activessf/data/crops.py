"""Labelled cell crops from the annotations labs hold (``activessf crops``).

    activessf crops --annotations BCCD/Annotations --images BCCD/JPEGImages --keep WBC --margin 10% --out CROPS

Boxes come from Pascal VOC XML, COCO JSON or a CSV (boxes, or points with a cell diameter). Each kept
annotation is labelled by its own label or by its image's label (``image_labels``), through an optional
label map, and cut out of its image with a margin, clipped to the image. The output is the labelled-set
layout every other stage reads, ``OUT/<label>/<image>_<index>.png``. An annotation that cannot become a
crop is an error row with its reason (box outside the image, unknown label, missing or unreadable image,
...); the others complete.

Besides the crops, ``OUT`` holds ``crops.csv`` (one row per crop; its first columns are ``path,label``, so
it is a labelled CSV too), ``errors.csv`` and ``skipped.csv`` (source, image, index, label, reason, detail),
``crops.json`` (counts per class, errors and skips by reason, the arguments, the digest of the cells) and
``contact_sheet.png`` (every class, one row each) with one ``contact_sheet_<label>.png`` per class.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..imageio import encode_png, read_rgb, write_png
from .annotations import image_key, voc_object
from .decode import BadImage, decode_image
from .sources import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

FORMATS = ("voc", "coco", "csv")
MIN_INSIDE = 0.5  # share of an annotated box that must lie inside its image; less is "box outside the image"
DROP = ("", "drop")  # label-map targets that drop a label
MAX_PIXELS = 10**9  # decompression-bomb guard for source images
SHEET_CELLS = 64  # crops on one class's contact sheet (8 x 8)
SHEET_ROW = 10  # crops per class on the overview sheet
RESERVED = {"crops.csv", "errors.csv", "skipped.csv", "crops.json"}


@dataclass(frozen=True)
class Annotation:
    """One annotated cell as read, before any decision."""

    source: str  # the annotation file (``file.csv:12`` for a CSV row, ``file.json#annotations[3]`` for COCO)
    image: str  # the image as the annotation names it: file name, relative or absolute path, or stem
    index: int  # its position among its image's annotations, from 0 (-1: not tied to an image)
    label: str  # its own label ("" when none is given)
    box: Optional[tuple[float, float, float, float]] = None  # x, y, w, h in 0-based pixels
    problem: str = ""  # the error reason when it could not be read (then ``box`` is None)
    detail: str = ""


@dataclass(frozen=True)
class Outcome:
    """What became of one annotation: a crop with ``label``, or ``kind`` skipped/error with a reason."""

    annotation: Annotation
    label: str = ""
    kind: str = "crop"  # crop | skipped | error
    reason: str = ""
    detail: str = ""


class Refused(Exception):
    """An annotation that cannot become a crop: ``reason`` (a short category) and ``detail``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def parse_margin(text: str | float) -> tuple[float, float]:
    """``"8"`` -> (8 pixels, 0); ``"15%"`` -> (0, 0.15 of the box's width and height)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1] if raw.endswith("%") else raw)
    except ValueError:
        raise ValueError(f"--margin {text!r}: give pixels (e.g. 8) or a share of the box's size (e.g. 15%)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--margin {text!r}: must be zero or more")
    return (0.0, value / 100) if raw.endswith("%") else (value, 0.0)


@dataclass(frozen=True)
class CropOptions:
    """How annotations become crops (see ``activessf crops --help``)."""

    margin: str = "0"  # pixels ("8") or a share of the box's width and height ("15%")
    square: bool = False  # grow the shorter side to the longer one first
    keep: frozenset = frozenset()  # only annotations with these labels (their own label, before any map)
    label_map: Optional[Mapping[str, str]] = None  # label -> crop label ("" or "drop": skip); others: errors
    image_labels: Optional[Mapping[str, str]] = None  # image stem -> label, for every box of that image
    one_per_image: bool = False  # skip the boxes of images that hold more than one
    size: Optional[int] = None  # resize crops to size x size (default: native size)
    margin_px: float = field(init=False, default=0.0)
    margin_share: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        px, share = parse_margin(self.margin)
        object.__setattr__(self, "margin_px", px)
        object.__setattr__(self, "margin_share", share)
        object.__setattr__(self, "keep", frozenset(self.keep))
        if self.size is not None and self.size < 1:
            raise ValueError(f"--size {self.size}: give the crop side in pixels (1 or more), or leave it out")


# ------------------------------------------------------------------ reading annotations


def detect_format(path: Path) -> str:
    """``voc`` for a directory or ``.xml``, ``coco`` for ``.json``, ``csv`` for ``.csv``."""
    if path.is_dir() or path.suffix.lower() == ".xml":
        return "voc"
    found = {".json": "coco", ".csv": "csv"}.get(path.suffix.lower())
    if found is None:
        raise ValueError(f"cannot tell the format of {path} from its name: pass --format voc, coco or csv")
    return found


def read_annotations(spec: str | Path, fmt: Optional[str] = None, *, label_column: str = "label",
                     diameter: Optional[float] = None, need_label: bool = True) -> list[Annotation]:
    """Every annotation of a VOC directory or file, a COCO JSON or a CSV, in file order."""
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--annotations {spec}: no such file or directory")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown annotation format {fmt!r}: use --format voc, coco or csv")
    if fmt == "voc":
        return read_voc_annotations(path)
    if path.is_dir():
        raise ValueError(f"--annotations {spec} is a directory; {fmt} annotations are one file")
    if fmt == "coco":
        return read_coco(path)
    return read_csv_annotations(path, label_column, diameter, need_label)


def voc_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() != ".xml":
            raise ValueError(f"{path}: VOC annotations are .xml files (or a directory of them); is --format right?")
        return [path]
    files = sorted(path.glob("*.xml")) or sorted((path / "Annotations").glob("*.xml"))
    if not files:
        raise FileNotFoundError(f"{path}: no VOC *.xml files here or in its Annotations/ folder")
    return files


def read_voc_annotations(path: Path) -> list[Annotation]:
    """VOC objects; the image is the XML's ``<filename>`` (its own stem when absent)."""
    out = []
    for f in voc_files(path):
        try:
            root = ET.parse(f).getroot()
        except ET.ParseError as exc:
            out.append(Annotation(str(f), f.stem, -1, "", problem="bad annotation", detail=f"not readable XML: {exc}"))
            continue
        image = (root.findtext("filename") or "").strip() or f.stem
        for i, obj in enumerate(root.iter("object")):
            try:
                label, box = voc_object(obj)
            except ValueError as exc:
                out.append(Annotation(str(f), image, i, (obj.findtext("name") or "").strip(),
                                      problem="bad annotation", detail=str(exc)))
            else:
                out.append(Annotation(str(f), image, i, label, tuple(float(v) for v in box)))
    return out


def read_coco(path: Path) -> list[Annotation]:
    """COCO ``annotations`` with a ``bbox`` ([x, y, w, h], 0-based pixels), labelled by their category's name."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON file ({exc}); is --format right?") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not COCO JSON (it needs the lists 'images' and 'annotations', and "
                         "'categories' for the labels)")
    images = {im.get("id"): im.get("file_name") for im in data["images"] if isinstance(im, dict)}
    names = {c.get("id"): str(c.get("name")) for c in data.get("categories") or [] if isinstance(c, dict)}
    seen: Counter = Counter()
    out = []
    for n, a in enumerate(data["annotations"]):
        source, a = f"{path}#annotations[{n}]", a if isinstance(a, dict) else {}
        image = images.get(a.get("image_id"))
        if not image:
            out.append(Annotation(source, str(a.get("image_id", "")), -1, "", problem="bad annotation",
                                  detail=f"image_id {a.get('image_id')!r} names no entry of 'images' with a file_name"))
            continue
        index, seen[image] = seen[image], seen[image] + 1
        label = names.get(a.get("category_id"))
        if label is None:
            out.append(Annotation(source, image, index, "", problem="unknown label",
                                  detail=f"category_id {a.get('category_id')!r} is not in 'categories'"))
            continue
        try:
            box = tuple(float(v) for v in a["bbox"])
        except (KeyError, TypeError, ValueError):
            box = ()
        if len(box) != 4 or not all(map(math.isfinite, box)):
            out.append(Annotation(source, image, index, label, problem="bad annotation",
                                  detail=f"bbox {a.get('bbox')!r} is not [x, y, width, height]"))
            continue
        out.append(Annotation(source, image, index, label, box))
    return out


CSV_SHAPES = {"xywh": ("x", "y", "w", "h"), "corners": ("xmin", "ymin", "xmax", "ymax"), "point": ("x", "y")}


def csv_shape(columns: set, path: Path, diameter: Optional[float]) -> str:
    """Which CSV layout ``columns`` hold (boxes as x,y,w,h or corners, or points); an error that lists them."""
    shape = next((s for s, need in CSV_SHAPES.items() if set(need) <= columns), None)
    if "image" not in columns or shape is None:
        raise ValueError(f"{path}: a box CSV needs the columns image,x,y,w,h or image,xmin,ymin,xmax,ymax, a point "
                         f"CSV image,x,y (got {', '.join(sorted(columns)) or 'no header'})")
    if shape == "point" and diameter is None and "diameter" not in columns:
        raise ValueError(f"{path}: a point CSV (image,x,y) needs --diameter (the cell diameter in pixels) or a "
                         "diameter column")
    if diameter is not None and not diameter > 0:
        raise ValueError(f"--diameter {diameter}: give the cell diameter in pixels (more than 0)")
    return shape


def csv_box(row: Mapping[str, str], shape: str, diameter: Optional[float]) -> tuple[float, float, float, float]:
    """One CSV row's box (x, y, w, h); a point becomes a ``diameter`` box centred on it."""
    values = {k: float(row[k]) for k in CSV_SHAPES[shape]}
    if shape == "point":
        d = float(row["diameter"]) if (row.get("diameter") or "").strip() else diameter
        if d is None or not d > 0:
            raise ValueError(f"diameter {d!r} is not a size in pixels")
        box = (values["x"] - d / 2, values["y"] - d / 2, d, d)
    elif shape == "corners":
        box = (values["xmin"], values["ymin"], values["xmax"] - values["xmin"], values["ymax"] - values["ymin"])
    else:
        box = (values["x"], values["y"], values["w"], values["h"])
    if not all(map(math.isfinite, box)):
        raise ValueError("coordinates are not finite numbers")
    return box


def read_csv_annotations(path: Path, label_column: str = "label", diameter: Optional[float] = None,
                         need_label: bool = True) -> list[Annotation]:
    """CSV rows: ``image`` and a box (``x,y,w,h`` or ``xmin,ymin,xmax,ymax``, 0-based pixels, max exclusive) or a
    point (``x,y``, with ``--diameter`` or a ``diameter`` column), and a label in ``label_column``."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip() for c in reader.fieldnames or ()}
        shape = csv_shape(columns, path, diameter)
        if need_label and label_column not in columns:
            raise ValueError(f"{path}: no label column {label_column!r}; name it with --label-column, or label by "
                             "image with --image-labels")
        rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()}
                for r in reader]
    seen: Counter = Counter()
    out = []
    for line, row in enumerate(rows, start=2):
        image, label, source = row.get("image", ""), row.get(label_column, ""), f"{path}:{line}"
        index, seen[image] = seen[image], seen[image] + 1
        try:
            box = csv_box(row, shape, diameter)
        except (TypeError, ValueError) as exc:
            out.append(Annotation(source, image, index, label, problem="bad annotation", detail=str(exc)))
            continue
        if not image:
            out.append(Annotation(source, image, -1, label, problem="bad annotation", detail="no image named"))
            continue
        out.append(Annotation(source, image, index, label, box))
    return out


def read_image_labels(path: str | Path) -> dict[str, str]:
    """{image stem: label} from a CSV with an ``image`` column and a ``label`` (or ``subtype``) column;
    blank labels are left out."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or ())
        column = next((c for c in ("label", "subtype") if c in columns), None)
        if "image" not in columns or column is None:
            raise ValueError(f"--image-labels {path}: needs the columns image,label (or image,subtype)")
        return {image_key(r["image"].strip()): r[column].strip() for r in reader if (r[column] or "").strip()}


def read_label_map(items: Sequence[str]) -> Optional[dict[str, str]]:
    """A label map from ``from=to`` items and YAML/JSON files (a mapping; null or "" or "drop" drops a label)."""
    if not items:
        return None
    mapping: dict[str, str] = {}
    for item in items:
        if Path(item).is_file():
            import yaml

            loaded = yaml.safe_load(Path(item).read_text())  # JSON is YAML too
            if not isinstance(loaded, dict):
                raise ValueError(f"--label-map {item}: expected a mapping of label: new label")
            mapping.update({str(k).strip(): "" if v is None else str(v).strip() for k, v in loaded.items()})
        elif "=" in item:
            key, value = item.split("=", 1)
            mapping[key.strip()] = value.strip()
        else:
            raise ValueError(f"--label-map {item!r}: give FROM=TO or an existing YAML/JSON file")
    return mapping


def default_images(annotations: Path) -> Path:
    """Where images are when ``--images`` is not given: the VOC convention's ``JPEGImages`` (inside the
    annotations' folder, or beside it when that folder is ``Annotations``), else the annotations' own folder."""
    folder = annotations if annotations.is_dir() else annotations.parent
    if (folder / "JPEGImages").is_dir():
        return folder / "JPEGImages"
    if folder.name == "Annotations" and (folder.parent / "JPEGImages").is_dir():
        return folder.parent / "JPEGImages"
    return folder


# ------------------------------------------------------------------ decisions (pure)


def folder_safe(label: str) -> bool:
    return bool(label) and label not in (".", "..") and label not in RESERVED \
        and not label.startswith(".") and not any(c in label for c in '/\\\0')


def decide_label(ann: Annotation, opts: CropOptions) -> Outcome:
    """The crop's label, or why the annotation is skipped (not kept, dropped by the map) or refused."""
    if ann.problem:
        return Outcome(ann, kind="error", reason=ann.problem, detail=ann.detail)
    if opts.keep and ann.label not in opts.keep:
        return Outcome(ann, kind="skipped", reason="not kept", detail=f"label {ann.label!r} is not in --keep")
    if opts.image_labels is not None:
        label = opts.image_labels.get(image_key(ann.image))
        if label is None:
            return Outcome(ann, kind="error", reason="no image label",
                           detail=f"{image_key(ann.image)} has no label in --image-labels")
    elif not ann.label:
        return Outcome(ann, kind="error", reason="no label", detail="the annotation has no label")
    else:
        label = ann.label
    if opts.label_map is not None:
        if label not in opts.label_map:
            return Outcome(ann, kind="error", reason="unknown label", detail=f"{label!r} is not in the label map")
        if opts.label_map[label] in DROP:
            return Outcome(ann, kind="skipped", reason="dropped by the label map", detail=f"{label!r} is dropped")
        label = opts.label_map[label]
    if not folder_safe(label):
        return Outcome(ann, kind="error", reason="bad label", detail=f"{label!r} cannot name a class folder")
    return Outcome(ann, label)


def decide(annotations: Sequence[Annotation], opts: CropOptions) -> list[Outcome]:
    """Every annotation's label decision; with ``one_per_image``, the boxes of images holding several are skipped."""
    outcomes = [decide_label(a, opts) for a in annotations]
    if opts.one_per_image:
        per_image = Counter(o.annotation.image for o in outcomes if o.kind == "crop")
        outcomes = [replace(o, kind="skipped", reason="several boxes in one image",
                            detail=f"{per_image[o.annotation.image]} boxes share the image (--one-per-image)")
                    if o.kind == "crop" and per_image[o.annotation.image] > 1 else o for o in outcomes]
    return outcomes


def crop_box(box: Sequence[float], width: int, height: int,
             opts: CropOptions) -> tuple[tuple[int, int, int, int], bool]:
    """The pixels to cut for an annotated ``box`` (x, y, w, h) in a ``width`` x ``height`` image: squared if asked,
    grown by the margin, clipped to the image. Returns ((x0, y0, x1, y1), clipped); raises :class:`Refused`."""
    x, y, w, h = box
    if not (w > 0 and h > 0):
        raise Refused("empty box", f"width {w:g}, height {h:g}")
    inside = max(0.0, min(x + w, width) - max(x, 0)) * max(0.0, min(y + h, height) - max(y, 0)) / (w * h)
    if inside < MIN_INSIDE:
        raise Refused("box outside the image", f"box ({x:g}, {y:g}, {w:g}, {h:g}) has {inside:.0%} inside the "
                      f"{width}x{height} image (at least {MIN_INSIDE:.0%} needed)")
    if opts.square:
        side = max(w, h)
        x, y, w, h = x - (side - w) / 2, y - (side - h) / 2, side, side
    mx, my = opts.margin_px + opts.margin_share * w, opts.margin_px + opts.margin_share * h
    want = (math.floor(x - mx), math.floor(y - my), math.ceil(x + w + mx), math.ceil(y + h + my))
    got = (max(want[0], 0), max(want[1], 0), min(want[2], width), min(want[3], height))
    return got, got != want


# ------------------------------------------------------------------ cutting and writing


class ImageFinder:
    """The image an annotation names, under ``root``: the path as given, its file name, or its stem with any
    image suffix."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"--images {root}: not a directory")
        self.by_stem: dict[str, list[Path]] = {}
        for p in sorted(self.root.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                self.by_stem.setdefault(p.stem, []).append(p)

    def find(self, name: str) -> Path:
        for candidate in (self.root / name, self.root / Path(name).name):
            if candidate.is_file():
                return candidate
        hits = self.by_stem.get(Path(name).name) or self.by_stem.get(Path(name).stem) or []
        if len(hits) > 1:
            raise Refused("image not found", f"{name}: several files could be it ({', '.join(p.name for p in hits)}); "
                          "name the file with its suffix")
        if not hits:
            raise Refused("image not found", f"{name} is not in {self.root}")
        return hits[0]


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a source image; raises :class:`Refused` with the decoder's reason."""
    try:
        return decode_image(path.read_bytes(), MAX_PIXELS)
    except (BadImage, OSError) as exc:
        raise Refused("unreadable image", f"{path.name}: {exc}") from None


def crop_name(image: str, index: int, taken: set) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(image).stem) or "image"
    name, k = f"{stem}_{index:02d}.png", 1
    while name in taken:
        k += 1
        name = f"{stem}_{index:02d}_{k}.png"
    taken.add(name)
    return name


def cut_image(outcomes: Sequence[Outcome], finder: ImageFinder, opts: CropOptions, out: Path,
              taken: set) -> tuple[list[dict], list[Outcome]]:
    """The crops of one image's outcomes, written under ``out``: (manifest rows, refused outcomes)."""
    import cv2

    image = outcomes[0].annotation.image
    try:
        path = finder.find(image)
        rgb = load_image(path)
    except Refused as r:
        return [], [replace(o, kind="error", reason=r.reason, detail=r.detail) for o in outcomes]
    rows, refused = [], []
    for o in outcomes:
        try:
            (x0, y0, x1, y1), clipped = crop_box(o.annotation.box, rgb.shape[1], rgb.shape[0], opts)
        except Refused as r:
            refused.append(replace(o, kind="error", reason=r.reason, detail=r.detail))
            continue
        crop = rgb[y0:y1, x0:x1]
        if opts.size:
            crop = cv2.resize(crop, (opts.size, opts.size), interpolation=cv2.INTER_AREA)
        data = encode_png(crop)
        name = crop_name(image, o.annotation.index, taken.setdefault(o.label, set()))
        (out / o.label).mkdir(exist_ok=True)
        (out / o.label / name).write_bytes(data)
        rows.append({"path": f"{o.label}/{name}", "label": o.label, "source_label": o.annotation.label,
                     "image": str(path), "annotation": o.annotation.source, "index": o.annotation.index,
                     "x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0, "clipped": int(clipped),
                     "cell_id": hashlib.sha256(data).hexdigest()[:16]})
    return rows, refused


MANIFEST = ("path", "label", "source_label", "image", "annotation", "index", "x", "y", "w", "h", "clipped", "cell_id")
REFUSED = ("source", "image", "index", "label", "reason", "detail")


def write_table(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)


def refused_row(o: Outcome) -> dict:
    a = o.annotation
    return {"source": a.source, "image": a.image, "index": a.index, "label": o.label or a.label,
            "reason": o.reason, "detail": o.detail}


def write_contact_sheets(rows: Sequence[dict], out: Path) -> list[str]:
    """``contact_sheet_<label>.png`` per class (up to SHEET_CELLS crops, spread over the class) and
    ``contact_sheet.png`` (up to SHEET_ROW per class, one row each)."""
    from ..viz import contact_sheet, image_grid

    by_class: dict[str, list[str]] = {}
    for r in rows:
        by_class.setdefault(r["label"], []).append(r["path"])
    written, overview = [], []
    for label, paths in sorted(by_class.items()):
        pick = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), SHEET_CELLS)).round().astype(int))
        images = [read_rgb(out / paths[i]) for i in pick]
        write_png(out / f"contact_sheet_{label}.png", image_grid(images, columns=8, thumb=96))
        written.append(f"contact_sheet_{label}.png")
        spread = np.unique(np.linspace(0, len(images) - 1, min(len(images), SHEET_ROW)).round().astype(int))
        overview.append((f"{label}\n({len(paths)})", [images[i] for i in spread]))
    if overview:
        write_png(out / "contact_sheet.png", contact_sheet(overview, thumb=72, columns=SHEET_ROW, label_width=120))
        written.insert(0, "contact_sheet.png")
    return written


def write_crops(annotations: Sequence[Annotation], finder: ImageFinder, opts: CropOptions, out: str | Path,
                arguments: Optional[Mapping] = None) -> dict:
    """Cut and write every crop, the tables, the contact sheets and ``crops.json`` into ``out``; returns the record."""
    from .split import ids_digest

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    outcomes = decide(annotations, opts)
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        if o.kind == "crop":
            groups.setdefault(o.annotation.image, []).append(o)
    rows, refused, taken = [], [o for o in outcomes if o.kind != "crop"], {}
    for group in groups.values():
        got, lost = cut_image(group, finder, opts, out, taken)
        rows += got
        refused += lost
    order = {id(o.annotation): i for i, o in enumerate(outcomes)}  # rows in the annotations' order
    refused.sort(key=lambda o: order[id(o.annotation)])
    errors = [o for o in refused if o.kind == "error"]
    skipped = [o for o in refused if o.kind == "skipped"]
    write_table(out / "crops.csv", MANIFEST, rows)
    write_table(out / "errors.csv", REFUSED, [refused_row(o) for o in errors])
    write_table(out / "skipped.csv", REFUSED, [refused_row(o) for o in skipped])
    sheets = write_contact_sheets(rows, out)
    ids = [r["cell_id"] for r in rows]
    keep_unseen = sorted(opts.keep - {a.label for a in annotations})
    record = {
        "crops": len(rows), "classes": dict(sorted(Counter(r["label"] for r in rows).items())),
        "annotations": len(annotations), "images": len({r["image"] for r in rows}),
        "errors": dict(Counter(o.reason for o in errors).most_common()),
        "skipped": dict(Counter(o.reason for o in skipped).most_common()),
        "clipped": sum(r["clipped"] for r in rows), "duplicates": len(ids) - len(set(ids)),
        "digest": ids_digest(ids),
        "warnings": [f"--keep names labels no annotation has: {', '.join(keep_unseen)}"] if keep_unseen else [],
        "arguments": dict(arguments or {}),
        "files": ["crops.csv", "errors.csv", "skipped.csv", "crops.json", *sheets],
    }
    (out / "crops.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def run_crops(annotations: str | Path, out: str | Path, *, fmt: Optional[str] = None,
              images: Optional[str | Path] = None, label_column: str = "label", diameter: Optional[float] = None,
              image_labels: Optional[str | Path] = None, label_map: Sequence[str] = (), keep: Sequence[str] = (),
              margin: str = "0", square: bool = False, one_per_image: bool = False, size: Optional[int] = None,
              overwrite: bool = False):
    """``activessf crops``: read the annotations and cut the labelled crops into ``out`` (atomically, see
    :func:`~activessf.stage.staged_output`); returns a StageResult whose summary is ``crops.json``.

    ``label_map`` items are ``FROM=TO`` or YAML/JSON files; ``image_labels`` a CSV ``image,label``. The other
    arguments are :class:`CropOptions` and the readers' (:func:`read_annotations`).
    """
    from ..stage import StageResult, check_output, staged_output

    check_output(out, overwrite)
    opts = CropOptions(margin=margin, square=square, keep=frozenset(keep), label_map=read_label_map(label_map),
                       image_labels=read_image_labels(image_labels) if image_labels else None,
                       one_per_image=one_per_image, size=size)
    anns = read_annotations(annotations, fmt, label_column=label_column, diameter=diameter,
                            need_label=opts.image_labels is None)
    finder = ImageFinder(images if images is not None else default_images(Path(annotations)))
    arguments = {"annotations": str(annotations), "format": fmt or detect_format(Path(annotations)),
                 "images": str(finder.root), "margin": margin, "square": square, "diameter": diameter,
                 "label_column": label_column, "label_map": opts.label_map, "keep": sorted(opts.keep),
                 "image_labels": str(image_labels) if image_labels else None, "one_per_image": one_per_image,
                 "size": size}
    with staged_output(out, overwrite) as staging:
        record = write_crops(anns, finder, opts, staging, arguments)
    log.debug("%d crops from %d annotations into %s", record["crops"], record["annotations"], out)
    return StageResult("crops", Path(out), record, files=tuple(record["files"]))


def format_summary(record: Mapping) -> str:
    """The human summary of a crops record."""
    lines = [f"{record['crops']} crops from {record['annotations']} annotations in {record['images']} images"]
    lines += [f"  {label:<20} {n}" for label, n in record["classes"].items()]
    for kind in ("skipped", "errors"):
        if record[kind]:
            lines.append(f"{kind}: " + ", ".join(f"{reason} {n}" for reason, n in record[kind].items()))
    if record["clipped"]:
        lines.append(f"clipped at the image edge: {record['clipped']}")
    lines += [f"warning: {w}" for w in record["warnings"]]
    return "\n".join(lines)
