"""Robust image decoding: every file either becomes an RGB uint8 array or a named reason.

Real photo folders hold zero-byte files, truncated JPEGs, text files named .jpg, CMYK,
palette, RGBA and 16-bit images, EXIF-rotated phone photos and decompression bombs.
Decoding goes through Pillow from bytes (non-ASCII paths are fine) and never raises for
bad content: callers count the returned reason instead.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own bomb guard only warns below 2x its limit; we check the header size
# ourselves against an explicit, configurable pixel budget instead.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; a 20000 x 20000 PNG is refused
MIN_IMAGE_SIDE = 16  # as prepare's data.min_image_side: smaller images get no labels ("tiny_image")


class DecodeError(Exception):
    """An image that cannot be used; ``reason`` is a short, countable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    rgb: np.ndarray  # HxWx3 uint8, EXIF orientation applied
    source_mode: str  # Pillow mode of the file, e.g. "RGB", "P", "I;16", "CMYK"
    format: str  # "JPEG", "PNG", "WEBP", ...
    exif_rotated: bool


@dataclass
class Frame:
    """One image or video frame to detect faces in (``rgb``: HxWx3 uint8)."""

    source: str
    index: int
    rgb: np.ndarray
    is_video: bool


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: rescale the used range to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")  # palette may carry transparency
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite transparency on white, as a viewer would show it.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode image bytes to RGB, raising :class:`DecodeError` with a reason on failure."""
    if len(data) == 0:
        raise DecodeError("empty_file")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise DecodeError("not_an_image", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file
        raise DecodeError("unreadable", f"{type(exc).__name__}: {exc}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise DecodeError("unreadable", f"size {width}x{height}")
    if width * height > max_pixels:
        raise DecodeError("too_large", f"{width}x{height} > {max_pixels} pixels")
    fmt = img.format or "unknown"
    mode = img.mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise DecodeError(reason, str(exc)) from None
    except Exception as exc:  # noqa: BLE001
        raise DecodeError("corrupt", f"{type(exc).__name__}: {exc}") from None
    exif_rotated = _orientation(img) > 1
    try:
        rotated = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not lose the image
        rotated, exif_rotated = img, False
    rgb = np.asarray(_to_rgb(rotated), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DecodeError("corrupt", f"unexpected array shape {rgb.shape}")
    return Decoded(rgb=np.ascontiguousarray(rgb), source_mode=mode, format=fmt, exif_rotated=exif_rotated)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001
        return 1


def read_image(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Read and decode a file; missing/unreadable files raise :class:`DecodeError` too."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DecodeError("unreadable", str(exc)) from None
    return decode_image(data, max_pixels=max_pixels)
