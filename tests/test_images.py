"""photomaker.images: any source and mode → upright 8-bit RGB; clear errors and limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from photomaker.errors import PhotoMakerInputError
from photomaker.images import load_id_images, load_image

ORIENTATION = 0x0112


def _marked(size=(60, 40)) -> Image.Image:
    """A grey RGB image with a red 10×10 square in its top-left corner."""
    image = Image.new("RGB", size, (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, 10, 10))
    return image


def _exif_rotated_jpeg(path) -> None:
    """Store ``_marked()`` turned 90° left, with the EXIF tag (6: turn right to view)."""
    stored = _marked().transpose(Image.Transpose.ROTATE_90)  # 40×60, counter-clockwise
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored.save(path, exif=exif, quality=95)


def test_sources_path_str_bytes_file_pil_array(tmp_path):
    path = tmp_path / "a.png"
    _marked().save(path)
    sources = [
        path,
        str(path),
        path.read_bytes(),
        open(path, "rb"),  # noqa: SIM115 - closed by PIL after load
        _marked(),
        np.asarray(_marked()),
    ]
    for source in sources:
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (60, 40)
        assert image.getpixel((2, 2)) == (255, 0, 0)
    sources[3].close()


def test_pil_source_is_copied_not_returned():
    original = _marked()
    loaded = load_image(original)
    loaded.paste((0, 0, 0), (0, 0, 60, 40))
    assert original.getpixel((2, 2)) == (255, 0, 0)


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    _exif_rotated_jpeg(path)
    assert Image.open(path).size == (40, 60)
    image = load_image(path)
    assert image.size == (60, 40)
    r, g, b = image.getpixel((3, 3))
    assert r > 200 and g < 60 and b < 60  # the mark is back in the top-left corner


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.new("L", (8, 8), 200), (200, 200, 200)),
        (lambda: Image.new("1", (8, 8), 1), (255, 255, 255)),
        (lambda: _marked((8, 8)).convert("P"), None),
        (lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)), (255, 255, 255)),
        (lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 255)), (255, 0, 0)),
        (lambda: Image.new("LA", (8, 8), (0, 0)), (255, 255, 255)),
        (lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("F", (8, 8), 0.5), (128, 128, 128)),
        (lambda: Image.new("YCbCr", (8, 8), (128, 128, 128)), None),
    ],
    ids=["L", "1", "P", "RGBA-clear", "RGBA-opaque", "LA-clear", "CMYK", "F", "YCbCr"],
)
def test_modes_become_rgb(make, expected):
    image = load_image(make())
    assert image.mode == "RGB" and image.size == (8, 8)
    if expected is not None:
        assert image.getpixel((4, 4)) == expected


def test_rgba_semi_transparent_composited_on_white():
    image = load_image(Image.new("RGBA", (4, 4), (0, 0, 0, 128)))
    assert image.getpixel((0, 0)) == (127, 127, 127)


def test_palette_with_transparency_composited_on_white(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    path = tmp_path / "p.png"
    image.save(path, transparency=1)
    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image16 = Image.fromarray(values, mode="I;16")
    path = tmp_path / "g16.png"
    image16.save(path)
    for source in (image16, path, values):
        rgb = np.asarray(load_image(source))
        assert rgb.shape == (1, 4, 3)
        assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_32_bit_int_with_16_bit_data_is_scaled():
    image = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    assert np.asarray(load_image(image))[0, :, 0].tolist() == [0, 255]


def test_float_and_bool_arrays():
    assert load_image(np.full((2, 2, 3), 1.0)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((2, 2), 0.5, dtype=np.float32)).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(np.ones((2, 2), dtype=bool)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.zeros((2, 2, 4), dtype=np.uint8)).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_file(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    r, g, b = load_image(path).getpixel((8, 8))
    assert r > 230 and g < 30 and b < 30


def test_first_frame_of_animation(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    r, g, b = load_image(path).getpixel((0, 0))
    assert r > 200 and b < 50


def test_not_an_image_names_the_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(PhotoMakerInputError, match="notes.txt"):
        load_image(path)
    with pytest.raises(PhotoMakerInputError, match="not an image"):
        load_image(b"\x00\x01 definitely not a photo")
    with pytest.raises(PhotoMakerInputError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(PhotoMakerInputError):
        load_image(np.zeros((2, 2, 7), dtype=np.uint8))
    with pytest.raises(PhotoMakerInputError):
        load_image(12345)


def test_truncated_jpeg_is_an_input_error(tmp_path):
    buffer = io.BytesIO()
    _marked((200, 200)).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(PhotoMakerInputError, match="cut.jpg"):
        load_image(path)


def test_load_id_images_names_the_bad_photo(tmp_path):
    good = tmp_path / "good.png"
    _marked().save(good)
    bad = tmp_path / "holiday.pdf"
    bad.write_bytes(b"%PDF-1.4 not a photo")
    with pytest.raises(PhotoMakerInputError, match=r"Photo 2: holiday\.pdf"):
        load_id_images([good, bad, good])


@pytest.mark.parametrize("empty", [[], None, [None]])
def test_load_id_images_needs_one_photo(empty):
    with pytest.raises(PhotoMakerInputError, match="upload at least one photo"):
        load_id_images(empty)


def test_load_id_images_limits_the_count():
    photos = [_marked()] * 12
    with pytest.raises(PhotoMakerInputError, match=r"12 ID photos.*limit is 10.*Remove 2"):
        load_id_images(photos, max_photos=10)
    assert len(load_id_images(photos[:10], max_photos=10)) == 10


def test_load_id_images_downscales_huge_photos(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 1500), (10, 20, 30)).save(path)
    small, big = load_id_images([_marked(), path], max_side=1024)
    assert small.size == (60, 40)
    assert big.size == (1024, 512) and big.mode == "RGB"


def test_load_id_images_accepts_a_single_source_and_gallery_items(tmp_path):
    path = tmp_path / "one.png"
    _marked().save(path)
    assert len(load_id_images(path)) == 1
    assert len(load_id_images(str(path))) == 1
    (image,) = load_id_images([(str(path), "caption")])
    assert image.size == (60, 40)
