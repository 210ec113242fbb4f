"""Ground-truth boxes: Pascal VOC XML (e.g. BCCD), segmentation masks and the synthetic generator's JSON.

All read into ``{image key: [(label, (x, y, w, h), subtype), ...]}`` where the
key is the image file's stem (``BloodImage_00000``, ``field_00000``) and
``subtype`` is the synthetic cell's subtype (None for VOC and masks).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

Box = tuple[int, int, int, int]  # x, y, w, h


def image_key(source: str) -> str:
    """The key an image is known by in annotations: its file stem."""
    return Path(source.split("://")[-1]).stem


MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg")
MASK_LABEL = "cell"


def read_mask(path: str | Path) -> list[tuple[str, Box, None]]:
    """The cells of one segmentation mask (non-zero = cell) as ``("cell", box, None)``: one per
    8-connected component, ignoring specks under 0.1% of the image (and under 25 pixels)."""
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"{path}: not a readable mask image")
    n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype("uint8"), connectivity=8)
    least = max(25, 0.001 * mask.size)
    return [(MASK_LABEL, tuple(int(v) for v in stats[i, :4]), None) for i in range(1, n)
            if stats[i, cv2.CC_STAT_AREA] >= least]


def load_masks(spec: str | Path) -> dict[str, list[tuple[str, Box, None]]]:
    """Boxes of every mask image in a directory, keyed by file stem (the stem of the image it annotates)."""
    path = Path(spec)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in MASK_SUFFIXES) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{spec}: no mask images ({', '.join(MASK_SUFFIXES)}) in this directory")
    return {p.stem: read_mask(p) for p in files}


def voc_object(obj: ET.Element) -> tuple[str, Box]:
    """One VOC ``<object>`` as (name, (x, y, w, h)) in 0-based pixels; VOC corners are inclusive, 1-based.
    Raises ValueError naming what is missing or not a number."""
    name, bb = obj.findtext("name"), obj.find("bndbox")
    if not (name or "").strip() or bb is None:
        raise ValueError("object without a <name> or a <bndbox>")
    try:
        x0, y0, x1, y1 = (int(round(float(bb.findtext(t)))) for t in ("xmin", "ymin", "xmax", "ymax"))
    except (TypeError, ValueError):
        raise ValueError("<bndbox> without numeric xmin, ymin, xmax, ymax") from None
    return name.strip(), (x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1)


def read_voc(path: str | Path) -> list[tuple[str, Box, None]]:
    """Objects of one VOC XML file as (name, (x, y, w, h), None); VOC corners are inclusive, 1-based."""
    return [(*voc_object(obj), None) for obj in ET.parse(path).getroot().iter("object")]


def load_boxes(spec: str | Path) -> dict[str, list[tuple[str, Box, str | None]]]:
    """Boxes from a VOC directory (``*.xml``, or its ``Annotations/``), one VOC file,
    or a synthetic ``ground_truth.json`` (the file or its directory)."""
    path = Path(spec)
    if path.is_dir() and (path / "ground_truth.json").exists():
        path = path / "ground_truth.json"
    if path.is_file() and path.suffix == ".json":
        record = json.loads(path.read_text())
        if "fields" not in record:
            raise ValueError(f"{path} is not a ground truth written by `activessf synth`")
        return {image_key(f["file"]): [(c["type"], tuple(c["box"]), c.get("subtype")) for c in f["cells"]]
                for f in record["fields"]}
    if path.is_dir():
        xml = sorted(path.glob("*.xml")) or sorted((path / "Annotations").glob("*.xml"))
        if not xml:
            raise FileNotFoundError(f"{spec}: no VOC *.xml files and no ground_truth.json")
        return {p.stem: read_voc(p) for p in xml}
    if path.is_file() and path.suffix == ".xml":
        return {path.stem: read_voc(path)}
    raise FileNotFoundError(f"{spec}: expected a VOC directory or XML file, or a synthetic ground_truth.json")


def write_labelled_crops(images: str | Path, boxes: str | Path, label: str, image_labels: dict[str, str],
                         out: str | Path, one_per_image: bool = True) -> dict[str, int]:
    """A labelled set (ImageFolder) from annotated boxes: crops of ``label`` boxes, named by image label.

    With ``one_per_image`` only images holding exactly one ``label`` box are
    used, so that an image-level subtype label names its cell unambiguously.
    Returns the count per class.
    """
    import cv2

    out = Path(out)
    counts: dict[str, int] = {}
    for key, objects in sorted(load_boxes(boxes).items()):
        cells = [o[1] for o in objects if o[0] == label]
        sub = image_labels.get(key)
        if sub is None or not cells or (one_per_image and len(cells) != 1):
            continue
        found = sorted(Path(images).glob(f"{key}.*"))
        if not found:
            continue
        img = cv2.imread(str(found[0]))
        for j, (x, y, w, h) in enumerate(cells):
            crop = img[max(y, 0) : y + h, max(x, 0) : x + w]
            if crop.size == 0:
                continue
            (out / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / sub / f"{key}_{j}.png"), crop)
            counts[sub] = counts.get(sub, 0) + 1
    return dict(sorted(counts.items()))
