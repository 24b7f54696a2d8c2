"""The upload hazards from the engineering notes, each against the safe loader."""

import io

import numpy as np
import pytest
from PIL import Image

from core.errors import ImageError
from core.images import load_image


def _jpeg_bytes(size=(64, 48), **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_plain_jpeg_from_path_and_bytes(tmp_path):
    data = _jpeg_bytes()
    (tmp_path / "a.jpg").write_bytes(data)
    for src in (tmp_path / "a.jpg", data):
        im = load_image(src)
        assert im.mode == "RGB" and im.size == (64, 48)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"hello, this is a text file renamed .jpg", "unrecognised"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "unrecognised"),
        (b"<html><body>hi</body></html>", "unrecognised"),
    ],
)
def test_non_images_are_refused(tmp_path, payload, message):
    path = tmp_path / "photo.jpg"
    path.write_bytes(payload)
    with pytest.raises(ImageError, match=message):
        load_image(path)


def test_truncated_jpeg_is_refused():
    data = _jpeg_bytes((256, 256))
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(data[: len(data) // 2])


def test_huge_dimensions_are_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("1", (60_000, 1_000)).save(buf, "PNG")  # 60 MP, tiny on disk
    with pytest.raises(ImageError, match="too large|at most"):
        load_image(buf.getvalue())


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="found nothing"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "P", "L", "I;16"])
def test_modes_become_rgb(mode):
    buf = io.BytesIO()
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    if mode == "I;16":
        Image.fromarray(np.full((10, 12), 40000, dtype=np.uint16)).save(buf, fmt)
    else:
        Image.new(mode, (12, 10)).save(buf, fmt)
    im = load_image(buf.getvalue())
    assert im.mode == "RGB" and im.size == (12, 10)
    if mode == "I;16":
        assert im.getpixel((0, 0))[0] == 255  # scaled to 8 bits, not clipped to noise


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = _jpeg_bytes((80, 40), exif=exif.tobytes())
    assert load_image(data).size == (40, 80)
