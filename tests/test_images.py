import io
import re

import pytest
from conftest import SAMPLE, bad_images
from PIL import Image

from biocap_ray.data.images import ImageError, load_rgb, probe

MAX = 89_478_485


@pytest.mark.parametrize("name", ["cmyk.jpg", "palette.png", "gray16.png", "alpha.png"])
def test_non_rgb_modes_convert(name):
    img = load_rgb(bad_images()[name], MAX)
    assert img.mode == "RGB" and img.size == (40, 30)


def test_alpha_composites_on_white_and_palette_transparency_too():
    imgs = bad_images()
    r, g, b = load_rgb(imgs["alpha.png"], MAX).getpixel((0, 0))
    assert (r, g, b) == pytest.approx((132, 227, 132), abs=2)  # half-transparent green over white
    assert load_rgb(imgs["palette.png"], MAX).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_keeps_its_range():
    img = load_rgb(bad_images()["gray16.png"], MAX)
    lo, hi = img.convert("L").getextrema()
    assert lo < 10 and hi > 245


@pytest.mark.parametrize(
    "name,reason",
    [("truncated.jpg", "(?i)truncated"), ("garbage.jpg", "not a readable image"), ("bomb.png", "decompression bomb")],
)
def test_bad_images_raise_a_reason(name, reason):
    with pytest.raises(ImageError, match=reason):
        load_rgb(bad_images()[name], MAX)
    assert re.search(reason, probe(bad_images()[name], MAX)[3])


def test_max_pixels_is_checked_before_decoding():
    data = (SAMPLE / "images" / "bos_taurus_npc19.jpg").read_bytes()
    w, h, mode, err = probe(data, MAX)
    assert err is None and mode == "RGB"
    with pytest.raises(ImageError, match="exceeds max_image_pixels"):
        load_rgb(data, w * h - 1)


def test_resize_and_centre_crop():
    data = (SAMPLE / "images" / "bos_taurus_npc19.jpg").read_bytes()
    img = load_rgb(data, MAX, size=224)
    assert img.size == (224, 224) and img.mode == "RGB"
    with pytest.raises(ImageError, match="empty"):
        load_rgb(b"", MAX)
    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, format="BMP")
    assert load_rgb(buf.getvalue(), MAX).size == (10, 10)


def test_draft_decodes_a_jpeg_no_larger_than_needed():
    from conftest import jpeg_bytes

    data = jpeg_bytes(size=(640, 480))
    small = load_rgb(data, 10**8, draft=100)  # DCT scaling by 1/4: both sides stay at least 100
    assert small.size == (160, 120) and small.mode == "RGB"
    assert load_rgb(data, 10**8).size == (640, 480)
