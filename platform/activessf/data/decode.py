"""Decoding smear images from bytes, robustly: every failure has a reason a person understands.

``decode_image`` returns an upright RGB uint8 array or raises :class:`BadImage`
with a readable reason. It checks the header before decoding (a decompression
bomb guard), applies EXIF orientation, reduces 16-bit images to 8 bits,
composites transparency on white and converts CMYK, palette and other modes.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Our own pixel limit is checked first; PIL's warning-level guard would only add noise.
Image.MAX_IMAGE_PIXELS = None

_GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "LA"}


class BadImage(ValueError):
    """An input that cannot be processed: ``str(err)`` is the reason, ``code`` its kind, ``stage`` where."""

    def __init__(self, reason: str, code: str, stage: str = "decode"):
        super().__init__(reason)
        self.code, self.stage = code, stage


def describe_start(data: bytes) -> str:
    head = data[:12]
    return repr(head) + ("..." if len(data) > 12 else "")


def probe(data: bytes):
    """Open the header only (cheap); raises BadImage for empty or unknown data."""
    if len(data) == 0:
        raise BadImage("empty file (0 bytes)", "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage(f"not an image: unknown format (the file starts with {describe_start(data)})", "not_image") from None
    except Exception as exc:  # a header so broken that PIL gives up
        raise BadImage(f"not a readable image header: {exc}", "not_image") from None


def decode_image(data: bytes, max_pixels: int, setting: str = "filter.max_pixels") -> np.ndarray:
    """Upright RGB uint8 (H, W, 3) from encoded bytes, or BadImage with the reason.

    ``setting`` names the configuration value that sets ``max_pixels`` (for the message).
    """
    img = probe(data)
    w, h = img.size
    if w * h > max_pixels:
        raise BadImage(
            f"image is {w}x{h} = {w * h / 1e6:.1f} MP, above the limit of {max_pixels / 1e6:.1f} MP "
            f"(raise {setting} if this is a real smear)",
            "too_large",
        )
    if img.mode in _GREY_MODES or (img.mode == "P" and _palette_is_grey(img)):
        raise BadImage(f"greyscale image (mode {img.mode}): region filtering needs stained colour images", "greyscale")
    if img.format == "JPEG" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise BadImage("truncated JPEG: the file ends before its end-of-image marker", "truncated")
    needs_pil = img.mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info
    rgb = _decode_pil(img) if needs_pil else _decode_cv2(data)
    if rgb.shape[:2] not in ((h, w), (w, h)):
        raise BadImage(f"decoded size {rgb.shape[1]}x{rgb.shape[0]} does not match the header's {w}x{h}", "corrupt")
    return rgb


def _decode_cv2(data: bytes) -> np.ndarray:
    """Fast path: OpenCV decodes, applies EXIF orientation and reduces 16 bits to 8."""
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise BadImage("corrupt or truncated image data: the decoder could not read it", "corrupt")
    return rgb


def _decode_pil(img: Image.Image) -> np.ndarray:
    """Slow path for transparency, palettes and other modes."""
    try:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except OSError as exc:
        raise BadImage(f"corrupt or truncated image data: {exc}", "corrupt") from None


def _palette_is_grey(img: Image.Image) -> bool:
    pal = np.asarray(img.getpalette() or [], np.int16).reshape(-1, 3)
    return len(pal) > 0 and bool((pal.max(1) - pal.min(1) == 0).all())
