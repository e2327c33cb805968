"""One generation, from what a person typed and uploaded to images.

:class:`PhotoMakerService` is the one entry point the UI, the CLI and the tests call:
``service.generate(GenerationRequest(...)) -> GenerationResult``. Everything a request can
get wrong is checked here, in this order, before any GPU work, and raised as
:class:`~photomaker.errors.PhotoMakerInputError` with a message the user can act on:

1. numbers in range, a known style and aspect ratio;
2. the photos load (images, not too many);
3. the doodle or control image, when one is given: the server has what reads it (a
   T2I-Adapter or a ControlNet), and it loads;
4. the trigger word and the token budget of the *styled* prompt;
5. faces (V2, or when cropping): every photo needs one, unless the service was told to skip
   photos without a face, in which case it drops them and says which.

Generation itself is split in two so the app can put only the second half on the GPU
(``spaces.GPU`` on ZeroGPU): :meth:`PhotoMakerService.prepare` does all of the above on the
CPU, CLIP preprocessing of the photos included, and returns a small picklable
:class:`GenerationJob` (tensors, no photos; nothing of the photos at all when their encoding
is cached); :meth:`PhotoMakerService.run_job` encodes the ID photos (or reuses the cached
encoding) and denoises.

The GPU part is entered by one job at a time (:data:`GPU_LOCK`), whatever the caller's
concurrency, and can be cancelled between steps (``cancel=threading.Event()``). What fails in
it reaches the user as :class:`~photomaker.errors.PhotoMakerServerError` — out of memory with
what to change, anything else with an error id that is in the log beside the traceback —
never as a traceback, and the server serves the next request.

After the GPU part, back on the CPU, each image gets its ID likeness
(:func:`~photomaker.faces.likeness`: the cosine similarity of ArcFace embeddings, the paper's
ID-similarity metric) when the service has a face analyzer for it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import (
    GenerationCancelled,
    PhotoMakerError,
    PhotoMakerInputError,
    PhotoMakerServerError,
)
from .images import DEFAULT_MAX_MEGAPIXELS, image_digest, to_rgb
from .styles import DEFAULT_STYLE, StyleBook, default_styles

logger = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1
MAX_MERGE_STEP = 30
CROP_MARGIN = 0.5
#: Longest prompt and negative prompt accepted, in characters. Only 77 tokens (about 300
#: characters) reach the model; the cap keeps a megabyte of text from being tokenized.
MAX_PROMPT_CHARS = 2000
MAX_NEGATIVE_PROMPT_CHARS = 2000
#: How much of a prompt goes into the log.
LOG_PROMPT_CHARS = 120

#: Held while a job runs on the GPU: one pipeline, one job at a time, in this process.
GPU_LOCK = threading.Lock()

#: Aspect-ratio presets: name -> (width, height), SDXL's trained resolutions.
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1 square (1024×1024)": (1024, 1024),
    "3:4 portrait (896×1152)": (896, 1152),
    "2:3 portrait (832×1216)": (832, 1216),
    "9:16 tall (768×1344)": (768, 1344),
    "4:3 landscape (1152×896)": (1152, 896),
    "3:2 landscape (1216×832)": (1216, 832),
    "16:9 wide (1344×768)": (1344, 768),
}
DEFAULT_ASPECT_RATIO = "3:4 portrait (896×1152)"

DEFAULT_NEGATIVE_PROMPT = (
    "lowres, blurry, out of focus, bad anatomy, deformed hands, extra fingers, "
    "distorted face, watermark, text, signature, jpeg artifacts, worst quality"
)

#: (name, lowest, highest) of the numbers a request carries.
LIMITS = {
    "steps": (1, 100),
    "style_strength": (0, 100),
    "num_outputs": (1, 4),
    "guidance_scale": (0.0, 20.0),
    "seed": (0, MAX_SEED),
    "adapter_conditioning_scale": (0.0, 1.0),
    "adapter_conditioning_factor": (0.0, 1.0),
    "controlnet_conditioning_scale": (0.0, 2.0),
}


def tiny_size(width: int, height: int, long_side: int = 64) -> tuple[int, int]:
    """A preset scaled down for the tiny models: long side 64, both multiples of 16."""
    scale = long_side / max(width, height)

    def snap(v: float) -> int:
        return max(32, int(round(v * scale / 16)) * 16)

    return snap(width), snap(height)


def merge_step(style_strength: float, steps: int) -> int:
    """The demo's mapping from the style strength (%) to ``start_merge_step``."""
    return min(int(style_strength / 100 * steps), MAX_MERGE_STEP)


@dataclass
class GenerationRequest:
    """What a person asks for. Field names are the API's parameter names."""

    photos: Sequence[Any]
    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    style: str = DEFAULT_STYLE
    aspect_ratio: str = DEFAULT_ASPECT_RATIO
    steps: int = 50
    style_strength: float = 20.0
    num_outputs: int = 2
    guidance_scale: float = 5.0
    seed: int = 0
    randomize_seed: bool = True
    #: A rough drawing that sets the layout (needs the doodle's T2I-Adapter): a path, PIL
    #: image, numpy array or a Gradio Sketchpad value (a dict with its "composite").
    doodle: Any = None
    #: How strongly the doodle steers (the adapter's residuals are multiplied by it).
    adapter_conditioning_scale: float = 0.7
    #: The share of the steps, from the first, that the doodle steers.
    adapter_conditioning_factor: float = 0.8
    #: A control image for the server's ControlNet (``--controlnet``): pose, edges, depth...
    control_image: Any = None
    controlnet_conditioning_scale: float = 1.0


@dataclass
class PhotoAnalysis:
    """The uploaded photos and, when faces are analysed, one report per photo."""

    images: list[Image.Image]
    reports: list[Any] | None
    messages: list[str] = field(default_factory=list)

    @property
    def captions(self) -> list[str]:
        if self.reports is None:
            return [f"photo {i + 1}" for i in range(len(self.images))]
        out = []
        for i, report in enumerate(self.reports):
            if report.found and report.embedding is not None:
                extra = (
                    f", {report.num_faces} faces, using the largest" if report.num_faces > 1 else ""
                )
                out.append(f"photo {i + 1}: face found ✓{extra}")
            else:
                out.append(f"photo {i + 1}: no face found ✗")
        return out

    @property
    def num_with_face(self) -> int:
        if self.reports is None:
            return len(self.images)
        return sum(1 for r in self.reports if r.found and r.embedding is not None)


@dataclass
class GenerationJob:
    """Everything the GPU part needs; plain data, so it can cross to a ZeroGPU worker.

    The photos travel as the ID encoder's input, ``id_pixel_values`` (CLIP-preprocessed on
    the CPU, ``[N, 3, 224, 224]`` float32: 0.6 MB a photo), with their ArcFace ``id_embeds``
    (V2). On an ID-cache hit both are ``None`` and ``id_image_embeds`` carries the encoding.
    A trigger word in ``negative_prompt`` is read as the ordinary word by the pipeline
    (:meth:`~photomaker.pipeline.PhotoMakerStableDiffusionXLPipeline.ordinary_text`).
    ``doodle`` (the adapter's white-on-black input) and ``control_image`` are small PIL
    images at the output size, or ``None``.
    """

    prompt: str
    negative_prompt: str
    id_pixel_values: torch.Tensor | None
    id_embeds: np.ndarray | None
    id_image_embeds: torch.Tensor | None
    cache_key: str
    start_merge_step: int
    steps: int
    guidance_scale: float
    num_outputs: int
    width: int
    height: int
    seed: int
    doodle: Image.Image | None = None
    adapter_conditioning_scale: float = 0.7
    adapter_conditioning_factor: float = 0.8
    control_image: Image.Image | None = None
    controlnet_conditioning_scale: float = 1.0

    def structure_kwargs(self) -> dict[str, Any]:
        """The pipeline arguments of the doodle or the control image; none without them, so
        such a job calls the pipeline exactly as before."""
        if self.doodle is not None:
            return {
                "image": self.doodle,
                "adapter_conditioning_scale": self.adapter_conditioning_scale,
                "adapter_conditioning_factor": self.adapter_conditioning_factor,
            }
        if self.control_image is not None:
            return {
                "image": self.control_image,
                "controlnet_conditioning_scale": self.controlnet_conditioning_scale,
            }
        return {}


@dataclass
class JobOutput:
    images: list[Image.Image]
    id_image_embeds: torch.Tensor | None
    timings: dict[str, float]


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seed: int
    prompt: str
    negative_prompt: str
    style: str
    width: int
    height: int
    start_merge_step: int
    face_reports: list[Any] | None
    messages: list[str]
    timings: dict[str, float]
    # How the images were made, for their PNG metadata (see the request for the user's words).
    steps: int = 0
    style_strength: float = 0.0
    guidance_scale: float = 0.0
    user_prompt: str = ""
    user_negative_prompt: str = ""
    # Structure control, when used (else False / None).
    doodle: bool = False
    adapter_conditioning_scale: float | None = None
    adapter_conditioning_factor: float | None = None
    control_image: bool = False
    controlnet_conditioning_scale: float | None = None
    #: Each image's ID likeness (None: no face found in it); None for all when it could not
    #: be scored (no face analyzer, or no face in the ID photos): "likeness n/a".
    likeness: list[float | None] | None = None

    def likeness_text(self, index: int) -> str:
        """``likeness 0.62``, ``no face found`` or ``likeness n/a`` for image ``index``."""
        from .faces import likeness_caption

        if self.likeness is None or index >= len(self.likeness):
            return likeness_caption(None, available=False)
        return likeness_caption(self.likeness[index])

    @property
    def captions(self) -> list[str]:
        n = len(self.images)
        return [
            f"seed {self.seed} · {self.style}"
            + (f" · {i + 1}/{n}" if n > 1 else "")
            + f" · {self.likeness_text(i)}"
            for i in range(n)
        ]


def _no_face_message(missing: list[Any], total: int, pm_version: str) -> str:
    why = (
        "PhotoMaker V2 needs the face of each photo"
        if pm_version == "v2"
        else "Cropping around faces needs a face in each photo"
    )
    if len(missing) == total:
        which = "any of the photos" if total > 1 else "the photo"
        return (
            f"No face found in {which}. {why}: use photos where the face is large, frontal "
            "and well lit."
        )
    numbers = ", ".join(str(r.index + 1) for r in missing)
    plural = "s" if len(missing) > 1 else ""
    return (
        f"No face found in photo{plural} {numbers} (of {total}). {why}: remove "
        f"{'them' if plural else 'it'} or use a photo where the face is large and frontal."
    )


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: messages and logs never echo a megabyte."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def log_head(text: str, limit: int = LOG_PROMPT_CHARS) -> str:
    """The head of a prompt for the log, saying how much was left out."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… (+{len(text) - limit} characters)"


def _check_text(label: str, value: Any, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PhotoMakerInputError(f"The {label} must be text, not {type(value).__name__}.")
    if len(value) > limit:
        raise PhotoMakerInputError(
            f"The {label} is {len(value):,} characters long; the limit is {limit:,}. Shorten it: "
            "only its first 77 tokens (about 300 characters) reach the model anyway."
        )
    return value


def merge_warning(start_merge_step: int, steps: int, style_strength: float) -> str | None:
    """A warning when the identity is never merged in: steps ``0..start_merge_step`` see the
    text only, so a merge step at the last step leaves no step for the ID embedding."""
    if start_merge_step < steps - 1:
        return None
    return (
        f"With style strength {style_strength:g}% and {steps} step(s) the person's identity is "
        f"never merged in (merge step {start_merge_step} is the last step), so the pictures "
        "will not look like them: lower the style strength or use more steps."
    )


def _number(name: str, value: Any, integer: bool) -> float | int:
    low, high = LIMITS[name]
    label = name.replace("_", " ")
    if isinstance(value, bool) or value is None:
        raise PhotoMakerInputError(f"{label} must be a number between {low} and {high}.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise PhotoMakerInputError(
            f"{label} must be a number between {low} and {high} (got {short_repr(value)})."
        ) from None
    if not math.isfinite(number) or not low <= number <= high:
        raise PhotoMakerInputError(
            f"{label} must be between {low} and {high} (got {short_repr(value)})."
        )
    if integer:
        if number != int(number):
            raise PhotoMakerInputError(f"{label} must be a whole number (got {short_repr(value)}).")
        return int(number)
    return number


def check_request(
    request: GenerationRequest,
    styles: StyleBook | None = None,
    *,
    tiny: bool = False,
    trigger_word: str = "img",
) -> dict[str, Any]:
    """The checks that need no model: numbers in range, a known style and aspect ratio, a
    prompt of at most :data:`MAX_PROMPT_CHARS` (negative: :data:`MAX_NEGATIVE_PROMPT_CHARS`).
    Returns the normalized values, the seed to use, the size and the styled prompts."""
    styles = styles or default_styles()
    values = {
        "steps": _number("steps", request.steps, integer=True),
        "style_strength": _number("style_strength", request.style_strength, integer=False),
        "num_outputs": _number("num_outputs", request.num_outputs, integer=True),
        "guidance_scale": _number("guidance_scale", request.guidance_scale, integer=False),
    }
    if request.randomize_seed:
        values["seed"] = secrets.randbelow(MAX_SEED + 1)
    else:
        values["seed"] = _number("seed", request.seed, integer=True)
    for name in (
        "adapter_conditioning_scale",
        "adapter_conditioning_factor",
        "controlnet_conditioning_scale",
    ):
        values[name] = _number(name, getattr(request, name), integer=False)
    user_prompt = _check_text("prompt", request.prompt, MAX_PROMPT_CHARS)
    if not user_prompt.strip():
        raise PhotoMakerInputError(
            "The prompt is empty: describe the picture and put the trigger word right after "
            f"the class word, e.g. 'a photo of a woman {trigger_word} in a garden'."
        )
    negative = _check_text("negative prompt", request.negative_prompt, MAX_NEGATIVE_PROMPT_CHARS)
    style = request.style or None
    if style is not None and (not isinstance(style, str) or len(style) > 200):
        raise PhotoMakerInputError(
            f"Unknown style {short_repr(style)}. Choose one of: {', '.join(styles.names)}."
        )
    if style is not None and style not in styles:
        styles[style]  # raises the message listing the styles
    values["style"] = style or "(No style)"
    values["width"], values["height"] = size_for(request.aspect_ratio, tiny=tiny)
    prompt, negative = styles.apply(style, user_prompt, negative)
    values["prompt"], values["negative_prompt"] = prompt, negative
    return values


def size_for(aspect_ratio: str, tiny: bool = False) -> tuple[int, int]:
    """(width, height) of a preset; scaled down for the tiny models."""
    if not isinstance(aspect_ratio, str) or aspect_ratio not in ASPECT_RATIOS:
        raise PhotoMakerInputError(
            f"Unknown aspect ratio {short_repr(aspect_ratio)}. Choose one of: "
            f"{', '.join(ASPECT_RATIOS)}."
        )
    width, height = ASPECT_RATIOS[aspect_ratio]
    return tiny_size(width, height) if tiny else (width, height)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a RuntimeError saying so (older torch, MPS, cuDNN)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def free_memory() -> None:
    """Give back what a failed job held: Python garbage, then the CUDA cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def gpu_turn(cancel: threading.Event | None = None, poll_s: float = 0.05) -> Iterator[None]:
    """Hold :data:`GPU_LOCK` for one job. A job cancelled while it waits leaves the queue at
    once, without ever entering the pipeline."""
    if cancel is None:
        GPU_LOCK.acquire()
    else:
        while not GPU_LOCK.acquire(timeout=poll_s):
            if cancel.is_set():
                raise GenerationCancelled("The generation was cancelled before it started.")
    try:
        yield
    finally:
        GPU_LOCK.release()


def _raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled("The generation was cancelled.")


def _interrupt_when_set(cancel: threading.Event) -> Callable[..., dict]:
    """A ``callback_on_step_end`` that stops the denoising loop once ``cancel`` is set, by
    diffusers' own interrupt flag (the loop skips the remaining steps)."""

    def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        if cancel.is_set():
            pipe._interrupt = True
        return callback_kwargs

    return on_step_end


class PhotoMakerService:
    """The pipeline, the face analyzer, the styles and a cache of ID encodings.

    ``likeness_analyzer`` scores each result's ID likeness (usually ``analyzer`` itself; for
    V1 a face analyzer of its own, see :func:`~photomaker.loading.build_likeness_analyzer`);
    ``None`` gives "likeness n/a"."""

    def __init__(
        self,
        pipe: Any,
        analyzer: Any = None,
        styles: StyleBook | None = None,
        *,
        crop_faces: bool = False,
        skip_faceless_photos: bool = False,
        max_photos: int = 10,
        max_photo_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        tiny: bool = False,
        id_cache_size: int = 8,
        likeness_analyzer: Any = None,
    ) -> None:
        self.pipe = pipe
        self.analyzer = analyzer
        self.likeness_analyzer = likeness_analyzer
        self.styles = styles or default_styles()
        self.crop_faces = crop_faces
        self.skip_faceless_photos = skip_faceless_photos
        self.max_photos = max_photos
        self.max_photo_megapixels = max_photo_megapixels
        self.tiny = tiny
        self.id_cache_size = id_cache_size
        self._id_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()  # prepare() and generate() run in many threads
        self.cache_hits = 0
        if self.needs_faces and analyzer is None:
            raise ValueError(
                "PhotoMaker V2 and face cropping need a face analyzer; pass analyzer=FaceAnalyzer(...)"
            )

    # -- facts the UI shows ------------------------------------------------------------

    @property
    def pm_version(self) -> str:
        return getattr(self.pipe, "pm_version", "v2")

    @property
    def trigger_word(self) -> str:
        return getattr(self.pipe, "trigger_word", "img")

    @property
    def needs_faces(self) -> bool:
        return self.pm_version == "v2" or self.crop_faces

    @property
    def doodle_available(self) -> bool:
        """True when the pipeline has a T2I-Adapter to read a doodle with."""
        from .pipeline_adapter import PhotoMakerStableDiffusionXLAdapterPipeline

        return (
            isinstance(self.pipe, PhotoMakerStableDiffusionXLAdapterPipeline)
            and getattr(self.pipe, "adapter", None) is not None
        )

    @property
    def controlnet_available(self) -> bool:
        """True when the pipeline has a ControlNet to read a control image with."""
        from .pipeline_controlnet import PhotoMakerStableDiffusionXLControlNetPipeline

        return (
            isinstance(self.pipe, PhotoMakerStableDiffusionXLControlNetPipeline)
            and getattr(self.pipe, "controlnet", None) is not None
        )

    @property
    def style_names(self) -> list[str]:
        return self.styles.names

    @property
    def aspect_ratios(self) -> list[str]:
        return list(ASPECT_RATIOS)

    def size_for(self, aspect_ratio: str) -> tuple[int, int]:
        """(width, height) of a preset; scaled down in tiny mode."""
        return size_for(aspect_ratio, tiny=self.tiny)

    # -- photos -------------------------------------------------------------------------

    def load_photos(self, photos: Sequence[Any] | None) -> list[Image.Image]:
        from .images import load_id_images

        if not photos:
            raise PhotoMakerInputError(
                "No photos: upload one or more photos of the person (up to "
                f"{self.max_photos}; more photos from different angles give a better likeness)."
            )
        return load_id_images(
            list(photos), max_photos=self.max_photos, max_megapixels=self.max_photo_megapixels
        )

    def analyze_photos(self, photos: Sequence[Any] | None) -> PhotoAnalysis:
        """Load the photos and, where faces matter (V2, cropping), report on each one.

        This is what the app shows as soon as photos are uploaded, before any GPU work."""
        images = self.load_photos(photos)
        if self.analyzer is None:
            return PhotoAnalysis(images, None, [])
        reports = self.analyzer.analyze(images)
        messages = [r.message for r in reports if r.message]
        return PhotoAnalysis(images, list(reports), messages)

    def load_drawing(self, source: Any, what: str) -> Image.Image | None:
        """A doodle or control image as PIL (transparency kept), or ``None`` for none.

        ``source``: a path, bytes, PIL image, numpy array, or a Gradio ImageEditor / Sketchpad
        value (a dict whose "composite" is the drawing). Bounded like the photos: the pixel
        limit is checked from the file header, and the longer side kept at 2048."""
        from .images import load_image

        if isinstance(source, dict):
            if not {"composite", "background", "layers"} & set(source):
                raise PhotoMakerInputError(
                    f"The {what.lower()} must be an image (or a Sketchpad value with its "
                    f"'composite'), not a dict with {', '.join(map(str, source))}."
                )
            source = source.get("composite")
        if source is None:
            return None
        try:
            return load_image(
                source, max_side=2048, max_megapixels=self.max_photo_megapixels, keep_alpha=True
            )
        except PhotoMakerInputError as exc:
            raise PhotoMakerInputError(f"{what}: {exc}") from exc

    def prepare_structure(
        self, request: GenerationRequest, width: int, height: int
    ) -> tuple[Image.Image | None, Image.Image | None, list[str]]:
        """(doodle, control image, messages): each at the output size, or ``None``.

        A doodle needs the doodle's T2I-Adapter and a control image a ControlNet; asking for
        one the server lacks is a :class:`PhotoMakerInputError`. A blank doodle is no doodle
        (with a message)."""
        from .pipeline_adapter import doodle_image

        messages: list[str] = []
        doodle = control = None
        if request.doodle is not None:
            if not self.doodle_available:
                raise PhotoMakerInputError(
                    "The doodle is off on this server (--doodle-adapter none, an adapter that "
                    "could not be loaded, or a ControlNet in its place): send the request "
                    "without a doodle."
                )
            drawing = self.load_drawing(request.doodle, "Doodle")
            doodle = None if drawing is None else doodle_image(drawing, width, height)
            if drawing is not None and doodle is None:
                messages.append("The doodle is blank, so the pictures were made without it.")
        if request.control_image is not None:
            if not self.controlnet_available:
                raise PhotoMakerInputError(
                    "A control image needs a ControlNet, and this server has none: start it "
                    "with --controlnet (a hub id or folder), or send no control image."
                )
            drawing = self.load_drawing(request.control_image, "Control image")
            if drawing is not None:
                control = to_rgb(drawing).resize((width, height), Image.Resampling.BICUBIC)
        return doodle, control, messages

    # -- validation and preparation -----------------------------------------------------

    def check_request(self, request: GenerationRequest) -> dict[str, Any]:
        """Numbers, style and aspect ratio: cheap checks, no photos loaded yet."""
        return check_request(request, self.styles, tiny=self.tiny, trigger_word=self.trigger_word)

    def check_prompt(self, prompt: str, num_photos: int) -> list[str]:
        """The pipeline's tokenizer-only check; returns warnings (e.g. a cut-off prompt end)."""
        check = self.pipe.check_prompt(prompt, num_photos)
        warning = getattr(check, "warning", None)
        return [warning] if warning else []

    def preprocess_photos(self, images: list[Image.Image]) -> torch.Tensor:
        """The ID encoder's input, made on the CPU: ``[N, 3, 224, 224]`` float32 pixels."""
        return self.pipe.preprocess_id_images(images)

    def prepare(self, request: GenerationRequest) -> tuple[GenerationJob, dict[str, Any]]:
        """Validate everything and build the job; raises PhotoMakerInputError."""
        t0 = time.perf_counter()
        values = self.check_request(request)
        images = self.load_photos(request.photos)
        doodle, control_image, notes = self.prepare_structure(
            request, values["width"], values["height"]
        )
        # The trigger word is checked before faces so a prompt mistake is reported first.
        messages = self.check_prompt(values["prompt"], len(images)) + notes
        t_load = time.perf_counter()

        reports = None
        id_embeds = None
        if self.needs_faces:
            reports = list(self.analyzer.analyze(images))
            missing = [r for r in reports if not (r.found and r.embedding is not None)]
            if missing and (len(missing) == len(reports) or not self.skip_faceless_photos):
                raise PhotoMakerInputError(_no_face_message(missing, len(reports), self.pm_version))
            from .faces import keep_photos_with_faces

            kept = keep_photos_with_faces(
                images, reports, crop_to_face=self.crop_faces, margin=CROP_MARGIN
            )
            messages += list(kept.messages)
            images = list(kept.images)
            if self.pm_version == "v2":
                id_embeds = np.asarray(kept.embeddings, dtype=np.float32)
            if missing:
                messages += self.check_prompt(values["prompt"], len(images))
        t_faces = time.perf_counter()

        start_merge_step = merge_step(values["style_strength"], values["steps"])
        warning = merge_warning(start_merge_step, values["steps"], values["style_strength"])
        messages += [warning] if warning else []
        cache_key = self._cache_key(images)
        with self._cache_lock:
            cached = self._id_cache.get(cache_key)
        job = GenerationJob(
            prompt=values["prompt"],
            negative_prompt=values["negative_prompt"],
            id_pixel_values=None if cached is not None else self.preprocess_photos(images),
            id_embeds=None if cached is not None else id_embeds,
            id_image_embeds=cached,
            cache_key=cache_key,
            start_merge_step=start_merge_step,
            steps=values["steps"],
            guidance_scale=values["guidance_scale"],
            num_outputs=values["num_outputs"],
            width=values["width"],
            height=values["height"],
            seed=values["seed"],
            doodle=doodle,
            adapter_conditioning_scale=values["adapter_conditioning_scale"],
            adapter_conditioning_factor=values["adapter_conditioning_factor"],
            control_image=control_image,
            controlnet_conditioning_scale=values["controlnet_conditioning_scale"],
        )
        context = {
            "style": values["style"],
            "style_strength": values["style_strength"],
            "negative_prompt": values["negative_prompt"],
            "reports": reports,
            "images": images,
            "photo_sizes": [image.size for image in images],
            "messages": list(dict.fromkeys(messages)),
            "timings": {
                "load": t_load - t0,
                "faces": t_faces - t_load,
                "preprocess": time.perf_counter() - t_faces,
            },
        }
        return job, context

    def _cache_key(self, images: list[Image.Image]) -> str:
        h = hashlib.sha1(f"{self.pm_version}|crop={self.crop_faces}|".encode())
        for image in images:
            h.update(image_digest(image).encode())
        return h.hexdigest()

    def _remember(self, job: GenerationJob, output: JobOutput) -> None:
        """Keep the job's ID encoding (least recently used out) and count a reuse."""
        with self._cache_lock:
            if job.id_image_embeds is not None:
                self.cache_hits += 1
            elif output.id_image_embeds is not None:
                self._id_cache[job.cache_key] = output.id_image_embeds
                while len(self._id_cache) > self.id_cache_size:
                    self._id_cache.popitem(last=False)
            if job.cache_key in self._id_cache:
                self._id_cache.move_to_end(job.cache_key)

    # -- the GPU part -------------------------------------------------------------------

    def generator_device(self) -> str:
        device = getattr(self.pipe, "_execution_device", None) or getattr(
            self.pipe, "device", "cpu"
        )
        device = torch.device(device)
        return "cpu" if device.type == "mps" else str(device)

    @contextlib.contextmanager
    def server_errors(self, stage: str) -> Iterator[None]:
        """Turn what fails in ``stage`` into a :class:`PhotoMakerServerError` for the user.

        :class:`PhotoMakerError` (input errors, cancellations) passes unchanged. Out of
        memory: a message that says what to change, and the memory is given back so the
        next request is served. Anything else: an honest message with an error id, logged
        with its traceback under the same id."""
        try:
            yield
        except PhotoMakerError:
            raise
        except Exception as exc:
            raise self._server_error(exc, stage) from exc

    def _server_error(self, exc: Exception, stage: str) -> PhotoMakerServerError:
        error_id = secrets.token_hex(4)
        if is_out_of_memory(exc):
            logger.warning("out of memory while %s [error %s]: %s", stage, error_id, exc)
            message = (
                f"The GPU ran out of memory while {stage} (error {error_id}). Try fewer images, "
                "a smaller size, or start the server with --memory model-offload."
            )
        else:
            logger.error("unexpected error while %s [error %s]", stage, error_id, exc_info=exc)
            message = (
                f"Something went wrong on the server while {stage} (error {error_id}). Please "
                "try again; if it happens again, report this error id."
            )
        self._release_memory()
        return PhotoMakerServerError(message, error_id)

    def _release_memory(self) -> None:
        """Offloaded models back to the CPU, then Python's and CUDA's caches."""
        with contextlib.suppress(Exception):  # best effort: the error is being reported anyway
            free_hooks = getattr(self.pipe, "maybe_free_model_hooks", None)
            if free_hooks is not None:
                free_hooks()
        free_memory()

    def run_job(self, job: GenerationJob, cancel: threading.Event | None = None) -> JobOutput:
        """Encode the ID photos (unless cached) and denoise. Same job -> same images.

        One job at a time (:data:`GPU_LOCK`). With ``cancel`` set (from any thread), a job
        still waiting leaves at once and a running one stops after its current step; both
        raise :class:`GenerationCancelled`. Failures are :class:`PhotoMakerServerError`."""
        with gpu_turn(cancel):
            _raise_if_cancelled(cancel)
            return self._run_locked(job, cancel)

    def _run_locked(self, job: GenerationJob, cancel: threading.Event | None) -> JobOutput:
        pipe = self.pipe
        t0 = time.perf_counter()
        id_image_embeds = job.id_image_embeds
        if id_image_embeds is None:
            if job.id_pixel_values is None:
                raise ValueError("a job needs id_pixel_values or id_image_embeds")
            id_embeds = torch.from_numpy(job.id_embeds) if job.id_embeds is not None else None
            with self.server_errors("encoding the ID photos"):
                id_image_embeds = pipe.encode_id_images(
                    list(job.id_pixel_values), id_embeds=id_embeds
                )
        _raise_if_cancelled(cancel)
        t1 = time.perf_counter()
        generator = torch.Generator(device=self.generator_device()).manual_seed(job.seed)
        with self.server_errors("generating the images"):
            output = pipe(
                prompt=job.prompt,
                negative_prompt=job.negative_prompt or None,
                id_image_embeds=id_image_embeds,
                start_merge_step=job.start_merge_step,
                num_inference_steps=job.steps,
                guidance_scale=job.guidance_scale,
                num_images_per_prompt=job.num_outputs,
                height=job.height,
                width=job.width,
                generator=generator,
                output_type="pil",
                callback_on_step_end=_interrupt_when_set(cancel) if cancel is not None else None,
                **job.structure_kwargs(),
            )
        _raise_if_cancelled(cancel)  # interrupted: the images are unfinished, none are shown
        t2 = time.perf_counter()
        embeds = id_image_embeds.detach().to("cpu") if torch.is_tensor(id_image_embeds) else None
        return JobOutput(list(output.images), embeds, {"encode": t1 - t0, "denoise": t2 - t1})

    def estimate_seconds(self, job: GenerationJob) -> int:
        """ZeroGPU's ``duration`` for this job, from its FLOPs: see
        :func:`photomaker.zerogpu.gpu_duration`."""
        from .zerogpu import gpu_duration

        return gpu_duration(job)

    # -- after the GPU part ---------------------------------------------------------------

    def score_likeness(
        self,
        images: Sequence[Image.Image],
        reports: Sequence[Any] | None,
        id_images: Sequence[Image.Image] = (),
    ) -> list[float | None] | None:
        """Each image's ID likeness against the ID photos' faces (:func:`faces.likeness`), on
        the CPU, after the GPU part. The reference embeddings are those of the face reports
        (V2, cropping); without reports (V1) the likeness analyzer reads the ID photos.

        ``None`` — "likeness n/a" — without a likeness analyzer, without a face in the ID
        photos, or when scoring fails (logged): an optional score never costs the images."""
        analyzer = self.likeness_analyzer
        if analyzer is None:
            return None
        from .faces import likeness

        try:
            if reports is None:
                reports = analyzer.analyze(list(id_images))
            references = [r.embedding for r in reports if r.found and r.embedding is not None]
            if not references:
                return None
            return likeness(analyzer, list(images), np.stack(references))
        except Exception:
            logger.warning("could not score the likeness (shown as n/a)", exc_info=True)
            return None

    # -- the whole thing ----------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        run_job: Callable[..., JobOutput] | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Validate, prepare, run, cache the ID encoding; the one call front ends make.

        ``run_job(job)`` — or ``run_job(job, cancel=cancel)`` when ``cancel`` is given —
        runs the GPU part; default :meth:`run_job`. A replacement (the app's ``spaces.GPU``
        function) must end in :meth:`run_job`, which holds :data:`GPU_LOCK`: so two jobs
        never share the pipeline, whatever the front end's concurrency.

        Cancelling: ``cancel`` is a :class:`threading.Event` the caller sets from any thread
        (a Stop button, a client that went away). A job waiting for the GPU then leaves the
        queue at once; a running one stops at the end of its current denoising step (diffusers'
        interrupt; the partial latents are still decoded once) and frees the GPU for the next
        job. Either way ``generate`` raises :class:`GenerationCancelled` and returns no
        images; no other job is touched. On ZeroGPU the job runs in spaces' worker process;
        the app's runner (:mod:`photomaker.zerogpu`) carries the cancel there by closing the
        GPU function's stream.

        After the GPU part, on the CPU and outside ``run_job`` (so outside ZeroGPU's
        allocation), each image's ID likeness is scored (:meth:`score_likeness`):
        ``result.likeness``, ``timings["likeness"]``, and the end of each caption.

        Raises :class:`PhotoMakerInputError` for what the user can fix (before any GPU work)
        and :class:`PhotoMakerServerError` for failures (out of memory, a bug: with an error id
        that is in the log beside the traceback); never anything else.
        """
        t0 = time.perf_counter()
        with self.server_errors("checking the request"):
            job, context = self.prepare(request)
        logger.debug(
            "job %s: prompt %s, negative %s",
            job.cache_key[:8],
            log_head(job.prompt),
            log_head(job.negative_prompt),
        )
        _raise_if_cancelled(cancel)
        runner = run_job or self.run_job
        with self.server_errors("generating the images"):
            output = runner(job) if cancel is None else runner(job, cancel=cancel)
        self._remember(job, output)
        t_likeness = time.perf_counter()
        scores = self.score_likeness(output.images, context["reports"], context["images"])
        timings = {
            **context["timings"],
            **output.timings,
            "likeness": time.perf_counter() - t_likeness,
            "total": time.perf_counter() - t0,
        }
        logger.info(
            "generated %d image(s) %dx%d, %d steps, seed %d, in %.1fs",
            len(output.images),
            job.width,
            job.height,
            job.steps,
            job.seed,
            timings["total"],
        )
        return GenerationResult(
            images=output.images,
            seed=job.seed,
            prompt=job.prompt,
            negative_prompt=context["negative_prompt"],
            style=context["style"],
            width=job.width,
            height=job.height,
            start_merge_step=job.start_merge_step,
            face_reports=context["reports"],
            messages=context["messages"],
            timings=timings,
            steps=job.steps,
            style_strength=context["style_strength"],
            guidance_scale=job.guidance_scale,
            user_prompt=request.prompt,
            user_negative_prompt=request.negative_prompt or "",
            doodle=job.doodle is not None,
            adapter_conditioning_scale=(
                job.adapter_conditioning_scale if job.doodle is not None else None
            ),
            adapter_conditioning_factor=(
                job.adapter_conditioning_factor if job.doodle is not None else None
            ),
            control_image=job.control_image is not None,
            controlnet_conditioning_scale=(
                job.controlnet_conditioning_scale if job.control_image is not None else None
            ),
            likeness=scores,
        )
