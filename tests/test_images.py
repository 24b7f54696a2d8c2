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
        (b"hello, this is a text file renamed .jpg", "found text$"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "found an SVG drawing"),
        (b"<html><body>hi</body></html>", "found an HTML page"),
        (b"%PDF-1.7\n%\xe2\xe3", "found a PDF document"),
        (b"\x00\x01\x02\xff" * 40, "found an unrecognised file"),
        (b"GIF89a\x01\x00\x01\x00", "GIF is not supported for inspection photos"),
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


@pytest.mark.parametrize("size, found", [
    ((60_000, 2_000), "found 120 MP"),  # over the cap: Pillow's warning, raised as an error
    ((20_000, 20_000), "found 400 MP"),  # over twice the cap: Pillow's own bomb error
])
def test_huge_dimensions_are_refused_before_decoding(size, found):
    buf = io.BytesIO()
    Image.new("1", size).save(buf, "PNG")  # tiny on disk
    with pytest.raises(ImageError, match=f"expected a photo of at most 100 MP, {found}"):
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
