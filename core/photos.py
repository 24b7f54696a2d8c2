"""Ingesting uploaded photos: validate, normalise orientation, store once by content hash."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.images import load_image
from core.paths import data_dir

MAX_UPLOAD_BYTES = 50 * 2**20  # a drone JPEG is a few MB; anything far larger is a mistake or an attack


@dataclass(frozen=True)
class StoredPhoto:
    sha256: str
    path: Path
    image: Image.Image


def photos_dir() -> Path:
    path = data_dir() / "photos"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ingest(source: str | Path | bytes, folder: Path | None = None, max_bytes: int = MAX_UPLOAD_BYTES, name: str | None = None) -> StoredPhoto:
    """Validate and store one upload; the same bytes twice give the same file, written once.

    The stored copy is upright (EXIF applied) RGB, so boxes are always in upright coordinates and
    the photo no longer depends on the uploader's temp file. ``name`` (default: the file's name)
    is what error messages call the upload.

    Raises:
        core.errors.ImageError: too large, empty, not an image, truncated, or a decompression bomb.
    """
    from core.errors import ImageError

    name = name or ("uploaded bytes" if isinstance(source, bytes) else Path(source).name)
    data = source if isinstance(source, bytes) else Path(source).read_bytes() if Path(source).is_file() else None
    if data is None:
        raise ImageError(f"{name}: expected an image file, found nothing")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: expected an upload of at most {max_bytes // 2**20} MB, found {len(data) / 2**20:.1f} MB")
    image = load_image(data, name=name)
    sha = hashlib.sha256(data).hexdigest()
    folder = folder or photos_dir()
    path = folder / f"{sha}.png"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".png")
        os.close(fd)
        image.save(tmp, "PNG")
        os.replace(tmp, path)  # never a half-written photo under its final name
    return StoredPhoto(sha, path, image)
