"""Decoding every awkward input: a correct image or an error with a readable reason."""

import os

import numpy as np
import pytest

from activessf.config import FilterConfig
from activessf.data.decode import BadImage, decode_image
from activessf.regions.records import display_name, process_image
from badfiles import TEST_MAX_PIXELS, smear_like, write_bad_files


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    return d, write_bad_files(d)


def outcome(path, max_pixels=TEST_MAX_PIXELS):
    cfg = FilterConfig(max_pixels=max_pixels, min_box=20, kmeans_clusters=6, merged_clusters=3)
    try:
        data = open(path, "rb").read()
    except OSError as exc:
        return "unreadable", str(exc)
    rec = process_image(data, display_name(os.fsencode(path)), cfg, cfg.digest())
    if rec.errors:
        return rec.errors[0]["code"], rec.errors[0]["error"]
    return "ok", rec


@pytest.mark.parametrize(
    "name",
    ["zero_bytes.jpg", "truncated.jpg", "text.jpg", "grey.png", "rgba.png", "sixteen_bit.png",
     "sixteen_bit.tiff", "cmyk.jpg", "one_pixel.png", "huge.png", "exif_rotated.jpg", "dangling_link.jpg",
     "directory.jpg"],
)
def test_each_bad_input_has_a_defined_outcome(bad_dir, name):
    d, cases = bad_dir
    expect = cases.get(name, "unreadable")
    code, detail = outcome(d / name)
    assert code == expect, detail
    if code != "ok":
        assert isinstance(detail, str) and len(detail) > 15  # a sentence, not a code


def test_reasons_read_well(bad_dir):
    d, _ = bad_dir
    assert outcome(d / "zero_bytes.jpg")[1] == "empty file (0 bytes)"
    assert "end-of-image marker" in outcome(d / "truncated.jpg")[1]
    assert "starts with b'hello, I am '" in outcome(d / "text.jpg")[1]
    assert "greyscale" in outcome(d / "grey.png")[1]
    assert "500x400 = 0.2 MP, above the limit of 0.1 MP" in outcome(d / "huge.png")[1]
    assert "filter.max_pixels" in outcome(d / "huge.png")[1]


def test_colour_variants_decode_to_the_same_picture(bad_dir):
    d, _ = bad_dir
    ref = smear_like().astype(int)
    for name, tol in (("sixteen_bit.png", 0), ("sixteen_bit.tiff", 0), ("cmyk.jpg", 8)):
        rgb = decode_image((d / name).read_bytes(), 10**8)
        assert rgb.dtype == np.uint8 and rgb.shape == ref.shape
        assert np.abs(rgb.astype(int) - ref).mean() <= tol + 2, name


def test_transparency_is_composited_on_white(bad_dir):
    d, _ = bad_dir
    rgb = decode_image((d / "rgba.png").read_bytes(), 10**8)
    assert (rgb[:10, :10] == 255).all() and (rgb[20:30, 20:30] == smear_like()[20:30, 20:30]).all()


def test_exif_rotation_is_applied(bad_dir):
    d, _ = bad_dir
    rgb = decode_image((d / "exif_rotated.jpg").read_bytes(), 10**8)
    ref = smear_like()
    assert rgb.shape == (ref.shape[1], ref.shape[0], 3)  # upright: width and height swap
    assert np.abs(rgb.astype(int) - np.rot90(ref, -1).astype(int)).mean() < 3


def test_one_pixel_image_is_processed_with_no_regions(bad_dir):
    d, _ = bad_dir
    code, rec = outcome(d / "one_pixel.png")
    assert code == "ok" and rec.regions == [] and rec.images[0]["width"] == 1


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(BadImage) as err:
        decode_image(open_bytes_of_huge_header(), max_pixels=10**6)
    assert err.value.code == "too_large"


def open_bytes_of_huge_header() -> bytes:
    """A valid PNG of 30000 x 30000 one-bit pixels (112 MB decoded, 110 kB on disk)."""
    import zlib
    import struct

    w = h = 30000
    raw = zlib.compress(b"".join(b"\0" + b"\0" * ((w + 7) // 8) for _ in range(h)), 9)

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
