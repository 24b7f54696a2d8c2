"""Safe image loading for anything a user may upload.

Decompression bombs are errors (not warnings), only raster formats are accepted, the image
is fully decoded inside the try so truncation is caught here, EXIF orientation is applied
so boxes live in upright coordinates, and every mode (CMYK, 16-bit, palette, RGBA) becomes RGB.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pi_heif
from PIL import Image, ImageOps

from core.errors import ImageError

# 40 MP covers any phone or drone photo; beyond that it is a bomb or a mistake.
MAX_PIXELS = 40_000_000
# Multi-frame JPEGs (MPO) open through the JPEG plugin and yield their first frame.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "HEIF")
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Phone photos arrive as HEIC. Registering the opener here also stops ultralytics' patched
# Image.open from trying to pip-install pi-heif (offline) on the first unidentified file.
pi_heif.register_heif_opener()
Image.init()  # register every plugin, so the formats= allow-list can name TIFF and WebP


def load_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open, fully decode, EXIF-rotate and convert an image to RGB.

    ``name`` is what error messages call the image (default: its path; "uploaded bytes" for bytes).

    Raises:
        ImageError: empty, not an image, truncated, too large, or an unsupported format.
    """
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
                raise ImageError(f"{name}: expected at most {max_pixels} pixels, found {im.width}x{im.height}")
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: image too large (decompression bomb guard): {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: expected a {'/'.join(ALLOWED_FORMATS)} image, found an unrecognised file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: image is damaged or truncated: {exc}") from None


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
