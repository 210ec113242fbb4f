"""Synthetic smear generation speed: fields per second with 1 and 2 processes.

    .venv/bin/python benchmarks/bench_synth.py [--images 200] [--out benchmarks/results/synth.json]

Goal (issue 2): 200 fields of 1024x768 well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write  # noqa: E402

from activessf.config import SynthConfig  # noqa: E402
from activessf.data import synth  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = []
    for workers in (1, 2):
        cfg = SynthConfig(images=args.images, labelled=0, workers=workers)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            rec = synth.generate(cfg, Path(tmp) / "d", progress=False)
            seconds = time.perf_counter() - t0
            mb = sum(p.stat().st_size for p in (Path(tmp) / "d").rglob("*") if p.is_file()) / 2**20
        cells = sum(len(f["cells"]) for f in rec["fields"])
        runs.append({"workers": workers, "images": args.images, "seconds": round(seconds, 2),
                     "fields_per_s": round(args.images / seconds, 2), "cells": cells, "mib_written": round(mb, 1)})
    path = write("synth", {"width": 1024, "height": 768, "runs": runs}, args.out)
    print(table([(r["workers"], r["images"], r["seconds"], r["fields_per_s"], r["mib_written"]) for r in runs],
                ("workers", "fields", "seconds", "fields/s", "MiB")))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
