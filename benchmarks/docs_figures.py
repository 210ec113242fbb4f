"""The example pictures of docs/filter.md, docs/selection.md and docs/finetune.md, from finished run outputs.

    .venv/bin/python benchmarks/docs_figures.py --filter FILTER_OUT --selection SELECT_OUT \\
        --finetune FINETUNE_OUT [--overlay 0] [--out docs/img]

Each stage draws its pictures itself (filter: ``overlays/``; select: ``embedding_map.png``; finetune:
``pr_curves.png``, ``misclassified.png``); this script takes one of each, scales it to at most --width pixels
wide, reduces it to a 256-colour palette and writes it to --out (each must stay under 200 KB), then prints
what it wrote and from where, for the captions in the docs. The commands behind the pictures in the docs
are in those pages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
from pathlib import Path

from PIL import Image

LIMIT = 200_000


def shrink(src: Path, dst: Path, width: int) -> int:
    """``src`` at most ``width`` wide, as a palette PNG at ``dst`` (halving the width until under LIMIT)."""
    img = Image.open(src).convert("RGB")
    while True:
        if img.width > width:
            img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
        buf = io.BytesIO()
        img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
        if buf.tell() < LIMIT or width < 200:
            break
        width = int(width * 0.8)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buf.getvalue())
    return buf.tell()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", type=Path, required=True, help="an `activessf filter` output (with overlays/)")
    ap.add_argument("--selection", type=Path, required=True, help="an `activessf select` output")
    ap.add_argument("--finetune", type=Path, required=True, help="an `activessf finetune` output")
    ap.add_argument("--overlay", type=int, default=0, help="which of the filter's overlays (in name order)")
    ap.add_argument("--width", type=int, default=1000, help="largest width of a picture, pixels")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img")
    args = ap.parse_args(argv)
    overlays = sorted((args.filter / "overlays").glob("*.png"))
    if not overlays:
        sys.exit(f"{args.filter}/overlays has no pictures: rerun the filter with filter.overlays > 0")
    picks = {"filter_overlay.png": overlays[min(args.overlay, len(overlays) - 1)],
             "embedding_map.png": args.selection / "embedding_map.png",
             "pr_curves.png": args.finetune / "pr_curves.png",
             "misclassified.png": args.finetune / "misclassified.png"}
    missing = [str(p) for p in picks.values() if not p.is_file()]
    if missing:
        sys.exit(f"not found: {', '.join(missing)} (outputs of a run made before these pictures existed?)")
    print(f"date {dt.date.today().isoformat()}")
    for name, src in picks.items():
        size = shrink(src, args.out / name, args.width)
        print(f"{args.out / name}  {size / 1000:.0f} KB  from {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
