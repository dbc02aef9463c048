"""Decoding never crashes: each bad file yields a countable reason, odd modes become RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from maskflow.imageio import DecodeError, decode_image, read_image


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(w=64, h=48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"this is a text file, not a JPEG\n" * 4, "not_an_image"),
        (_encode(_photo(), "JPEG")[: len(_encode(_photo(), "JPEG")) // 2], "truncated"),
    ],
    ids=["zero-byte", "text-as-jpg", "truncated-jpeg"],
)
def test_bad_bytes_give_reasons(data, reason):
    with pytest.raises(DecodeError) as err:
        decode_image(data)
    assert err.value.reason == reason


def test_decompression_bomb_refused_from_header():
    huge = _encode(Image.new("1", (20000, 20000)), "PNG")
    with pytest.raises(DecodeError) as err:
        decode_image(huge, max_pixels=40_000_000)
    assert err.value.reason == "too_large"


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_modes_become_rgb_uint8(mode):
    img = _photo().convert("RGB")
    if mode == "I;16":
        arr = (np.asarray(img.convert("L"), dtype=np.uint16) * 257)
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
    else:
        img = img.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_image(_encode(img, fmt))
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == (48, 64, 3)
    if mode == "I;16":
        assert decoded.rgb.max() > 200  # rescaled, not clipped to black/white


def test_transparent_png_composited_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    decoded = decode_image(_encode(img, "PNG"))
    assert (decoded.rgb == 255).all()


def test_exif_orientation_applied():
    img = _photo(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert decoded.rgb.shape[:2] == (80, 40)
    assert decoded.exif_rotated


def test_non_ascii_path_and_missing_file(tmp_path):
    path = tmp_path / "口罩 ≈˙◊¢ visage.png"
    _photo().save(path)
    assert read_image(path).rgb.shape == (48, 64, 3)
    with pytest.raises(DecodeError) as err:
        read_image(tmp_path / "missing.jpg")
    assert err.value.reason == "unreadable"
