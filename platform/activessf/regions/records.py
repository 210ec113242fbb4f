"""One image in, typed records out: the regions table, the errors table, the images table.

``process_image`` is what a Ray Data worker runs per file; it never raises for
bad input: a bad file becomes an error record with a reason a person
understands, so one bad file cannot stop a job.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import FilterConfig
from ..data.decode import BadImage, decode_image
from ..imageio import encode_png
from .filter import crop, filter_image

REGION_SCHEMA = pa.schema(
    [
        ("region_id", pa.string()),
        ("source", pa.string()),
        ("x", pa.int32()),
        ("y", pa.int32()),
        ("w", pa.int32()),
        ("h", pa.int32()),
        ("area", pa.int64()),
        ("fill_rate", pa.float32()),
        ("crop_x", pa.int32()),
        ("crop_y", pa.int32()),
        ("crop_w", pa.int32()),
        ("crop_h", pa.int32()),
        ("crop", pa.binary()),  # PNG bytes of the crop (box + margin)
        ("config_digest", pa.string()),
    ]
)
REJECTED_SCHEMA = pa.schema(
    [(n, REGION_SCHEMA.field(n).type) for n in ("source", "x", "y", "w", "h", "area", "fill_rate")]
    + [("reason", pa.string())]
)
ERROR_SCHEMA = pa.schema(
    [("source", pa.string()), ("stage", pa.string()), ("code", pa.string()), ("error", pa.string())]
)
IMAGE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("regions", pa.int32()),
        ("too_small", pa.int32()),
        ("low_fill", pa.int32()),
        ("seconds", pa.float32()),
        ("node", pa.string()),  # the Ray node that processed it (null outside Ray)
    ]
)


# the tables of a filter output directory (``regions`` is a directory of parquet files, the others one file each)
TABLES = {"regions": REGION_SCHEMA, "rejected": REJECTED_SCHEMA, "errors": ERROR_SCHEMA, "images": IMAGE_SCHEMA}


def read_table(out: str | Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """One table of a filter output directory."""
    path = Path(out) / (name if name == "regions" else f"{name}.parquet")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {out} the output of `activessf filter`?")
    return pq.read_table(path, columns=columns, schema=TABLES[name] if name == "regions" else None)


def regions_digest(out: str | Path) -> dict:
    """The regions table of a filter output: ``regions`` (rows) and ``digest``, 16 hex digits over the
    sorted region ids (each a hash of its source image and box) and the filter settings' digests: the same
    table gives the same digest whatever its parquet layout. Reads only those two columns."""
    table = read_table(out, "regions", ["region_id", "config_digest"])
    ids = sorted(table.column("region_id").to_pylist())
    settings = sorted(set(table.column("config_digest").to_pylist()))
    body = "\n".join(ids) + "\n--\n" + "\n".join(settings)
    return {"regions": len(ids), "digest": hashlib.sha256(body.encode()).hexdigest()[:16]}


def region_id(source: str, x: int, y: int, w: int, h: int) -> str:
    """Stable id of a region: hash of its source and box (the same across runs)."""
    return hashlib.sha1(f"{source}|{x},{y},{w},{h}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


def display_name(path: bytes | str) -> str:
    """A printable, valid UTF-8 name for any path (undecodable bytes shown as \\xNN)."""
    if isinstance(path, str):
        path = path.encode("utf-8", "surrogateescape")
    return path.decode("utf-8", "backslashreplace")


@dataclass
class ImageRecords:
    regions: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)

    def extend(self, other: "ImageRecords") -> None:
        for name in ("regions", "rejected", "errors", "images"):
            getattr(self, name).extend(getattr(other, name))

    def tables(self) -> dict[str, pa.Table]:
        return {
            "regions": pa.Table.from_pylist(self.regions, REGION_SCHEMA),
            "rejected": pa.Table.from_pylist(self.rejected, REJECTED_SCHEMA),
            "errors": pa.Table.from_pylist(self.errors, ERROR_SCHEMA),
            "images": pa.Table.from_pylist(self.images, IMAGE_SCHEMA),
        }


def error_record(source: str, stage: str, code: str, reason: str) -> ImageRecords:
    return ImageRecords(errors=[{"source": source, "stage": stage, "code": code, "error": reason}])


def process_image(data: bytes, source: str, cfg: FilterConfig, digest: str) -> ImageRecords:
    """Filter one encoded image; bad input becomes an error record, never an exception."""
    started = time.perf_counter()
    try:
        rgb = decode_image(data, cfg.max_pixels)
    except BadImage as exc:
        return error_record(source, exc.stage, exc.code, str(exc))
    try:
        result = filter_image(rgb, cfg)
    except Exception as exc:  # a bug or an input we did not foresee: recorded, not fatal
        return error_record(source, "filter", "filter_failed", f"{type(exc).__name__}: {exc}")
    out = ImageRecords()
    for r in result.regions:
        out.regions.append(
            {
                "region_id": region_id(source, r.x, r.y, r.w, r.h),
                "source": source,
                "x": r.x, "y": r.y, "w": r.w, "h": r.h,
                "area": r.area,
                "fill_rate": r.fill_rate,
                "crop_x": r.crop_box[0], "crop_y": r.crop_box[1],
                "crop_w": r.crop_box[2], "crop_h": r.crop_box[3],
                "crop": encode_png(crop(rgb, r)),
                "config_digest": digest,
            }
        )
    for r in result.low_fill:
        out.rejected.append({"source": source, "x": r.x, "y": r.y, "w": r.w, "h": r.h,
                             "area": r.area, "fill_rate": r.fill_rate, "reason": "low_fill"})
    out.images.append(
        {
            "source": source,
            "width": rgb.shape[1],
            "height": rgb.shape[0],
            "regions": len(result.regions),
            "too_small": result.rejected["too_small"],
            "low_fill": result.rejected["low_fill"],
            "seconds": time.perf_counter() - started,
        }
    )
    return out
