"""Safe image loading for anything a user may upload.

Decompression bombs are errors (not warnings), only raster formats are accepted, the image
is fully decoded inside the try so truncation is caught here, EXIF orientation is applied
so boxes live in upright coordinates, and every mode (CMYK, 16-bit, palette, RGBA) becomes RGB.
A file of another kind (GIF, SVG, HTML, PDF, text) is named by its first bytes, never by
handing it to a decoder that was not asked for.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pi_heif
from PIL import Image, ImageOps

from core.errors import ImageError

# 100 MP covers the largest camera photos (45-61 MP full frame, 100 MP medium format); beyond
# that it is a bomb or a mistake. Decoding 100 MP to RGB takes 300 MB.
MAX_PIXELS = 100_000_000
# Multi-frame JPEGs (MPO) open through the JPEG plugin and yield their first frame.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "HEIF")
ACCEPTED = "JPEG, PNG, WebP, TIFF, BMP or HEIC"
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Phone photos arrive as HEIC. Registering the opener here also stops ultralytics' patched
# Image.open from trying to pip-install pi-heif (offline) on the first unidentified file.
pi_heif.register_heif_opener()
Image.init()  # register every plugin, so the formats= allow-list can name TIFF and WebP

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_SIDES = (5, 6, 7, 8)


def _kind(head: bytes) -> str | None:
    """What a file that no allowed decoder recognised is, from its first bytes (None: unknown)."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "an SVG drawing (SVG can carry scripts and is never opened)"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script")):
        return "an HTML page"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head[:256]):
        return "text"
    return None


def _unrecognised(name: str, head: bytes) -> ImageError:
    kind = _kind(head)
    if kind == "gif":
        return ImageError(f"{name}: GIF is not supported for inspection photos (its 256 colours lose what the models look at); "
                          f"send the original {ACCEPTED} photo")
    return ImageError(f"{name}: expected a {ACCEPTED} photo, found {kind or 'an unrecognised file'}")


def _too_large(name: str, cap: int, pixels: int, size: str | None = None) -> ImageError:
    found = f"{size} ({pixels / 1e6:.0f} MP)" if size else f"{pixels / 1e6:.0f} MP"
    # Pillow's own check (the global MAX_IMAGE_PIXELS) runs first when the cap asked for is higher.
    return ImageError(f"{name}: expected a photo of at most {min(cap, MAX_PIXELS) / 1e6:.0f} MP, found {found}")


@dataclass(frozen=True)
class Decoded:
    """A decoded upright RGB image and the upright size of the file it came from (they differ
    when ``load_photo`` shrank it)."""

    image: Image.Image
    original_size: tuple[int, int]


def _decode(source: str | Path | bytes, max_pixels: int, name: str | None, working_size: int | None) -> Decoded:
    name = name or ("uploaded bytes" if isinstance(source, bytes) else str(source))
    data = source if isinstance(source, bytes) else None
    if data is None:
        try:
            if Path(source).stat().st_size == 0:
                raise ImageError(f"{name}: expected an image, found an empty (0-byte) file")
        except FileNotFoundError:
            raise ImageError(f"{name}: expected an image file, found nothing") from None
    elif not data:
        raise ImageError(f"{name}: expected an image, found an empty (0-byte) file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data) if data is not None else source, formats=list(ALLOWED_FORMATS))
            if im.width * im.height > max_pixels:
                raise _too_large(name, max_pixels, im.width * im.height, f"{im.width}x{im.height}")
            w, h = im.size
            if working_size and max(w, h) > working_size and im.format == "JPEG":
                # Decode a big JPEG at 1/2, 1/4 or 1/8 scale straight away (never below the
                # working size): a 61 MP photo then costs a quarter of the memory.
                r = working_size / max(w, h)
                im.draft(None, (math.ceil(w * r), math.ceil(h * r)))
            im.load()
            swapped = im.getexif().get(0x0112) in _SWAPS_SIDES  # read after load: a PNG's eXIf may follow its pixels
            im = ImageOps.exif_transpose(im)
            image = _to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(name, max_pixels, int(found.group(1)) if found else max_pixels + 1) from None
    except Image.UnidentifiedImageError:
        if data is None:
            with open(source, "rb") as f:
                data = f.read(512)
        head = data[:512]
        raise _unrecognised(name, head) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: image is damaged or truncated: {exc}") from None
    if working_size and max(image.size) > working_size:
        r = working_size / max(image.size)
        image = image.resize((max(1, round(image.width * r)), max(1, round(image.height * r))), Image.LANCZOS)
    return Decoded(image, (h, w) if swapped else (w, h))


def load_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open, fully decode, EXIF-rotate and convert an image to RGB, at its own size.

    ``name`` is what error messages call the image (default: its path; "uploaded bytes" for bytes).

    Raises:
        ImageError: empty, not an image, truncated, too large, or an unsupported format.
    """
    return _decode(source, max_pixels, name, None).image


def load_photo(source: str | Path | bytes, name: str | None = None, working_size: int | None = None,
               max_pixels: int = MAX_PIXELS) -> Decoded:
    """``load_image``, shrunk to ``working_size`` pixels on its long side when larger (None: never).

    Returns:
        The upright RGB image and the upright size of the original.

    Raises:
        ImageError: as ``load_image``.
    """
    return _decode(source, max_pixels, name, working_size)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale the real range to 8 bits instead of clipping to white.
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size and arr.max() > 0 else 1.0
        return Image.fromarray((arr / hi * 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return im.convert("RGB")
