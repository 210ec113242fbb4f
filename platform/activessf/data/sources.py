"""Turning ``--input DIR|GLOB|URI`` into a sorted list of files, and reading one."""

from __future__ import annotations

import glob
import os
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def is_uri(spec: str) -> bool:
    return "://" in spec and not spec.startswith("file://")


def list_inputs(spec: str) -> list[bytes | str]:
    """Files named by ``spec``: a directory (recursive, image suffixes), a glob, or a URI.

    Local paths come back as ``bytes`` (``os.fsencode``), so file names that are
    not valid UTF-8 survive; URIs come back as ``str``. Sorted, deterministic.
    """
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    if is_uri(spec):
        return _list_uri(spec)
    path = Path(spec)
    if path.is_dir():
        raw = os.fsencode(path)
        found = []
        for root, _, names in os.walk(raw):
            found += [os.path.join(root, n) for n in names if n.lower().endswith(tuple(s.encode() for s in IMAGE_SUFFIXES))]
        files = found
    elif any(ch in spec for ch in "*?["):
        files = [os.fsencode(p) for p in glob.glob(spec, recursive=True) if not os.path.isdir(p)]
    elif path.exists() or path.is_symlink():
        files = [os.fsencode(path)]
    else:
        raise FileNotFoundError(f"--input {spec}: no such file, directory or glob match")
    if not files:
        raise FileNotFoundError(f"--input {spec}: no image files found (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return sorted(files)


def _list_uri(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    scheme = uri.split("://", 1)[0]
    files = [f"{scheme}://{i.path}" for i in infos
             if i.type == pafs.FileType.File and i.path.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            return [uri]
        raise FileNotFoundError(f"--input {uri}: no image files found")
    return sorted(files)


def read_bytes(path: bytes | str) -> bytes:
    """The file's bytes; raises OSError with the system's reason."""
    if isinstance(path, str) and is_uri(path):
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(path)
        with fs.open_input_file(p) as fh:
            return fh.read()
    with open(path, "rb") as fh:
        return fh.read()
