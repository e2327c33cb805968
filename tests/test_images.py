"""photomaker.images: any source and mode → upright 8-bit RGB; clear errors and limits."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from photomaker.errors import PhotoMakerInputError
from photomaker.images import MIN_SIDE, load_id_images, load_image

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


# --------------------------------------------------------------------------- hostile uploads


def _blank_png(path: Path, width: int, height: int) -> Path:
    """A valid black RGB PNG of any size, written row by row: a 12000² one is ~2 MB on disk
    and 432 MB once decoded — a pixel bomb below Pillow's own limit (179 MP)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = bytes(1 + 3 * width)  # filter byte + pixels
    packer = zlib.compressobj(1)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data))
    with path.open("ab") as f:
        f.write(chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return _blank_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 12000, 12000)


def test_pixel_bomb_is_refused_from_the_header(bomb, monkeypatch):
    from PIL import PngImagePlugin

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    with warnings.catch_warnings():  # Pillow may warn at this size; whether is Pillow's call
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(PhotoMakerInputError) as err:
            load_id_images([_marked(), bomb], max_megapixels=40)
    message = str(err.value)
    assert message.startswith("Photo 2: bomb.png is 12000×12000 pixels (144 megapixels)")
    assert "the limit is 40 megapixels" in message
    assert str(bomb.parent) not in message


_PEAK_MEMORY = textwrap.dedent(
    """
    import os, resource, sys
    from photomaker.errors import PhotoMakerInputError
    from photomaker.images import load_id_images

    def peak_kib():
        # This process's own peak (VmHWM). getrusage's ru_maxrss is no good here: Linux
        # carries the parent's peak across fork and exec, so under a parent that holds more
        # than the decode needs (pytest with torch loaded), no growth would ever show.
        if os.path.exists("/proc/self/status"):
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    before = peak_kib()
    try:
        load_id_images([sys.argv[1]], max_megapixels=float(sys.argv[2]))
        outcome = "loaded"
    except PhotoMakerInputError as exc:
        outcome = f"refused: {exc}"
    print(peak_kib() - before)
    print(outcome)
    """
)


def _load_in_a_fresh_process(path: Path, max_megapixels: float) -> tuple[float, str]:
    """(growth of the peak memory in MB while loading ``path``, what happened)."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY, str(path), str(max_megapixels)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    growth_kib, outcome = out.stdout.strip().split("\n", 1)
    return int(growth_kib) / 1024, outcome


def test_pixel_bomb_costs_no_memory(bomb, tmp_path):
    """Refused: the peak grows by a few MB (decoding it costs ~1.1 GB). The same loader on a
    24 MP photo within the limit (72 MB decoded) shows the measurement sees a decode."""
    growth, outcome = _load_in_a_fresh_process(bomb, 40)
    assert outcome.startswith("refused: Photo 1: bomb.png is 12000×12000 pixels"), outcome
    assert growth < 30
    growth, outcome = _load_in_a_fresh_process(_blank_png(tmp_path / "ok.png", 6000, 4000), 40)
    assert outcome == "loaded" and growth > 60


def test_large_jpeg_is_decoded_reduced(tmp_path, monkeypatch):
    path = tmp_path / "camera.jpg"
    Image.new("RGB", (8000, 6000), (10, 20, 30)).save(path, quality=80)
    decoded = []
    original = Image.Image.load

    def record(self):
        decoded.append(self.size)
        return original(self)

    monkeypatch.setattr(Image.Image, "load", record)
    (image,) = load_id_images([path], max_side=2048, max_megapixels=40)
    assert image.size == (2048, 1536)
    assert (4000, 3000) in decoded and (8000, 6000) not in decoded  # libjpeg's 1/2 scale


def test_a_jpeg_over_the_limit_that_decodes_reduced_is_accepted(tmp_path, monkeypatch):
    """The limit counts what is decoded: a 48 MP phone JPEG decodes at 1/2 scale (12 MP)."""
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (8000, 6000), (10, 20, 30)).save(path, quality=80)
    assert load_id_images([path], max_megapixels=40)[0].size == (2048, 1536)
    # Nor does Pillow's own warning, for what its header says, reach the log: the limit that
    # holds is ours, on what is decoded (Pillow's threshold lowered to this photo's size).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert load_id_images([path], max_megapixels=40)[0].size == (2048, 1536)
    with pytest.raises(PhotoMakerInputError, match=r"8000×6000 pixels \(48 megapixels\)"):
        load_id_images([path], max_side=4000, max_megapixels=10)


@pytest.mark.parametrize(
    "size, scaled",
    [((4000, 2), "4000×2 pixels \\(once scaled to 2048×1\\)"), ((2, 40), "2×40 pixels: ")],
)
def test_slivers_are_refused(tmp_path, size, scaled):
    path = tmp_path / "banner.png"
    Image.new("RGB", size, (200, 100, 50)).save(path)
    with pytest.raises(PhotoMakerInputError, match=f"Photo 1: banner.png is {scaled}") as err:
        load_id_images([path])
    assert f"at least {MIN_SIDE} pixels" in str(err.value)
    thin = Image.new("RGB", (4000, 60))  # 2048×31 once scaled
    with pytest.raises(PhotoMakerInputError, match="once scaled to 2048×31"):
        load_id_images([_marked(), thin])
    assert load_id_images([Image.new("RGB", (4000, 64))])[0].size == (2048, 33)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is empty"),
        (b"not an image at all", "is not an image, or not in a format we read"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "is not an image"),
        (None, "was not found"),
        ("folder", "is a folder, not an image file"),
    ],
    ids=["empty", "text", "truncated-png", "missing", "folder"],
)
def test_messages_name_the_upload_never_the_server_path(tmp_path, content, expected):
    folder = tmp_path / "gradio" / "3f2a9c0d1e"
    folder.mkdir(parents=True)
    upload = folder / "holiday photo.jpg"
    if content == "folder":
        upload.mkdir()
    elif content is not None:
        upload.write_bytes(content)
    with pytest.raises(PhotoMakerInputError) as err:
        load_id_images([_marked(), _marked(), upload])
    message = str(err.value)
    assert message.startswith("Photo 3: holiday photo.jpg ") and expected in message
    assert "3f2a9c0d1e" not in message and str(tmp_path) not in message


def test_truncated_jpeg_message_has_no_path(tmp_path):
    buffer = io.BytesIO()
    _marked((200, 200)).save(buffer, format="JPEG")
    path = tmp_path / "srv" / "cut.jpg"
    path.parent.mkdir()
    path.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(PhotoMakerInputError) as err:
        load_id_images([path])
    assert "Photo 1: cut.jpg" in str(err.value) and "srv" not in str(err.value)


@pytest.mark.parametrize("suffix", ["heic", "avif"])
def test_iphone_and_avif_photos(tmp_path, suffix):
    path = tmp_path / f"IMG_0001.{suffix}"
    Image.new("RGB", (96, 64), (200, 30, 30)).save(path)  # HEIC via pillow-heif, AVIF by Pillow
    (image,) = load_id_images([path])
    assert image.mode == "RGB" and image.size == (96, 64)
    r, g, b = image.getpixel((40, 30))
    assert r > 180 and g < 60 and b < 60


def _png_header(path: Path, width: int, height: int) -> Path:
    """The start of a black RGB PNG of ``width``×``height``: signature, header and the first
    rows. A 30000² bomb in full would take seconds to write; what is refused is its header."""
    row = bytes(1 + 3 * width)
    data = zlib.compress(row * 4)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data))
    return path


def test_png_bomb_over_pillows_own_limit_is_a_clear_message(tmp_path):
    bomb = _png_header(tmp_path / "bomb.png", 30000, 30000)  # 900 MP, 2.7 GB decoded
    with pytest.raises(PhotoMakerInputError) as err:
        load_id_images([bomb])
    assert str(err.value).startswith("Photo 1: bomb.png is too large to open safely (900 megapix")
    assert "the limit is 40 megapixels" in str(err.value)


@pytest.mark.parametrize("count", [11, 50])
def test_too_many_photos_are_refused_before_any_is_read(count):
    unreadable = [b"never read"] * count
    with pytest.raises(PhotoMakerInputError, match=f"{count} ID photos.*limit is 10"):
        load_id_images(unreadable, max_photos=10)
