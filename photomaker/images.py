"""Loading ID photos: any source, any mode → upright 8-bit RGB, with clear errors.

``load_image`` turns a path, bytes, file object, numpy array or PIL image into an
upright (EXIF-transposed) RGB PIL image. ``load_id_images`` does that for a list of
uploads and enforces the count and size limits, naming the photo at fault.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from photomaker.errors import PhotoMakerInputError

__all__ = ["ImageSource", "load_id_images", "load_image", "to_rgb"]

logger = logging.getLogger(__name__)

ImageSource = Any  # str | os.PathLike | bytes | BinaryIO | np.ndarray | PIL.Image.Image

_WHITE = (255, 255, 255)


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name or str(source)
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return Path(name).name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"{len(source)} bytes"
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


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB. Transparency is composited on white; 16-bit and float
    grey levels are scaled to 0–255, not clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    ):
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


def _open(source: ImageSource, max_side: int | None) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if (
        isinstance(source, (tuple, list))
        and len(source) == 2
        and isinstance(source[1], (str, type(None)))
    ):
        return _open(source[0], max_side)  # a Gradio gallery item: (image, caption)
    if isinstance(source, (bytes, bytearray, memoryview)):
        stream: Any = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        stream = path
    elif hasattr(source, "read"):
        stream = source
    else:
        raise TypeError(f"cannot read an image from a {type(source).__name__}")
    image = Image.open(stream)
    if max_side and image.format == "JPEG":
        image.draft("RGB", (max_side, max_side))  # decode huge JPEGs at a reduced scale
    image.load()
    return image


def load_image(source: ImageSource, max_side: int | None = None) -> Image.Image:
    """Read one image as an upright RGB PIL image.

    ``source``: a path (``str``/``PathLike``), encoded bytes, a binary file object, a
    numpy array (H×W, H×W×3, H×W×4; uint8, uint16, bool or float in 0–1/0–255) or a PIL
    image of any mode (L, P, RGBA, LA, I;16, I, F, CMYK, …). The EXIF orientation is
    applied; an animated image gives its first frame. With ``max_side`` the result is
    downscaled (aspect kept) so its longer side is at most ``max_side``.

    Raises :class:`PhotoMakerInputError` when the source is not a readable image.
    """
    try:
        image = _open(source, max_side)
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
    except PhotoMakerInputError:
        raise
    except Image.DecompressionBombError as exc:
        raise PhotoMakerInputError(
            f"{_describe(source)} is too large to open safely ({exc}); use a smaller photo."
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, TypeError, SyntaxError) as exc:
        raise PhotoMakerInputError(
            f"{_describe(source)} is not an image we can read ({exc}); "
            "use a JPEG, PNG or WebP photo."
        ) from exc
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
) -> list[Image.Image]:
    """Load the ID photos of one person: a list of upright RGB images, longer side ≤ ``max_side``.

    Raises :class:`PhotoMakerInputError` with a message naming the photo (its number,
    1-based, and file name) when one cannot be read, when there are none, or more than
    ``max_photos``.
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
            image = load_image(source, max_side=max_side)
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
