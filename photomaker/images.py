"""Loading ID photos: any source, any mode → upright 8-bit RGB, with clear errors.

``load_image`` turns a path, bytes, file object, numpy array or PIL image into an
upright (EXIF-transposed) RGB PIL image. ``load_id_images`` does that for a list of
uploads and enforces the count and size limits, naming the photo at fault.

Hostile uploads are stopped before they cost anything: the pixel limit is checked from the
file header (``Image.open`` reads only the header; pixels are decoded by ``load()``), JPEGs
are decoded at a reduced scale (``draft``) when the photo is larger than what is kept, and a
photo whose shorter side would be a sliver is refused before the face detector sees it.
Messages name a photo by its number and file name, never by a path on the server. HEIC/HEIF
(iPhone photos) are read through ``pillow-heif``, AVIF by Pillow itself.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from photomaker.errors import PhotoMakerInputError

__all__ = [
    "DEFAULT_MAX_MEGAPIXELS",
    "MIN_SIDE",
    "ImageSource",
    "load_id_images",
    "load_image",
    "to_rgb",
]

logger = logging.getLogger(__name__)

ImageSource = Any  # str | os.PathLike | bytes | BinaryIO | np.ndarray | PIL.Image.Image

#: Largest photo accepted, in megapixels of what is decoded (``Settings.max_photo_megapixels``).
DEFAULT_MAX_MEGAPIXELS = 40.0
#: Shortest side, in pixels after the downscale to ``max_side``, of an ID photo: thinner
#: slivers crash the face detector and hold no face anyway.
MIN_SIDE = 32
FORMATS_HINT = "use a JPEG, PNG, WebP, HEIC or AVIF image"

_WHITE = (255, 255, 255)


def _register_openers() -> None:
    """HEIC/HEIF through pillow-heif; AVIF by Pillow (>= 11.3), else pillow-heif's opener."""
    try:
        import pillow_heif
    except ImportError:  # an optional extra outside requirements.txt
        logger.debug("pillow-heif is not installed: HEIC/HEIF photos cannot be read")
        return
    pillow_heif.register_heif_opener()
    if not features.check("avif") and hasattr(pillow_heif, "register_avif_opener"):
        pillow_heif.register_avif_opener()


_register_openers()


def _describe(source: ImageSource) -> str:
    """How to name a source to its user: a file's name, never the folder it sits in on the
    server (Gradio keeps uploads under /tmp/gradio/<hash>/)."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name or "the file"
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return Path(name).name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"the upload ({len(source)} bytes)"
    if isinstance(source, np.ndarray):
        return f"array {source.shape} {source.dtype}"
    return type(source).__name__


def _from_array(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be H×W, H×W×3 or H×W×4, not {a.shape}")
    if a.size == 0:
        raise ValueError("the image array is empty")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
    elif np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64))
        scale = 255.0 if a.max() <= 1.0 else 1.0
        a = np.clip(np.rint(a * scale), 0, 255)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255)
    a = np.ascontiguousarray(a.astype(np.uint8))
    if a.ndim == 2:
        return Image.fromarray(a, mode="L")
    return Image.fromarray(a, mode="RGB" if a.shape[2] == 3 else "RGBA")


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )


def _to_rgba(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGBA" else image.convert("RGBA")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB. Transparency is composited on white; 16-bit and float
    grey levels are scaled to 0–255, not clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if _has_alpha(image):
        return _composite_on_white(image)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(image).astype(np.int64)
        if mode.startswith("I;16") or a.max(initial=0) > 255:
            a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        a = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        transform = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(image, transform)
    return image.convert("RGB")


def _open(source: ImageSource) -> Image.Image:
    """The image, for encoded sources only opened: ``Image.open`` reads the header, so the
    size can be checked before ``load()`` decodes the pixels."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if (
        isinstance(source, (tuple, list))
        and len(source) == 2
        and isinstance(source[1], (str, type(None)))
    ):
        return _open(source[0])  # a Gradio gallery item: (image, caption)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise PhotoMakerInputError("is empty; upload it again")
        stream: Any = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            raise PhotoMakerInputError("is a folder, not an image file; name the image files")
        if not path.is_file():
            raise PhotoMakerInputError(
                "was not found (in the app: it may have been removed; upload it again)"
            )
        if path.stat().st_size == 0:
            raise PhotoMakerInputError("is empty (0 bytes); upload it again")
        stream = path
    elif hasattr(source, "read"):
        stream = source
    else:
        raise TypeError(f"cannot read an image from a {type(source).__name__}")
    return Image.open(stream)


def _scaled_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``size`` after the downscale that keeps the longer side at most ``max_side``."""
    width, height = size
    scale = min(1.0, max_side / max(width, height)) if max_side else 1.0
    return max(1, round(width * scale)), max(1, round(height * scale))


def _megapixels(pixels: int) -> str:
    """``144``, ``12``, ``0.26``: whole above 10, two figures below (not ``0`` for a small one)."""
    value = pixels / 1e6
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _check_pixels(
    decoded: tuple[int, int], max_megapixels: float | None, header: tuple[int, int]
) -> None:
    """Refuse more than ``max_megapixels`` to decode; the message gives the photo's own size."""
    if max_megapixels is None or decoded[0] * decoded[1] <= max_megapixels * 1_000_000:
        return
    width, height = header
    raise PhotoMakerInputError(
        f"is {width}×{height} pixels ({_megapixels(width * height)} megapixels); the limit is "
        f"{max_megapixels:g} megapixels. Use a smaller image (a phone photo is about 12)"
    )


def _check_sides(size: tuple[int, int], max_side: int | None, min_side: int | None) -> None:
    scaled = _scaled_size(size, max_side)
    if not min_side or min(scaled) >= min_side:
        return
    width, height = size
    after = f" (once scaled to {scaled[0]}×{scaled[1]})" if scaled != size else ""
    raise PhotoMakerInputError(
        f"is {width}×{height} pixels{after}: too thin to hold a face; its shorter side must be "
        f"at least {min_side} pixels. Use a photo of the person, not a strip or a banner"
    )


def _reduce_jpeg(image: Image.Image, max_side: int | None) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still gives the kept size."""
    if max_side and image.format == "JPEG" and max(image.size) > max_side:
        image.draft("RGB", _scaled_size(image.size, max_side))


def _without_paths(text: str, source: ImageSource) -> str:
    """Pillow's messages quote the file's path; keep only its name."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        for spelling in {str(source), str(path), str(path.resolve())}:
            text = text.replace(spelling, path.name)
    return re.sub(r"(?<![\w.])(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/]+)+[\\/]([^\s'\"\\/]+)", r"\1", text)


def _too_large(
    name: str, exc: Image.DecompressionBombError, max_megapixels: float | None
) -> PhotoMakerInputError:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" ({_megapixels(int(found.group(1)))} megapixels)" if found else ""
    limit = f"; the limit is {max_megapixels:g} megapixels" if max_megapixels else ""
    return PhotoMakerInputError(
        f"{name} is too large to open safely{size}{limit}. Use a smaller image (a phone photo "
        "is about 12)."
    )


def _unreadable(name: str, exc: BaseException, source: ImageSource) -> PhotoMakerInputError:
    if isinstance(exc, UnidentifiedImageError):  # its text is only the (server) path
        return PhotoMakerInputError(
            f"{name} is not an image, or not in a format we read; {FORMATS_HINT}."
        )
    reason = _without_paths(str(exc), source) or type(exc).__name__
    return PhotoMakerInputError(f"{name} is not an image we can read ({reason}); {FORMATS_HINT}.")


def load_image(
    source: ImageSource,
    max_side: int | None = None,
    *,
    max_megapixels: float | None = None,
    min_side: int | None = None,
    keep_alpha: bool = False,
) -> Image.Image:
    """Read one image as an upright RGB PIL image.

    ``source``: a path (``str``/``PathLike``), encoded bytes, a binary file object, a
    numpy array (H×W, H×W×3, H×W×4; uint8, uint16, bool or float in 0–1/0–255) or a PIL
    image of any mode (L, P, RGBA, LA, I;16, I, F, CMYK, …), in any format Pillow reads,
    HEIC/HEIF and AVIF included. The EXIF orientation is applied; an animated image gives
    its first frame. With ``max_side`` the result is downscaled (aspect kept) so its longer
    side is at most ``max_side``, and a large JPEG is decoded at a reduced scale.

    ``max_megapixels`` refuses an image with more pixels than that to decode — read from the
    header, before any decoding (for a JPEG, after the reduced scale is chosen). ``min_side``
    refuses an image whose shorter side, after the downscale, is below it. ``keep_alpha``
    gives an image with transparency as RGBA instead of compositing it on white (a drawing's
    strokes, see :func:`photomaker.pipeline_adapter.doodle_image`).

    Raises :class:`PhotoMakerInputError` naming the file (never its folder) when the source
    is not a readable image or is outside those limits.
    """
    name = _describe(source)
    try:
        with warnings.catch_warnings():  # the limit is checked below, at the decoded size
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open(source)
        header_size = image.size
        _check_sides(header_size, max_side, min_side)
        _reduce_jpeg(image, max_side)
        _check_pixels(image.size, max_megapixels, header_size)
        image.load()
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image = ImageOps.exif_transpose(image)
        image = _to_rgba(image) if keep_alpha and _has_alpha(image) else to_rgb(image)
    except PhotoMakerInputError as exc:
        raise PhotoMakerInputError(f"{name} {exc}.") from exc
    except Image.DecompressionBombError as exc:  # Pillow's own limit, far above ours
        raise _too_large(name, exc, max_megapixels) from exc
    except (UnidentifiedImageError, OSError, ValueError, TypeError, SyntaxError) as exc:
        raise _unreadable(name, exc, source) from exc
    if max_side and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    elif image is source:
        image = image.copy()  # never hand back (and let callers mutate) the caller's object
    return image


def load_id_images(
    sources: Iterable[ImageSource] | ImageSource | None,
    max_photos: int = 10,
    max_side: int = 2048,
    *,
    max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS,
    min_side: int | None = MIN_SIDE,
) -> list[Image.Image]:
    """Load the ID photos of one person: a list of upright RGB images, longer side ≤ ``max_side``.

    Raises :class:`PhotoMakerInputError` with a message naming the photo (its number,
    1-based, and file name) when one cannot be read, has more than ``max_megapixels`` to
    decode, is thinner than ``min_side`` once downscaled, when there are none, or more than
    ``max_photos`` (see :func:`load_image`).
    """
    if sources is None:
        items: list[ImageSource] = []
    elif isinstance(sources, (str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray)):
        items = [sources]
    else:
        items = [s for s in sources if s is not None]
    if not items:
        raise PhotoMakerInputError(
            "No ID photo: upload at least one photo of the person (1 to "
            f"{max_photos}; several photos with different expressions work best)."
        )
    if len(items) > max_photos:
        raise PhotoMakerInputError(
            f"{len(items)} ID photos were given; the limit is {max_photos}. "
            f"Remove {len(items) - max_photos} of them."
        )
    images = []
    for number, source in enumerate(items, start=1):
        try:
            image = load_image(
                source, max_side=max_side, max_megapixels=max_megapixels, min_side=min_side
            )
        except PhotoMakerInputError as exc:
            raise PhotoMakerInputError(f"Photo {number}: {exc}") from exc
        logger.debug("photo %d (%s): %dx%d", number, _describe(source), *image.size)
        images.append(image)
    return images


def image_digest(image: Image.Image) -> str:
    """A content hash of a decoded image (mode, size, pixels): the key of the face-analysis
    and ID-embedding caches, so the same photo uploaded again is recognised."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
