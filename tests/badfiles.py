"""Bad and awkward inputs, written at test time (nothing binary is committed)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def smear_like(h: int = 120, w: int = 160) -> np.ndarray:
    """A small RGB image with one purple blob on a pale background."""
    img = np.full((h, w, 3), (235, 222, 228), np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 3, (110, 70, 170), -1)
    return img


def jpeg(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def write_bad_files(d: Path) -> dict[str, str]:
    """Every awkward case of issue 3 in ``d``; returns {file name: expected error code or 'ok'}."""
    d.mkdir(parents=True, exist_ok=True)
    rgb = smear_like()
    good = jpeg(rgb)
    cases = {}

    def put(name, data, expect):
        (d / name).write_bytes(data)
        cases[name] = expect

    put("zero_bytes.jpg", b"", "empty")
    put("truncated.jpg", good[: len(good) // 2], "truncated")
    put("text.jpg", b"hello, I am a text file pretending to be a JPEG\n", "not_image")
    put("grey.png", png(Image.fromarray(rgb).convert("L")), "greyscale")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    put("rgba.png", png(Image.fromarray(rgba, "RGBA")), "ok")
    ok, buf16 = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    put("sixteen_bit.png", buf16.tobytes(), "ok")
    ok, tif16 = cv2.imencode(".tiff", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    put("sixteen_bit.tiff", tif16.tobytes(), "ok")
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG", quality=95)
    put("cmyk.jpg", cmyk.getvalue(), "ok")
    put("one_pixel.png", png(Image.fromarray(np.array([[[120, 60, 160]]], np.uint8))), "ok")
    put("huge.png", png(Image.fromarray(smear_like(400, 500))), "too_large")  # above the test's max_pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    put("exif_rotated.jpg", jpeg(rgb, exif=exif), "ok")
    os.symlink(d / "does_not_exist.jpg", d / "dangling_link.jpg")
    cases["dangling_link.jpg"] = "unreadable"
    (d / "directory.jpg").mkdir()  # listed by a glob, cannot be read as a file
    name = os.fsencode(d) + b"/caf\xe9_latin1.jpg"  # not valid UTF-8
    with open(name, "wb") as fh:
        fh.write(good)
    cases["caf\\xe9_latin1.jpg"] = "ok"
    return cases


TEST_MAX_PIXELS = 150_000  # huge.png (200,000 px) is above it; the others are far below
