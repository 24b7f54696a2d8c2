"""Ingesting uploaded photos: validate, normalise orientation and size, store once by content hash.

The photo policy: at most ``max_bytes`` uploaded, at least ``MIN_SIDE_PX`` a side (a thumbnail
or a 1x1 pixel is not an inspection photo), at most ``core.images.MAX_PIXELS``; a photo larger
than ``working_size`` on its long side is stored shrunk to it (the models see a few hundred
pixels; a 61 MP original would only cost memory and time), keeping the original's hash and
size. Boxes live in the stored image's pixels.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.images import load_photo
from core.paths import data_dir

MAX_UPLOAD_BYTES = 50 * 2**20  # a drone JPEG is a few MB; anything far larger is a mistake or an attack
MIN_SIDE_PX = 32
WORKING_SIZE_PX = 4096


@dataclass(frozen=True)
class StoredPhoto:
    """An ingested upload.

    Attributes:
        sha256: hash of the uploaded bytes (the photo's identity).
        path: the stored upright RGB PNG.
        image: the stored image (``working_size`` on its long side at most).
        original_size: the upload's upright ``(width, height)``.
    """

    sha256: str
    path: Path
    image: Image.Image
    original_size: tuple[int, int]

    @property
    def downscaled(self) -> bool:
        return self.image.size != self.original_size


def photos_dir() -> Path:
    path = data_dir() / "photos"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ingest(source: str | Path | bytes, folder: Path | None = None, max_bytes: int = MAX_UPLOAD_BYTES, name: str | None = None,
           working_size: int = WORKING_SIZE_PX, min_side: int = MIN_SIDE_PX) -> StoredPhoto:
    """Validate and store one upload; the same bytes twice give the same file, written once.

    The stored copy is upright (EXIF applied) RGB, shrunk to ``working_size`` on its long side
    when larger, so boxes are always in upright working-image coordinates and the photo no
    longer depends on the uploader's temp file. ``name`` (default: the file's name) is what
    error messages call the upload.

    Raises:
        core.errors.ImageError: too many bytes, empty, not an image, truncated, a decompression
            bomb, smaller than ``min_side`` a side, or a format that is not accepted (GIF, SVG, ...).
    """
    from core.errors import ImageError

    name = name or ("uploaded bytes" if isinstance(source, bytes) else Path(source).name)
    data = source if isinstance(source, bytes) else Path(source).read_bytes() if Path(source).is_file() else None
    if data is None:
        raise ImageError(f"{name}: expected an image file, found nothing")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: expected an upload of at most {max_bytes // 2**20} MB, found {len(data) / 2**20:.1f} MB")
    decoded = load_photo(data, name=name, working_size=working_size)
    ow, oh = decoded.original_size
    if min(ow, oh) < min_side:
        raise ImageError(f"{name}: expected a photo at least {min_side}x{min_side} px, found {ow}x{oh}")
    if min(decoded.image.size) < min_side:  # a sliver: long enough to be shrunk, too thin to survive it
        raise ImageError(f"{name}: expected a photo whose short side keeps {min_side} px when shrunk to {working_size} px, "
                         f"found {ow}x{oh} -> {decoded.image.width}x{decoded.image.height}")
    sha = hashlib.sha256(data).hexdigest()
    folder = folder or photos_dir()
    path = folder / f"{sha}.png"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".png")
        os.close(fd)
        try:
            decoded.image.save(tmp, "PNG")
            os.replace(tmp, path)  # never a half-written photo under its final name
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return StoredPhoto(sha, path, decoded.image, decoded.original_size)
