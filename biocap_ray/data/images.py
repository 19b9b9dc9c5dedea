"""Decode untrusted image bytes into RGB, safely.

Every failure is an :class:`ImageError` with a short reason, which callers turn into an
error row: corrupt or truncated files, decompression bombs (checked from the header before
any pixel is decoded), and modes that are not RGB (CMYK, palette, alpha, 16-bit) are
converted rather than rejected.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps


class ImageError(ValueError):
    """The bytes are not a usable image; the message says why."""


def _open(data: bytes | None, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb: {exc}") from None
    except Exception as exc:  # PIL raises many types for garbage input
        raise ImageError(f"not a readable image: {type(exc).__name__}: {exc}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(f"decompression bomb: {width}x{height} exceeds max_image_pixels={max_pixels}")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(data: bytes | None, max_pixels: int, size: int | None = None, draft: int | None = None) -> Image.Image:
    """Fully decode ``data`` to RGB; with ``size``, resize the shorter side and centre-crop to it.

    With ``size`` or ``draft``, JPEG decoding uses the decoder's draft mode (DCT scaling by 1/2,
    1/4 or 1/8, keeping both sides at least that many pixels), which is several times faster
    than decoding full resolution when the image is shrunk afterwards anyway.
    """
    img = _open(data, max_pixels)
    draft = draft or size
    try:
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", (draft, draft))
        img.load()
        img = ImageOps.exif_transpose(img) or img
        img = _to_rgb(img)
        if size is not None:
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None
    return img


def probe(data: bytes | None, max_pixels: int) -> tuple[int | None, int | None, str | None, str | None]:
    """``(width, height, mode, error)`` after decoding every byte; error is None for a good image.

    A JPEG is decoded at its smallest DCT scale (1/8): every coefficient is still read, so
    corrupt and truncated files fail as at full size, at a fraction of the cost.
    """
    try:
        img = _open(data, max_pixels)
        mode, (width, height) = img.mode, img.size
        load_rgb(data, max_pixels, draft=1)
    except ImageError as exc:
        return None, None, None, str(exc)
    return width, height, mode, None
