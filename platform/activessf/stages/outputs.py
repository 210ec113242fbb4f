"""Stage output directories: refuse to mix runs, or replace atomically.

A stage writes into a staging directory beside the target and swaps it in at
the end, so a failed run never leaves a half-written output and a rerun never
silently appends to the last one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class OutputExists(FileExistsError):
    pass


def check_output(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExists(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = ", ".join(sorted(p.name for p in out.iterdir())[:6])
        raise OutputExists(
            f"{out} already holds outputs ({held}); pass --overwrite to replace them atomically "
            "or choose another --out"
        )
    return out


@contextmanager
def staged_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory; on success it replaces ``out`` in one rename."""
    out = check_output(out, overwrite).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
