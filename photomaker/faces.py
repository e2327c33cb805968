"""Face analysis for ID photos with InsightFace 2.x: one report per photo, before any GPU work.

:class:`FaceAnalyzer` wraps ``insightface.app.FaceAnalysis`` (detection + recognition
only) and adds what PhotoMaker needs:

- a detection-size fallback that really runs: InsightFace 2.x's SCRFD reads
  ``det_model.input_sizes`` (and, given several, runs *all* of them and merges the boxes);
  setting ``det_model.input_size`` as the reference demo does changes nothing. We call
  ``det_model.detect(img, input_size=(s, s))`` for 640, 512, …, 256 in turn and stop at
  the first size that finds a face (big, close-up faces are often missed at 640);
- the main face: the largest box, weighted by its detection score;
- the raw 512-d ArcFace ``embedding`` PhotoMaker V2 was trained with (not the normed one);
- a bounded LRU cache keyed by the image's content hash (``cache_hits`` counts hits);
- a missing-pack check *before* InsightFace is asked to load it: offline, InsightFace
  would try to download the pack and fail or hang; we say which files go where instead.

:func:`keep_photos_with_faces` keeps the photos and embeddings in step (the reference
drops faceless photos from the embeddings only, then crashes); :func:`crop_around_face`
is the optional "crop ID photos around the face" step before the CLIP encoder;
:func:`likeness` scores generated images against the ID photos (the paper's ID similarity).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from photomaker.errors import PhotoMakerInputError
from photomaker.images import image_digest

__all__ = [
    "KNOWN_PACKS",
    "FaceAnalyzer",
    "FaceReport",
    "KeptPhotos",
    "crop_around_face",
    "default_providers",
    "keep_photos_with_faces",
    "likeness",
    "likeness_caption",
]

logger = logging.getLogger(__name__)

DEFAULT_DET_SIZES = (640, 512, 384, 320, 256)
EMBEDDING_DIM = 512
THUMBNAIL_SIDE = 128

#: Detector and recognizer files of InsightFace's public packs (the other files in a
#: pack — landmarks, gender/age — are not needed here).
KNOWN_PACKS: dict[str, tuple[str, ...]] = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "buffalo_m": ("det_2.5g.onnx", "w600k_r50.onnx"),
    "buffalo_s": ("det_500m.onnx", "w600k_mbf.onnx"),
    "buffalo_sc": ("det_500m.onnx", "w600k_mbf.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}

_OFFLINE_VARS = ("PHOTOMAKER_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_DOWNLOAD_HOST = ("github.com", 443)  # InsightFace's model-zoo releases


@dataclass
class FaceReport:
    """What face analysis found in one ID photo.

    ``index`` is 0-based; ``message`` numbers photos from 1 as users do. ``bbox`` is
    ``(x1, y1, x2, y2)`` in the photo's pixels; ``embedding`` the raw 512-d float32
    ArcFace embedding of the main face (``None`` without a face); ``crop`` a thumbnail
    of the main face; ``det_size`` the detection size that found it.
    """

    index: int
    found: bool
    num_faces: int
    bbox: tuple[float, float, float, float] | None
    score: float | None
    embedding: np.ndarray | None = field(repr=False)  # 512 floats: not for a log line
    crop: Image.Image | None = field(repr=False)
    message: str
    det_size: int | None = None


@dataclass
class KeptPhotos:
    """The ID photos with a face, their embeddings in the same order, and what was dropped."""

    images: list[Image.Image]
    embeddings: np.ndarray  # float32 [len(images), 512]
    indices: list[int]  # 0-based positions of the kept photos in the input
    messages: list[str] = field(default_factory=list)  # one per dropped photo


@dataclass(frozen=True)
class _Analysis:
    """The cached, position-independent part of a report."""

    num_faces: int
    bbox: tuple[float, float, float, float] | None
    score: float | None
    embedding: np.ndarray | None
    det_size: int | None


def default_providers(force_cpu: bool = False) -> list[str]:
    """CUDA (with CPU fallback) when onnxruntime offers it and CPU is not forced, else CPU."""
    import onnxruntime

    if not force_cpu and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _offline_by_env() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in _OFFLINE_VARS
    )


def _network_available(timeout: float = 2.0) -> bool:
    """Can we open a TCP connection to InsightFace's download host within ``timeout``?

    Runs in a daemon thread so a hanging DNS lookup cannot block us longer than that.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(_DOWNLOAD_HOST, timeout=timeout):
                result.append(True)
        except Exception:  # any failure (DNS, refused, timeout) means: no download
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _has_models(folder: Path) -> bool:
    return folder.is_dir() and (any(folder.glob("*.onnx")) or (folder / "manifest.json").is_file())


def _missing_pack_message(pack: str, folder: Path, reason: str) -> str:
    files = KNOWN_PACKS.get(pack)
    wanted = (
        ", ".join(files) if files else "a detector (SCRFD, .onnx) and a recognizer (ArcFace, .onnx)"
    )
    return (
        f"The InsightFace face pack '{pack}' is not on this machine ({reason}). "
        f"Put its files — {wanted} — in {folder}/ "
        f"(e.g. unzip {pack}.zip from https://github.com/deepinsight/insightface/releases "
        "there), or pass a folder that holds them as the face pack."
    )


def resolve_pack(
    pack: str | os.PathLike,
    root: str | os.PathLike = "~/.insightface",
    allow_download: bool = True,
) -> tuple[str, bool]:
    """Where the pack is: ``(name_or_folder_for_FaceAnalysis, is_on_disk)``.

    A folder path is used as is; a name is looked up as ``root/models/<name>``, as
    InsightFace does. Raises :class:`PhotoMakerInputError` at once, without touching the
    network for longer than a 2-second probe, when the pack is missing and cannot be
    downloaded (``allow_download=False``, ``HF_HUB_OFFLINE``/``PHOTOMAKER_OFFLINE`` set,
    or no connection), or when a folder holds no models.
    """
    text = str(pack)
    direct = Path(text).expanduser()
    looks_like_path = isinstance(pack, os.PathLike) or os.sep in text or text.startswith((".", "~"))
    if direct.is_dir():
        if not _has_models(direct):
            raise PhotoMakerInputError(
                f"The face pack folder {direct} holds no .onnx models. Put a detector "
                "(SCRFD) and a recognizer (ArcFace) there, e.g. the files of buffalo_l: "
                + ", ".join(KNOWN_PACKS["buffalo_l"])
                + "."
            )
        return str(direct.resolve()), True
    if looks_like_path:
        raise PhotoMakerInputError(
            f"The face pack folder {direct} does not exist. Give the folder that holds the "
            "InsightFace .onnx files, or a pack name such as 'buffalo_l'."
        )
    folder = Path(root).expanduser() / "models" / text
    if _has_models(folder):
        return text, True
    if folder.exists():
        # InsightFace would take the existing folder for a downloaded pack and fail.
        raise PhotoMakerInputError(_missing_pack_message(text, folder, "its folder is empty"))
    if not allow_download:
        raise PhotoMakerInputError(_missing_pack_message(text, folder, "downloads are off"))
    if _offline_by_env():
        raise PhotoMakerInputError(
            _missing_pack_message(text, folder, "offline mode is set, so it cannot be downloaded")
        )
    if not _network_available():
        raise PhotoMakerInputError(_missing_pack_message(text, folder, "no network to download it"))
    return text, False


def crop_around_face(
    image: Image.Image,
    bbox: Sequence[float],
    margin: float = 0.5,
) -> Image.Image:
    """A square crop centred on the face box, ``margin`` × the box's longer side added on
    every side, moved (not shrunk) to stay inside the photo where it can.

    With ``margin=0.5`` the face fills about half the crop — close to a portrait — which
    helps CLIP when the face is small in the photo.
    """
    if margin < 0:
        raise ValueError("margin must be >= 0")
    x1, y1, x2, y2 = (float(v) for v in bbox[:4])
    width, height = image.size
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    side = max(1.0, min(side, float(width), float(height)))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left = min(max(cx - side / 2.0, 0.0), width - side)
    top = min(max(cy - side / 2.0, 0.0), height - side)
    box = (round(left), round(top), round(left + side), round(top + side))
    return image.crop(box)


def _thumbnail(image: Image.Image, bbox: Sequence[float]) -> Image.Image:
    crop = crop_around_face(image, bbox, margin=0.15)
    crop.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    return crop


def _main_face(bboxes: np.ndarray) -> int:
    """Index of the largest box, weighted by its score (rows: x1, y1, x2, y2, score)."""
    areas = np.clip(bboxes[:, 2] - bboxes[:, 0], 0, None) * np.clip(
        bboxes[:, 3] - bboxes[:, 1], 0, None
    )
    return int(np.argmax(areas * bboxes[:, 4]))


class FaceAnalyzer:
    """InsightFace detection + ArcFace embeddings for ID photos, with fallback and cache.

    ``pack``: a pack name under ``root/models/`` (``buffalo_l``, ``antelopev2``, …) or a
    folder holding the .onnx files — both go through ``insightface.app.FaceAnalysis``.
    ``providers``: onnxruntime providers; by default CUDA when available, else CPU;
    ``force_cpu`` forces CPU (ZeroGPU runs InsightFace on the CPU). ``det_sizes``: the
    square detection sizes tried in order until a face is found. ``cache_size``: how many
    photos' results are kept (LRU, keyed by pixel content). ``allow_download``: let
    InsightFace download a missing pack when online.
    """

    def __init__(
        self,
        pack: str | os.PathLike = "buffalo_l",
        root: str | os.PathLike = "~/.insightface",
        providers: Sequence[str] | None = None,
        force_cpu: bool = False,
        det_sizes: Sequence[int] = DEFAULT_DET_SIZES,
        cache_size: int = 64,
        det_thresh: float = 0.5,
        allow_download: bool = True,
    ) -> None:
        sizes = tuple(int(s) for s in det_sizes)
        if not sizes or any(s <= 0 or s % 32 for s in sizes):
            raise ValueError(f"det_sizes must be positive multiples of 32, got {det_sizes!r}")
        self.pack = str(pack)
        self.root = str(Path(root).expanduser())
        self.det_sizes = sizes
        self.det_thresh = float(det_thresh)
        self.cache_size = max(0, int(cache_size))
        self.providers = list(providers) if providers is not None else default_providers(force_cpu)
        if force_cpu:
            self.providers = ["CPUExecutionProvider"]
        self.cache_hits = 0
        self.cache_misses = 0
        self._cache: OrderedDict[str, _Analysis] = OrderedDict()
        self._lock = threading.Lock()

        name, on_disk = resolve_pack(pack, self.root, allow_download=allow_download)
        if not on_disk:
            logger.info(
                "face pack %s is not in %s/models: InsightFace will download it", name, self.root
            )
        from insightface.app import FaceAnalysis

        from .library_notices import quiet_library_notices

        quiet_library_notices()
        started = time.perf_counter()
        try:
            self.app = FaceAnalysis(
                name=name,
                root=self.root,
                allowed_modules=["detection", "recognition"],
                providers=self.providers,
            )
        except AssertionError as exc:  # FaceAnalysis asserts that a detector was found
            raise PhotoMakerInputError(
                f"The face pack {self.pack!r} has no face detector InsightFace recognises "
                "(an SCRFD .onnx with 9 outputs, e.g. det_10g.onnx)."
            ) from exc
        if "recognition" not in self.app.models:
            raise PhotoMakerInputError(
                f"The face pack {self.pack!r} has no recognition model (ArcFace .onnx, "
                "112×112 input, e.g. w600k_r50.onnx); PhotoMaker V2 needs its embeddings."
            )
        ctx_id = 0 if self.providers[0] == "CUDAExecutionProvider" else -1
        self.app.prepare(ctx_id=ctx_id, det_thresh=self.det_thresh, det_size=(sizes[0], sizes[0]))
        self.det_model = self.app.det_model
        self.rec_model = self.app.models["recognition"]
        logger.info(
            "face pack %s loaded from %s on %s in %.2fs",
            self.pack,
            self.app.model_dir,
            self.providers[0],
            time.perf_counter() - started,
        )

    # ------------------------------------------------------------------ analysis

    def detect(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        """Run the detector at each of ``det_sizes`` until a face is found.

        Returns ``(bboxes [n, 5], kpss [n, 5, 2] or None, size that found them)``;
        ``n == 0`` and size ``None`` when no size finds a face.
        """
        for size in self.det_sizes:
            bboxes, kpss = self.det_model.detect(bgr, input_size=(size, size))
            logger.debug("detection at %d: %d face(s)", size, len(bboxes))
            if len(bboxes):
                return bboxes, kpss, size
        return np.empty((0, 5), dtype=np.float32), None, None

    def _analyse(self, image: Image.Image) -> _Analysis:
        from insightface.app.common import Face

        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        bboxes, kpss, size = self.detect(bgr)
        if len(bboxes) == 0:
            return _Analysis(0, None, None, None, None)
        main = _main_face(bboxes)
        face = Face(
            bbox=bboxes[main, :4],
            kps=None if kpss is None else kpss[main],
            det_score=bboxes[main, 4],
        )
        embedding = None
        if face.kps is not None:
            self.rec_model.get(bgr, face)
            embedding = np.asarray(face.embedding, dtype=np.float32).reshape(-1).copy()
            embedding.setflags(write=False)
        bbox = tuple(float(v) for v in bboxes[main, :4])
        return _Analysis(len(bboxes), bbox, float(bboxes[main, 4]), embedding, size)

    def _cached(self, image: Image.Image) -> _Analysis:
        key = image_digest(image)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return hit
            self.cache_misses += 1
        result = self._analyse(image)
        if self.cache_size:
            with self._lock:
                self._cache[key] = result
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result

    def analyze(self, images: Sequence[Image.Image], *, cache: bool = True) -> list[FaceReport]:
        """One :class:`FaceReport` per photo, in order (PIL RGB images in).

        ``cache=False`` for images seen once, such as generated ones, so that they do not push
        the ID photos (analysed at upload and again at generation) out of the cache."""
        if isinstance(images, Image.Image):
            images = [images]
        reports = []
        for index, image in enumerate(images):
            found = self._cached(image) if cache else self._analyse(image)
            reports.append(self._report(index, image, found))
        return reports

    def _report(self, index: int, image: Image.Image, a: _Analysis) -> FaceReport:
        number = index + 1
        if a.num_faces == 0:
            tried = ", ".join(str(s) for s in self.det_sizes)
            message = (
                f"photo {number}: no face found — use a photo where the face is large and "
                f"frontal (tried detection sizes {tried})"
            )
            return FaceReport(index, False, 0, None, None, None, None, message)
        if a.num_faces == 1:
            message = f"photo {number}: 1 face"
        else:
            message = f"photo {number}: {a.num_faces} faces, using the largest"
        if a.embedding is None:
            message += " (no landmarks, so no face embedding)"
        return FaceReport(
            index=index,
            found=True,
            num_faces=a.num_faces,
            bbox=a.bbox,
            score=a.score,
            embedding=None if a.embedding is None else a.embedding.copy(),
            crop=_thumbnail(image, a.bbox),
            message=message,
            det_size=a.det_size,
        )

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def __repr__(self) -> str:
        return (
            f"FaceAnalyzer(pack={self.pack!r}, providers={self.providers}, "
            f"det_sizes={self.det_sizes}, cached={len(self._cache)})"
        )


def keep_photos_with_faces(
    images: Sequence[Image.Image],
    reports: Sequence[FaceReport],
    crop_to_face: bool = False,
    margin: float = 0.5,
) -> KeptPhotos:
    """Keep only the photos with a face (and an embedding), embeddings in the same order.

    ``crop_to_face`` crops each kept photo around its face (see :func:`crop_around_face`)
    for the CLIP encoder; off reproduces the reference. Raises
    :class:`PhotoMakerInputError` when no photo has a face.
    """
    if len(images) != len(reports):
        raise ValueError(f"{len(images)} photos but {len(reports)} face reports")
    kept_images, embeddings, indices, messages = [], [], [], []
    for image, report in zip(images, reports, strict=True):
        if report.found and report.embedding is not None:
            kept_images.append(
                crop_around_face(image, report.bbox, margin) if crop_to_face else image
            )
            embeddings.append(np.asarray(report.embedding, dtype=np.float32).reshape(-1))
            indices.append(report.index)
        else:
            messages.append(f"{report.message}; this photo is skipped")
    if not kept_images:
        count = "the photo" if len(images) == 1 else f"any of the {len(images)} photos"
        raise PhotoMakerInputError(
            f"No face found in {count}. PhotoMaker needs at least one photo where the face "
            "is clearly visible: large, frontal, well lit, not covered. "
            + " ".join(r.message + "." for r in reports)
        )
    for message in messages:
        logger.info("%s", message)
    return KeptPhotos(
        images=kept_images,
        embeddings=np.stack(embeddings).astype(np.float32, copy=False),
        indices=indices,
        messages=messages,
    )


def likeness(
    analyzer: FaceAnalyzer,
    images: Sequence[Image.Image],
    id_embeddings: np.ndarray | Sequence[np.ndarray],
) -> list[float | None]:
    """How much each image looks like the person: the cosine similarity between the ArcFace
    embedding of its main face and the mean ArcFace embedding of the ID photos.

    This is the ID-similarity metric of the PhotoMaker paper (its Table 1 reports 0.454 for
    PhotoMaker): about 1 for the same photo, around 0.4–0.7 for a good likeness, near 0 for a
    stranger. The ID embeddings (``[N, 512]``, raw, as :class:`FaceReport` holds them) are
    each scaled to unit length before averaging, so every photo counts the same whatever its
    embedding's norm. The main face is the analyzer's: the largest box, weighted by its
    detection score. ``None`` for an image in which no face (with landmarks) is found.

    Runs the face analyzer on the CPU or wherever it was built; generated images bypass its
    cache. Meant for after the GPU part: it needs only the images and the embeddings.
    """
    references = np.asarray(id_embeddings, dtype=np.float32).reshape(-1, EMBEDDING_DIM)
    if len(references) == 0:
        raise ValueError("likeness needs the ArcFace embedding of at least one ID photo")
    norms = np.linalg.norm(references, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise ValueError("an ID photo's face embedding is all zeros")
    target = (references / norms).mean(axis=0)
    target /= np.linalg.norm(target)
    scores: list[float | None] = []
    for report in analyzer.analyze(list(images), cache=False):
        if not report.found or report.embedding is None:
            scores.append(None)
            continue
        embedding = np.asarray(report.embedding, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(embedding))
        scores.append(float(embedding @ target) / norm if norm > 0 else None)
    return scores


def likeness_caption(score: float | None, available: bool = True) -> str:
    """The words for a caption or PNG metadata: ``likeness 0.62``, ``no face found``, or
    ``likeness n/a`` where no face pack is loaded (``available=False``)."""
    if not available:
        return "likeness n/a"
    return "no face found" if score is None else f"likeness {score:.2f}"
