"""PhotoMaker web app (Gradio Blocks): the layout and the events.

The work lives in :mod:`photomaker.service` (one generation), :mod:`photomaker.metadata` (PNGs
that remember their settings) and the event handlers of :class:`AppHandlers`; this file lays
out components and wires them.

``create_app(settings) -> gr.Blocks`` builds the app without touching anything else: tests and
embedding apps call it. ``python app.py [flags]`` (what ``gradio app.py`` runs too) builds it
from flags and ``PHOTOMAKER_*`` variables and launches it. ``import app; app.demo`` builds it
from the environment on first access; importing the module alone loads nothing, except on a
Hugging Face Space (``SPACE_ID`` set), which may import this file and launch the ``demo`` it
finds: there ``demo`` is built at import.

One public API endpoint, ``/generate``; every other event is private.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import re
import sys
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import spaces  # noqa: F401 (first, before torch: on ZeroGPU it patches torch at import)

from photomaker import metadata, zerogpu
from photomaker.errors import (
    GenerationCancelled,
    PhotoMakerError,
    PhotoMakerInputError,
    PhotoMakerServerError,
)
from photomaker.service import (
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_NEGATIVE_PROMPT,
    LIMITS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    GenerationRequest,
    PhotoMakerService,
    short_repr,
)
from photomaker.settings import Settings, build_parser, on_zerogpu
from photomaker.styles import DEFAULT_STYLE

logger = logging.getLogger("photomaker.app")

ASSETS = Path(__file__).resolve().parent / "assets"

INPUT_TITLE = "Please check your input"
SERVER_TITLE = "Something went wrong on the server"
#: What the photo uploads accept: any image the browser offers, plus iPhone (HEIC/HEIF) and
#: AVIF files by extension, which some systems do not file under image/*.
IMAGE_FILE_TYPES = ["image", ".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif"]
#: The sliders' range in the UI, as in the reference demo; the API takes the full LIMITS.
UI_LIMITS = {
    "steps": (20, 100),
    "style_strength": (15, 50),
    "adapter_conditioning_scale": (0.5, 1.0),
    "adapter_conditioning_factor": (0.5, 1.0),
}
#: The doodle's two numbers when a request does not give them.
DOODLE_SCALE = GenerationRequest.adapter_conditioning_scale
DOODLE_FACTOR = GenerationRequest.adapter_conditioning_factor
#: Uploaded face photos and results are deleted after an hour (checked every 30 minutes).
DELETE_CACHE = (1800, 3600)
#: Example photo for the API page: the NASA portrait our assets/ photos come from.
EXAMPLE_PHOTO_URL = (
    "https://raw.githubusercontent.com/scikit-image/scikit-image/main/skimage/data/astronaut.png"
)


# --------------------------------------------------------------------------- input checks


@dataclass(frozen=True)
class Param:
    """One parameter of ``/generate``: how a value sent through the API is checked."""

    name: str
    label: str
    kind: str  # "number", "integer", "bool", "choice", "text"
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False  # None is passed on (the service says what it needs)

    def fail(self, problem: str) -> PhotoMakerInputError:
        return PhotoMakerInputError(f"{self.label} ({self.name}): {problem}")


def check_value(param: Param, value: Any) -> Any:
    """The value if it is one ``param`` takes, else :class:`PhotoMakerInputError` naming it.

    Integers are never rounded: 2.5 steps or a 1.5 seed is refused, as the service does."""
    if value is None:
        if param.optional:
            return None
        raise param.fail("a value is required (got null).")
    if param.kind in ("number", "integer"):
        what = "a whole number" if param.kind == "integer" else "a number"
        span = f"{what} from {param.low:g} to {param.high:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise param.fail(f"expected {span}, got {short_repr(value, 60)}.")
        if not math.isfinite(value):
            raise param.fail(f"expected {span}, got {value}.")
        if param.kind == "integer" and not float(value).is_integer():
            raise param.fail(f"expected {span}, got {value} (not rounded: send a whole number).")
        if not param.low <= value <= param.high:
            raise param.fail(f"expected {span}, got {value:g}.")
        return int(value) if param.kind == "integer" else float(value)
    if param.kind == "bool":
        if not isinstance(value, bool):
            raise param.fail(f"expected true or false, got {short_repr(value, 60)}.")
        return value
    if param.kind == "choice":
        if not isinstance(value, str) or value not in param.choices:
            raise param.fail(
                f"unknown value {short_repr(value, 60)}. Choose one of: {', '.join(param.choices)}."
            )
        return value
    if param.kind == "text":
        if not isinstance(value, str):
            raise param.fail(f"expected text, got {short_repr(value, 60)}.")
        if len(value) > MAX_PROMPT_CHARS:
            raise param.fail(
                f"{len(value)} characters is too long; keep it under {MAX_PROMPT_CHARS} "
                "(the model reads about 75 words)."
            )
        return value
    raise ValueError(f"unknown parameter kind {param.kind!r}")


def checked(component: gr.components.Component, param: Param) -> gr.components.Component:
    """Make ``component`` check API values with :func:`check_value` instead of Gradio's own
    checks (whose messages name no parameter, and which round integers and apply the UI's
    slider range). Per instance: a Component subclass would make Gradio write a stub file."""

    def preprocess(payload: Any) -> Any:
        try:
            return check_value(param, payload)
        except PhotoMakerInputError as err:
            raise gr.Error(str(err), title=INPUT_TITLE, print_exception=False) from None

    component.preprocess = preprocess
    return component


def labelled(component: gr.components.Component, name: str) -> gr.components.Component:
    """Gradio's own checks for ``component`` (file types), with the parameter named."""
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except gr.Error as err:
            raise gr.Error(
                f"{component.label} ({name}): {err.message}",
                title=INPUT_TITLE,
                print_exception=False,
            ) from None

    component.preprocess = preprocess
    return component


def check_file_payload(label: str, name: str, payload: Any, multiple: bool = True) -> None:
    """Files as the API sends them: uploaded files (or http(s) URLs Gradio fetches); a list
    of them, or with ``multiple=False`` one (or null).

    Runs before Gradio's own handling, whose errors for a malformed value or a path that was
    never uploaded (``/etc/passwd``) say nothing the user can act on."""
    if payload is None:
        return
    what = "photo" if multiple else "image"
    how = (
        "upload each file first (gradio_client: handle_file('photo.jpg'))"
        if multiple
        else f"upload the file first (gradio_client: handle_file('{name}.png'))"
    )
    if not multiple:
        if not isinstance(payload, dict):
            raise PhotoMakerInputError(
                f"{label} ({name}): expected an image file or null, got {short_repr(payload, 60)}; {how}."
            )
        payload = [payload]
    elif not isinstance(payload, list):
        raise PhotoMakerInputError(
            f"{label} ({name}): expected a list of image files, got {short_repr(payload, 60)}; {how}."
        )
    from gradio.utils import abspath, get_upload_folder, is_in_or_equal

    uploads = get_upload_folder()
    for number, item in enumerate(payload, start=1):
        path = item.get("path") if isinstance(item, dict) else None
        which = f"{what} {number}" if multiple else "it"
        if not isinstance(path, str) or not path:
            thing = f"item {number}" if multiple else "the value"
            raise PhotoMakerInputError(
                f"{label} ({name}): {thing} is not a file, got {short_repr(item, 60)}; {how}."
            )
        if re.match(r"(?i)https?://", path):
            continue
        if not is_in_or_equal(abspath(path), uploads):
            raise PhotoMakerInputError(
                f"{label} ({name}): {which} names a file on the server "
                f"({short_repr(path, 40)}), which is never read. Send the {what} itself: {how}, "
                "or an http(s) URL."
            )


def image_path_input(component: gr.Image, name: str) -> gr.Image:
    """Make ``component`` hand the handler the uploaded file's path, unopened: the service
    reads it within its own limits (pixel count from the header, clear messages), where
    Gradio's Image would decode any image in full first."""

    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        path = getattr(payload, "path", None)
        if not isinstance(path, str):
            raise gr.Error(
                f"{component.label} ({name}): expected an image file or null.",
                title=INPUT_TITLE,
                print_exception=False,
            )
        return path

    component.preprocess = preprocess
    return component


def guard_file_inputs(
    demo: gr.Blocks,
    files: dict[int, tuple[str, str, bool]],
    later_parameters: dict[str, list[Any]] | None = None,
) -> None:
    """Check the file inputs (component id -> (label, parameter name, a list?)) of every
    request before Gradio does; turn any other failure to read a request into a message with
    an error id.

    ``later_parameters`` (api name -> default values of the parameters added last) lets a raw
    request written before they existed, one value short per parameter, run as it did: the
    missing values get their defaults (Gradio itself refuses a short request; gradio_client
    fills in defaults on its own)."""
    original = demo.preprocess_data
    later_parameters = later_parameters or {}

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        try:
            added = later_parameters.get(block_fn.api_name, [])
            missing = len(block_fn.inputs) - len(inputs)
            if not explicit_call and 0 < missing <= len(added):
                inputs = [*inputs, *added[len(added) - missing :]]
            if not explicit_call:
                for block, payload in zip(block_fn.inputs, inputs, strict=False):
                    if block._id in files:
                        label, name, multiple = files[block._id]
                        check_file_payload(label, name, payload, multiple)
            return await original(block_fn, inputs, state, explicit_call)
        except PhotoMakerInputError as err:
            raise gr.Error(str(err), title=INPUT_TITLE, print_exception=False) from None
        except gr.Error:
            raise
        except Exception:
            error_id = new_error_id()
            logger.exception("could not read a request (error id %s)", error_id)
            raise gr.Error(
                "The request could not be read: a value has the wrong shape for its parameter "
                f"(see the API page). Error id {error_id}.",
                title=INPUT_TITLE,
                print_exception=False,
            ) from None

    demo.preprocess_data = preprocess_data


_NO_EXAMPLE = object()


def documented(component, description: str, example: Any = _NO_EXAMPLE):
    """Give ``component`` a description and an example value (``None`` too) on the API page."""
    api_info = component.api_info

    def info() -> dict[str, Any]:
        return {**api_info(), "description": description}

    component.api_info = info
    component.api_info_as_input = info
    if example is not _NO_EXAMPLE:
        component.example_payload = lambda: example
        component.example_inputs = lambda: example
    return component


def api_example_photo() -> dict:
    """An example photo a remote client can fetch: this Space's own asset, else the original."""
    from gradio_client import handle_file

    space = os.environ.get("SPACE_ID")
    if space:
        return handle_file(
            f"https://huggingface.co/spaces/{space}/resolve/main/assets/astronaut.jpg"
        )
    return handle_file(EXAMPLE_PHOTO_URL)


# --------------------------------------------------------------------------- errors


def new_error_id() -> str:
    return uuid.uuid4().hex[:8]


def user_error(err: PhotoMakerInputError) -> gr.Error:
    return gr.Error(str(err), title=INPUT_TITLE, print_exception=False)


def server_error(err: BaseException) -> gr.Error:
    """An honest message with an error id that is also in the log, next to the traceback."""
    if isinstance(err, PhotoMakerServerError):
        error_id = err.error_id or new_error_id()
        logger.error("server error %s: %s", error_id, err, exc_info=err)
        message = str(err)
    else:
        error_id = new_error_id()
        logger.error("unexpected error %s", error_id, exc_info=err)
        message = (
            "The generation failed because of a problem on the server, not with your photos "
            "or settings. Try again; if it keeps failing, report the error id."
        )
    return gr.Error(f"{message} (error id {error_id})", title=SERVER_TITLE, print_exception=False)


# --------------------------------------------------------------------------- the GPU part


def gpu_runner(service: PhotoMakerService) -> Callable[..., Any] | None:
    """``run_job(job, cancel=None)`` for the service on ZeroGPU (``spaces.GPU``, size, duration,
    Stop, refusals and errors across the worker: :mod:`photomaker.zerogpu`); elsewhere None,
    and the service runs the job itself."""
    return zerogpu.gpu_runner(service)


# --------------------------------------------------------------------------- handlers


@dataclass
class PhotoCheck:
    """What the photo area shows: the photos with badges, a status line, whether to go."""

    items: list[tuple[Any, str]]
    status: str
    kind: str  # "ok", "warn", "error", "empty"
    usable: bool


def status_html(text: str, kind: str) -> str:
    import html

    return f'<p class="status status-{kind}" role="status">{html.escape(text)}</p>'


class AppHandlers:
    """The app's event handlers, on one service and its settings; tests call them directly."""

    def __init__(self, service: PhotoMakerService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.run_job = gpu_runner(service)
        self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="photomaker")

    # -- generate -------------------------------------------------------------------------

    async def generate(
        self,
        photos: list[str] | None,
        prompt: str,
        negative_prompt: str | None,
        style: str,
        aspect_ratio: str,
        steps: int,
        style_strength: float,
        num_outputs: int,
        guidance_scale: float,
        seed: int | None,
        randomize_seed: bool,
        doodle: str | None = None,
        adapter_conditioning_scale: float = DOODLE_SCALE,
        adapter_conditioning_factor: float = DOODLE_FACTOR,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's way)
    ):
        """Generate pictures of the person in `photos`.

        Args:
            photos: 1 to 10 photos of one person (JPEG, PNG, WebP, HEIC, AVIF); with PhotoMaker V2 each needs a visible face.
            prompt: what to make, with the trigger word right after the class word: "a photo of a woman img in a garden".
            negative_prompt: what to avoid.
            style: a style template name (see the choices).
            aspect_ratio: an aspect-ratio preset name.
            steps: sampling steps, a whole number 1-100 (the UI offers 20-100).
            style_strength: percent of the steps before the identity is merged in, 0-100 (the UI offers 15-50); higher keeps more of the text and style.
            num_outputs: how many images, 1-4.
            guidance_scale: classifier-free guidance scale, 0-20.
            seed: the random seed, a whole number 0-2147483647; used when randomize_seed is false.
            randomize_seed: true to pick a new random seed.
            doodle: optional rough drawing that sets the layout (dark strokes on white or transparent, or white on black), stretched to the picture; null for none. Needs the doodle adapter on the server.
            adapter_conditioning_scale: how strongly the doodle steers, 0-1 (the UI offers 0.5-1).
            adapter_conditioning_factor: the share of the steps, from the first, that the doodle steers, 0-1 (the UI offers 0.5-1).
        Returns:
            The images (PNG files named photomaker-<seed>-<n>.png that carry their settings and likeness, with captions that end in the likeness) and the seed used.
        """
        request = GenerationRequest(
            photos=photos or [],
            prompt=prompt,
            negative_prompt=negative_prompt or "",
            style=style,
            aspect_ratio=aspect_ratio,
            steps=steps,
            style_strength=style_strength,
            num_outputs=num_outputs,
            guidance_scale=guidance_scale,
            seed=seed,
            randomize_seed=randomize_seed,
            doodle=doodle or None,
            adapter_conditioning_scale=adapter_conditioning_scale,
            adapter_conditioning_factor=adapter_conditioning_factor,
        )
        cancel = threading.Event()
        context = contextvars.copy_context()  # Gradio's progress tracking lives in it
        work = self._threads.submit(context.run, self._generate, request, cancel)
        try:
            result = await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            # Stop button, a client's cancel or a closed page: the worker stops at its next
            # step (the service checks the event) and frees the pipeline for the next job.
            cancel.set()
            logger.info("generation cancelled; its worker stops at the next step")
            work.add_done_callback(_log_cancelled_outcome)
            raise
        except PhotoMakerInputError as err:
            raise user_error(err) from None
        except GenerationCancelled:
            raise gr.Error(
                "The generation was stopped before it finished.", title="Stopped"
            ) from None
        except gr.Error:
            raise
        except Exception as err:  # PhotoMakerServerError and anything unexpected
            raise server_error(err) from None
        for message in result.messages:
            gr.Warning(message)
        paths = self._save(result, request.aspect_ratio)
        return [(str(p), c) for p, c in zip(paths, result.captions, strict=True)], result.seed

    def _generate(self, request: GenerationRequest, cancel: threading.Event):
        return self.service.generate(request, run_job=self.run_job, cancel=cancel)

    def _save(self, result, aspect_ratio: str) -> list[Path]:
        """The results as PNGs with their settings, in a folder of their own in Gradio's
        cache (so ``delete_cache`` removes them, and Gradio serves them without a copy)."""
        from gradio.utils import get_upload_folder

        folder = Path(get_upload_folder()) / "photomaker-results" / uuid.uuid4().hex
        scheduler = type(getattr(self.service.pipe, "scheduler", None)).__name__
        return metadata.save_results(
            result, self.settings, folder, aspect_ratio=aspect_ratio, scheduler=scheduler
        )

    async def generate_from_page(
        self,
        photos: list[str] | None,
        prompt: str,
        negative_prompt: str | None,
        style: str,
        aspect_ratio: str,
        steps: int,
        style_strength: float,
        num_outputs: int,
        guidance_scale: float,
        seed: int | None,
        randomize_seed: bool,
        doodle_enabled: bool,
        sketch: dict | None,
        adapter_conditioning_scale: float,
        adapter_conditioning_factor: float,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's way)
    ):
        """:meth:`generate` from the page: the doodle is the Sketchpad's drawing, when enabled."""
        return await self.generate(
            photos, prompt, negative_prompt, style, aspect_ratio, steps, style_strength,
            num_outputs, guidance_scale, seed, randomize_seed,
            self.read_doodle(doodle_enabled, sketch), adapter_conditioning_scale,
            adapter_conditioning_factor, progress=progress,
        )  # fmt: skip

    @staticmethod
    def read_doodle(enabled: bool, sketch: dict | None):
        """The Sketchpad's drawing (its composite) when the doodle is enabled, else None."""
        if not enabled or not sketch:
            return None
        return sketch.get("composite")

    @staticmethod
    def doodle_toggled(enabled: bool):
        return gr.update(visible=bool(enabled))

    # -- after a run ----------------------------------------------------------------------

    @staticmethod
    def running():
        """While a generation runs: Stop instead of Generate."""
        return gr.update(visible=False), gr.update(visible=True)

    @staticmethod
    def finished(gallery: list | None, seed_used: int | None, usable: bool):
        """After a run (done or failed): Generate back, the seed reusable, a zip of results."""
        files = [item[0] for item in gallery or []]
        if not files:  # no result yet (the hidden Number reads 0 then, not None)
            seed_used = None
        archive = None
        if files and seed_used is not None:
            archive = str(
                metadata.zip_files(files, Path(files[0]).parent / metadata.zip_name(seed_used))
            )
        return (
            gr.update(visible=True, interactive=usable),
            gr.update(visible=False),
            "" if seed_used is None else str(int(seed_used)),
            gr.update(value="Reuse this seed", interactive=seed_used is not None),
            gr.update(value=archive, visible=archive is not None),
        )

    @staticmethod
    def stopped(usable: bool):
        gr.Info("Stopped.")
        return gr.update(visible=True, interactive=usable), gr.update(visible=False)

    @staticmethod
    def reuse_seed(seed_used: str | int | None):
        """Fix the seed to the last one used (Randomize off), and say so."""
        try:
            seed_used = int(seed_used)
        except (TypeError, ValueError):
            return gr.update(), gr.update(), gr.update(), gr.update()
        gr.Info(f"Seed {int(seed_used)} is set: Randomize seed is off, so the next run reuses it.")
        return (
            gr.update(value=int(seed_used), interactive=True),
            False,
            gr.update(open=True),
            gr.update(value="✓ Seed reused"),
        )

    @staticmethod
    def randomize_changed(randomize: bool):
        """The seed box is disabled while Randomize is on."""
        return gr.update(interactive=not randomize)

    # -- photos ---------------------------------------------------------------------------

    def check_photos(self, photos: Sequence[str] | None) -> PhotoCheck:
        """Load and analyse the photos; one badge per photo and one line of status."""
        n_max = self.settings.max_photos
        if not photos:
            return PhotoCheck([], f"Add 1–{n_max} photos of the person to start.", "empty", False)
        photos = list(photos)
        try:
            analysis = self.service.analyze_photos(photos)
        except PhotoMakerInputError as err:
            # Mark the photos that do not load on their own; the message says what to do.
            items = []
            for i, path in enumerate(photos[:n_max], start=1):
                try:
                    self.service.load_photos([path])
                    items.append((path, f"{i} ?"))
                except PhotoMakerInputError:
                    items.append((path, f"{i} ✗ not readable"))
            return PhotoCheck(items, f"✗ {err}", "error", False)
        n = len(analysis.images)
        photos_word = f"photo{'s' if n > 1 else ''}"
        if analysis.reports is None:
            items = [(img, f"{i} ✓") for i, img in enumerate(analysis.images, start=1)]
            return PhotoCheck(items, f"✓ {n} {photos_word} ready.", "ok", True)
        items, missing = [], []
        for i, (img, report) in enumerate(zip(analysis.images, analysis.reports, strict=True), 1):
            if report.found and report.embedding is not None:
                extra = f" · {report.num_faces} faces, largest used" if report.num_faces > 1 else ""
                items.append((img, f"{i} ✓ face{extra}"))
            else:
                items.append((img, f"{i} ✗ no face"))
                missing.append(i)
        found = n - len(missing)
        if not missing:
            return PhotoCheck(
                items, f"✓ Faces found in {found} of {n} {photos_word}: ready.", "ok", True
            )
        which = ", ".join(str(i) for i in missing)
        if self.service.skip_faceless_photos and found:
            text = f"⚠ No face in photo {which}: it will be left out. {found} of {n} usable."
            return PhotoCheck(items, text, "warn", True)
        text = (
            f"✗ No face found in photo {which} (of {n}). Remove it with its × or use a photo "
            "where the face is large, frontal and well lit."
        )
        return PhotoCheck(items, text, "error", False)

    def preview_photos(self, photos: list[str] | None):
        """The photo area after the photos change: badges, coloured status, Generate state."""
        check = self.check_photos(photos)
        button = gr.update(
            interactive=check.usable,
            value="Generate" if check.usable else _why_not(check.kind),
        )
        return check.items, status_html(check.status, check.kind), button, check.usable

    @staticmethod
    def photos_from_view(view: list | None, photos: list[str] | None):
        """The photo list after the user added or removed photos in the preview.

        Previewed photos carry their number in their caption ("2 ✓ face"), which maps them
        back to the uploaded file; anything without a number was just uploaded."""
        photos = list(photos or [])
        result = []
        for path, caption in view or []:
            match = re.match(r"(\d+) ", caption or "")
            index = int(match.group(1)) - 1 if match else -1
            result.append(photos[index] if 0 <= index < len(photos) else path)
        if result == photos:
            return gr.skip()
        return result or None

    # -- settings from an image -----------------------------------------------------------

    def load_settings(self, path: str | None):
        """Restore the form from one of our PNGs (its JSON text chunk)."""
        if not path:
            return [gr.update()] * 13
        try:
            meta = metadata.read_metadata(path)
        except PhotoMakerInputError as err:
            raise user_error(err) from None
        style = meta.get("style")
        if style not in self.service.style_names:
            gr.Warning(f"The style {style!r} is not on this server; kept the current style.")
            style = gr.update()
        ratio = meta.get("aspect_ratio")
        if ratio not in ASPECT_RATIOS:
            ratio = gr.update()
        gr.Info(f"Settings of {Path(path).name} loaded: seed {meta.get('seed')}, Randomize off.")
        if meta.get("doodle"):
            gr.Warning(
                "That picture was made with a doodle, which PNGs do not keep: draw it again."
            )
        return (
            meta.get("prompt", ""),
            meta.get("negative_prompt", ""),
            style,
            ratio,
            _slider_to(meta.get("steps"), *self.ui_range("steps")),
            _slider_to(meta.get("style_strength"), *self.ui_range("style_strength")),
            _slider_to(meta.get("num_images"), *LIMITS["num_outputs"]),
            _slider_to(meta.get("guidance_scale"), *LIMITS["guidance_scale"]),
            gr.update(value=meta.get("seed"), interactive=True),
            False,
            gr.update(open=True),
            _slider_to(
                meta.get("adapter_conditioning_scale"), *UI_LIMITS["adapter_conditioning_scale"]
            ),
            _slider_to(
                meta.get("adapter_conditioning_factor"), *UI_LIMITS["adapter_conditioning_factor"]
            ),
        )

    def ui_range(self, name: str) -> tuple[float, float]:
        """The slider's range in the UI: the reference demo's, or the full one in tiny mode."""
        if self.settings.tiny and name == "steps":
            return LIMITS[name]
        return UI_LIMITS.get(name, LIMITS[name])

    # -- examples -------------------------------------------------------------------------

    def examples(self) -> list[tuple[list[str], str, str]]:
        """(photos, prompt, style) of each example, from the public-domain photos in assets/."""
        photos = sorted(
            str(p)
            for p in ASSETS.glob("*")
            if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}
        )
        if not photos:
            return []
        word = self.service.trigger_word
        return [
            (photos[:2], f"a photo of a woman {word} in a spacesuit, smiling", DEFAULT_STYLE),
            (photos, f"portrait of a woman {word} reading a book in a cafe", "Watercolor"),
            (photos[:1], f"a woman {word} as a knight in shining armor", "Fantasy art"),
        ]

    def load_example(self, evt: gr.SelectData):
        photos, prompt, style = self.examples()[evt.index]
        return photos, prompt, style


def merge_hint(steps: Any, style_strength: Any) -> str:
    """Where the identity comes in, for the sliders' current values; a warning when never."""
    from photomaker.service import merge_step

    try:
        steps, at = int(steps), merge_step(float(style_strength), int(steps))
    except (TypeError, ValueError):
        return ""
    if at >= steps - 1:
        when = "never comes in" if at >= steps else "comes in only at the last step"
        return (
            f"⚠ With these values the identity {when} ({steps} steps, merged from step "
            f"{at + 1}): lower the style strength or add steps."
        )
    return f"The identity comes in at step {at + 1} of {steps}."


def example_caption(photos: list[str], prompt: str, style: str) -> str:
    return f"{style} · {len(photos)} photo{'s' if len(photos) > 1 else ''}"


def _why_not(kind: str) -> str:
    return "Add photos to generate" if kind == "empty" else "Fix the photos to generate"


def _slider_to(value: Any, low: float, high: float):
    """A slider update to ``value``, widening the slider's range when the value (sent through
    the API) lies outside the UI's normal range."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return gr.update()
    return gr.update(value=value, minimum=min(low, value), maximum=max(high, value))


def _log_cancelled_outcome(work) -> None:
    error = work.exception()
    if error is None:
        logger.info("a cancelled generation finished before it saw the cancel")
    elif isinstance(error, GenerationCancelled):
        logger.info("a cancelled generation stopped")
    elif not isinstance(error, PhotoMakerError):
        logger.error("a cancelled generation failed", exc_info=error)


# --------------------------------------------------------------------------- look

CSS = """
#title { text-align: center; }
#title p { color: var(--body-text-color); }
#tiny-banner { background: #fff3cd; color: #533f03; border: 1px solid #e0c060;
               border-radius: 8px; padding: 10px 14px; font-weight: 600; }
#tiny-banner p, #tiny-banner strong, #tiny-banner em { margin: 0; color: #533f03; }
.status { margin: 0; padding: 8px 12px; border-radius: 8px; border: 1px solid;
          font-weight: 600; font-size: var(--text-md); }
.status-ok { color: #14532d; background: #f0fdf4; border-color: #86efac; }
.status-warn { color: #7c2d12; background: #fff7ed; border-color: #fdba74; }
.status-error { color: #7f1d1d; background: #fef2f2; border-color: #fca5a5; }
.status-empty { color: #1f2937; background: #f3f4f6; border-color: #d1d5db; }
.dark .status-ok { color: #bbf7d0; background: #052e16; border-color: #166534; }
.dark .status-warn { color: #fed7aa; background: #431407; border-color: #9a3412; }
.dark .status-error { color: #fecaca; background: #450a0a; border-color: #991b1b; }
.dark .status-empty { color: #e5e7eb; background: #1f2937; border-color: #4b5563; }
/* Galleries grow with their images (no inner scrolling, no empty band), start below their
   label and fit a phone. */
#gallery .grid-wrap, #photo-view .grid-wrap, #examples .grid-wrap {
    min-height: 0; max-height: none; overflow-y: visible; padding-top: 40px; }
#photo-view .grid-container { grid-template-columns: repeat(auto-fill, minmax(104px, 1fr)); }
#examples .grid-container { grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)); }
/* Results: columns by count (one row up to three, then 2 x 2). */
#gallery .grid-container:has(> :only-child) { grid-template-columns: minmax(0, 1fr); }
#gallery .grid-container:has(> :nth-child(2):last-child),
#gallery .grid-container:has(> :nth-child(4):last-child) {
    grid-template-columns: repeat(2, minmax(0, 1fr)); }
#gallery .grid-container:has(> :nth-child(3):last-child) {
    grid-template-columns: repeat(3, minmax(0, 1fr)); }
/* Results and examples: the whole image, its caption in full underneath. */
#gallery .thumbnail-item, #examples .thumbnail-item {
    aspect-ratio: auto; height: auto; display: flex; flex-direction: column; }
#gallery .thumbnail-item > img { height: auto; object-fit: contain; }
#examples .thumbnail-item > img { aspect-ratio: 1 / 1; height: auto; }
#gallery .caption-label, #examples .caption-label {
    position: static; max-width: none; white-space: normal; overflow: visible;
    text-overflow: clip; border: 0; border-top: 1px solid var(--border-color-primary);
    border-radius: 0; opacity: 1; color: var(--body-text-color);
    background: var(--background-fill-primary); font-size: var(--text-sm); text-align: center; }
/* Photo badges: short, over the photo; the per-photo remove (×) visible without hovering. */
#photo-view .caption-label { opacity: 1; color: var(--body-text-color);
    background: var(--background-fill-primary); font-size: var(--text-sm); }
#photo-view .delete-button { opacity: 1; top: 4px; right: 4px; left: auto; bottom: auto;
    padding: 6px; border: 1px solid var(--border-color-primary); border-radius: 999px;
    background: var(--background-fill-primary); }
#photo-view .delete-button svg { width: 14px; height: 14px; color: var(--body-text-color); }
/* Error looks. Gradio 6.31's page titles every error toast "Error" (it drops gr.Error's
   title, which API clients do get); ours differ by duration: a user mistake closes itself
   (it has a timer), a server failure stays until closed. */
.toast-body.error:has(.timer) { border-color: #b45309; background: #fffbeb; }
.toast-body.error:has(.timer) .toast-title, .toast-body.error:has(.timer) .toast-icon,
.toast-body.error:has(.timer) .toast-close { color: #92400e; }
.toast-body.error:has(.timer) .timer { background: #b45309; }
.toast-body.error .toast-title { font-size: 0; }
.toast-body.error .toast-title::after { font-size: var(--text-md); }
.toast-body.error:has(.timer) .toast-title::after { content: "Please check your input"; }
.toast-body.error:not(:has(.timer)) .toast-title::after {
    content: "Something went wrong on the server"; }
.dark .toast-body.error:has(.timer) { background: #451a03; border-color: #f59e0b; }
.dark .toast-body.error:has(.timer) .toast-title,
.dark .toast-body.error:has(.timer) .toast-icon { color: #fde68a; }
#generate-row { align-items: stretch; }
#seed-row { align-items: end; }
button:focus-visible, [role="button"]:focus-visible, input:focus-visible,
textarea:focus-visible { outline: 3px solid #1e1b4b !important; outline-offset: 2px; }
.dark button:focus-visible, .dark input:focus-visible, .dark textarea:focus-visible {
    outline-color: #c7d2fe !important; }
"""


def theme() -> gr.themes.Base:
    """Soft, with every text colour at 4.5:1 or more against its background (WCAG AA)."""
    return gr.themes.Soft(primary_hue="indigo").set(
        body_text_color_subdued="*neutral_600",
        block_info_text_color="*neutral_600",
        block_label_text_color="*primary_800",
        block_title_text_color="*primary_800",
        block_label_background_fill="*primary_50",
        input_placeholder_color="*neutral_500",
        button_primary_background_fill="*primary_700",
        button_primary_background_fill_hover="*primary_800",
        button_primary_border_color="*primary_700",
        button_primary_text_color="white",
        button_secondary_text_color="*neutral_800",
        checkbox_label_text_color="*neutral_800",
        button_cancel_background_fill="#b91c1c",
        button_cancel_background_fill_hover="#991b1b",
        button_cancel_border_color="#b91c1c",
        button_cancel_text_color="white",
        button_cancel_text_color_hover="white",
        button_cancel_background_fill_dark="#b91c1c",
        button_cancel_text_color_dark="white",
        body_text_color_subdued_dark="*neutral_300",
        block_info_text_color_dark="*neutral_300",
        block_label_text_color_dark="*primary_100",
        block_title_text_color_dark="*primary_100",
        block_label_background_fill_dark="*neutral_800",
        input_placeholder_color_dark="*neutral_300",
    )


SCROLL_TO_RESULTS = """
() => {
  const el = document.getElementById("results");
  if (!el) return;
  const top = el.getBoundingClientRect().top;
  if (top < 0 || top > window.innerHeight * 0.5) el.scrollIntoView({behavior: "smooth", block: "start"});
}
"""
# Gradio's Sketchpad starts with no tool picked; enabling the doodle picks the brush.
PICK_THE_BRUSH = """
(on) => {
  if (on) setTimeout(() => {
    const pad = document.getElementById("doodle-pad");
    const brush = pad && pad.querySelector('button[aria-label="Brush"]');
    if (brush) brush.click();
  }, 300);
  return on;
}
"""
SCROLL_TO_FORM = """
() => {
  const el = document.getElementById("photo-view");
  if (el) el.scrollIntoView({behavior: "smooth", block: "start"});
}
"""


def tips(service: PhotoMakerService, settings: Settings) -> str:
    word = service.trigger_word
    faces = (
        " Each photo shows ✓ when its face was found and ✗ when not." if service.needs_faces else ""
    )
    doodle = (
        "\n- **Enable doodle** to sketch the layout (a head, the shoulders, a horizon): the "
        "strokes set where things go; *Doodle strength* is how strictly, *Doodle follows for* "
        "for how many of the first steps."
        if getattr(service, "doodle_available", False)
        else ""
    )
    return f"""
- Upload **1 to {settings.max_photos} photos** of one person; several photos from different
  angles give a better likeness. Faces should be clear and not too small.{faces}
- Write the **class word followed by the trigger word `{word}`**: "a photo of a man {word} ...",
  "a woman {word} ...", "a boy {word} ...". Exactly once. **Enter** generates;
  **Shift+Enter** starts a new line.
- **Style strength** is the share of the steps that see only your text before the identity
  comes in: 15–20% for likeness, 30–50% for stylized pictures.
- The same photos, prompt, settings and seed always give the same pictures: *Reuse this seed*,
  or *Load settings from image* with one of the PNGs you downloaded (they carry their settings).{doodle}
- Each caption ends with the picture's **likeness** to the person: the cosine similarity of
  face embeddings (ArcFace), about 0.4–0.7 for a good likeness; "no face found" when the
  picture shows no face.
"""


# --------------------------------------------------------------------------- layout


def create_app(settings: Settings, service: PhotoMakerService | None = None) -> gr.Blocks:
    """The whole app for ``settings`` (the service is built from them unless given)."""
    check_settings(settings)
    if service is None:
        from photomaker.loading import build_service

        service = build_service(settings)
    # Step-by-step progress in the UI comes from the pipeline's tqdm bar (track_tqdm).
    pipe = getattr(service, "pipe", None)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=False, leave=False)
    handlers = AppHandlers(service, settings)
    word = service.trigger_word
    doodle_on = bool(getattr(service, "doodle_available", False))
    steps_default = 4 if settings.tiny else 50

    # css/theme on the Blocks: Gradio 6 moved them to launch() but still honours them here as
    # launch()'s defaults (blocks.py: `css = css if css is not None else self._deprecated_css`),
    # so they apply however the app is launched: `python app.py`, `gradio app.py`, a Space, or
    # an embedding app's demo.launch(). The warning says only that.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*moved from the Blocks constructor.*")
        demo = gr.Blocks(title="PhotoMaker", css=CSS, theme=theme(), delete_cache=DELETE_CACHE)
    with demo:
        gr.Markdown(
            f"# PhotoMaker {service.pm_version.upper()}\n"
            "Pictures of a person, in any style, from a few of their photos — no training.",
            elem_id="title",
        )
        if settings.tiny:
            gr.Markdown(
                "⚠️ **Tiny mode**: the models here have small *random* weights, built offline — "
                "the outputs are noise, not pictures. It is for trying the app and for tests; "
                "sizes are scaled down to 64 pixels.",
                elem_id="tiny-banner",
            )
        usable = gr.State(False)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                # The API's `photos`; people see and edit the photos in the preview below.
                photos = labelled(
                    gr.File(
                        label="Photos",
                        file_count="multiple",
                        file_types=IMAGE_FILE_TYPES,
                        type="filepath",
                        visible="hidden",
                        elem_id="photos",
                    ),
                    "photos",
                )
                photo_view = gr.Gallery(
                    label=f"Photos of the person (1–{settings.max_photos})",
                    interactive=True,
                    file_types=IMAGE_FILE_TYPES,
                    type="filepath",
                    format="png",
                    columns=5,
                    fit_columns=False,
                    height="auto",
                    object_fit="cover",
                    buttons=[],
                    elem_id="photo-view",
                )
                photo_status = gr.HTML(
                    status_html(
                        f"Add 1–{settings.max_photos} photos of the person to start.", "empty"
                    ),
                    elem_id="photo-status",
                )
                prompt = gr.Textbox(
                    label="Prompt",
                    info=f"The class word, then the trigger word '{word}': "
                    f"'a photo of a man {word} in the snow'. Enter generates, Shift+Enter "
                    "adds a line.",
                    placeholder=f"a photo of a woman {word} wearing a red hat",
                    lines=1,
                    max_lines=6,
                    elem_id="prompt",
                )
                with gr.Row():
                    style = gr.Dropdown(
                        label="Style",
                        choices=service.style_names,
                        value=DEFAULT_STYLE,
                        elem_id="style",
                        min_width=220,
                    )
                    aspect_ratio = gr.Dropdown(
                        label="Aspect ratio"
                        + (" (tiny mode renders at 64 px)" if settings.tiny else ""),
                        choices=list(ASPECT_RATIOS),
                        value=DEFAULT_ASPECT_RATIO,
                        elem_id="aspect-ratio",
                        min_width=220,
                    )
                # The doodle: a Sketchpad for people; the API's `doodle` is the hidden image
                # below, filled from the Sketchpad when Generate is pressed.
                enable_doodle = gr.Checkbox(
                    label="Enable doodle",
                    value=False,
                    visible=doodle_on,
                    info="Sketch a rough layout (pose, framing) for the picture to follow.",
                    elem_id="enable-doodle",
                )
                with gr.Column(visible=False, elem_id="doodle-area") as doodle_area:
                    sketchpad = gr.Sketchpad(
                        label="Doodle (stretched to the picture's aspect ratio)",
                        type="pil",
                        canvas_size=(512, 512),
                        height=420,
                        layers=False,
                        transforms=(),
                        brush=gr.Brush(colors=["#000000"], color_mode="fixed", default_size=6),
                        buttons=[],
                        placeholder="Pick the brush (left), then sketch a rough layout",
                        elem_id="doodle-pad",
                    )
                    with gr.Row():
                        adapter_scale = gr.Slider(
                            label="Doodle strength",
                            minimum=UI_LIMITS["adapter_conditioning_scale"][0],
                            maximum=UI_LIMITS["adapter_conditioning_scale"][1],
                            step=0.05,
                            value=DOODLE_SCALE,
                            info="How strongly the doodle steers the layout.",
                            elem_id="doodle-strength",
                        )
                        adapter_factor = gr.Slider(
                            label="Doodle follows for (share of steps)",
                            minimum=UI_LIMITS["adapter_conditioning_factor"][0],
                            maximum=UI_LIMITS["adapter_conditioning_factor"][1],
                            step=0.05,
                            value=DOODLE_FACTOR,
                            info="Early steps set the layout; later ones, the details.",
                            elem_id="doodle-factor",
                        )
                api_call = gr.Button(visible=False, elem_id="api-generate")  # /generate's trigger
                doodle = image_path_input(
                    gr.Image(
                        label="Doodle",
                        type="filepath",
                        format="png",
                        image_mode=None,
                        visible="hidden",
                        elem_id="doodle-image",
                    ),
                    "doodle",
                )
                with gr.Row(elem_id="generate-row"):
                    submit = gr.Button(
                        _why_not("empty"),
                        variant="primary",
                        interactive=False,
                        elem_id="generate",
                    )
                    stop = gr.Button("Stop", variant="stop", visible=False, elem_id="stop")
            with gr.Column(scale=1, min_width=320, elem_id="results"):
                gallery = gr.Gallery(
                    label="Results",
                    columns=2,
                    height="auto",
                    object_fit="contain",
                    interactive=False,
                    buttons=["download", "fullscreen"],
                    elem_id="gallery",
                )
                # The API's seed output; Gradio's Number shows 0 for "no value", so people
                # see the seed in a text box that stays empty until the first result.
                seed_used = gr.Number(label="Seed used", value=None, precision=0, visible="hidden")
                with gr.Row(equal_height=False, elem_id="seed-row"):
                    seed_shown = gr.Textbox(
                        label="Seed used",
                        placeholder="after the first run",
                        interactive=False,
                        max_lines=1,
                        elem_id="seed-used",
                        min_width=140,
                    )
                    reuse = gr.Button(
                        "Reuse this seed",
                        size="sm",
                        interactive=False,
                        scale=0,
                        min_width=150,
                        elem_id="reuse-seed",
                    )
                download = gr.DownloadButton(
                    "Download all (.zip)", visible=False, size="sm", elem_id="download-all"
                )
                settings_file = gr.File(
                    label="Load settings from image (drop a PhotoMaker PNG)",
                    file_types=[".png"],
                    type="filepath",
                    height=120,
                    elem_id="load-settings",
                )
        with gr.Accordion("Advanced options", open=False, elem_id="advanced") as advanced:
            negative_prompt = gr.Textbox(
                label="Negative prompt", value=DEFAULT_NEGATIVE_PROMPT, lines=2, max_lines=6
            )
            with gr.Row():
                steps = gr.Slider(
                    label="Steps",
                    minimum=handlers.ui_range("steps")[0],
                    maximum=handlers.ui_range("steps")[1],
                    step=1,
                    value=steps_default,
                    precision=0,
                    info="More steps: finer detail, slower.",
                    elem_id="steps",
                )
                style_strength = gr.Slider(
                    label="Style strength (%)",
                    minimum=handlers.ui_range("style_strength")[0],
                    maximum=handlers.ui_range("style_strength")[1],
                    step=1,
                    value=20,
                    info="Share of the steps before the identity is merged in.",
                )
            merge_note = gr.Markdown(merge_hint(steps_default, 20), elem_id="merge-hint")
            with gr.Row():
                num_outputs = gr.Slider(
                    label="Number of images",
                    minimum=1,
                    maximum=4,
                    step=1,
                    value=2,
                    precision=0,
                    elem_id="num-outputs",
                )
                guidance_scale = gr.Slider(
                    label="Guidance scale",
                    minimum=LIMITS["guidance_scale"][0],
                    maximum=LIMITS["guidance_scale"][1],
                    step=0.1,
                    value=5.0,
                )
            with gr.Row():
                seed = gr.Number(
                    label="Seed",
                    value=0,
                    precision=0,
                    minimum=0,
                    maximum=MAX_SEED,
                    interactive=False,
                    info="Used when Randomize seed is off.",
                    elem_id="seed",
                )
                randomize_seed = gr.Checkbox(
                    label="Randomize seed", value=True, elem_id="randomize"
                )
        examples = handlers.examples()
        if examples:
            example_view = gr.Gallery(
                value=[(ex[0][-1], example_caption(*ex)) for ex in examples],
                label="Examples (public-domain photos): click one to fill the form",
                columns=3,
                fit_columns=False,
                height="auto",
                object_fit="cover",
                allow_preview=False,
                interactive=False,
                buttons=[],
                elem_id="examples",
            )
        with gr.Accordion("Tips", open=False):
            gr.Markdown(tips(service, settings))

        # -- the API: checks that name the parameter, descriptions and example values ------
        numbers = [
            (steps, Param("steps", "Steps", "integer", *LIMITS["steps"])),
            (style_strength, Param("style_strength", "Style strength", "number", *LIMITS["style_strength"])),
            (num_outputs, Param("num_outputs", "Number of images", "integer", *LIMITS["num_outputs"])),
            (guidance_scale, Param("guidance_scale", "Guidance scale", "number", *LIMITS["guidance_scale"])),
            (seed, Param("seed", "Seed", "integer", *LIMITS["seed"], optional=True)),
            (adapter_scale, Param("adapter_conditioning_scale", "Doodle strength", "number", *LIMITS["adapter_conditioning_scale"])),
            (adapter_factor, Param("adapter_conditioning_factor", "Doodle share of steps", "number", *LIMITS["adapter_conditioning_factor"])),
        ]  # fmt: skip
        for component, param in numbers:
            checked(component, param)
        checked(prompt, Param("prompt", "Prompt", "text", optional=True))
        checked(negative_prompt, Param("negative_prompt", "Negative prompt", "text", optional=True))
        checked(style, Param("style", "Style", "choice", choices=tuple(service.style_names)))
        checked(
            aspect_ratio,
            Param("aspect_ratio", "Aspect ratio", "choice", choices=tuple(ASPECT_RATIOS)),
        )
        checked(randomize_seed, Param("randomize_seed", "Randomize seed", "bool"))
        documented(
            photos,
            f"1 to {settings.max_photos} photos of one person (handle_file(path or URL)); "
            "JPEG, PNG, WebP, HEIC/HEIF or AVIF.",
            example=[api_example_photo()],
        )
        documented(
            prompt,
            f"The picture to make; the class word then the trigger word '{word}', once.",
            example=f"a photo of a woman {word} in a spacesuit, smiling",
        )
        documented(negative_prompt, "What to avoid.", example=DEFAULT_NEGATIVE_PROMPT)
        documented(style, "A style name.", example=DEFAULT_STYLE)
        documented(aspect_ratio, "An aspect-ratio preset name.", example=DEFAULT_ASPECT_RATIO)
        documented(steps, "Sampling steps, a whole number 1-100 (the UI offers 20-100).", 30)
        documented(
            style_strength,
            "Percent of the steps before the identity is merged in, 0-100 (UI: 15-50).",
            20,
        )
        documented(num_outputs, "How many images, 1-4.", 2)
        documented(guidance_scale, "Classifier-free guidance scale, 0-20.", 5.0)
        documented(seed, "The seed, 0-2147483647; used when randomize_seed is false.", 42)
        documented(randomize_seed, "True to pick a new random seed.", False)
        off = "" if doodle_on else " The doodle is off on this server: a doodle is refused."
        documented(
            doodle,
            "Optional rough drawing that sets the layout (handle_file(path or URL)): dark "
            "strokes on white or transparent, or white on black; stretched to the picture. "
            f"null for none.{off}",
            example=None,
        )
        documented(
            adapter_scale,
            "How strongly the doodle steers the layout, 0-1 (UI: 0.5-1); used with a doodle.",
            DOODLE_SCALE,
        )
        documented(
            adapter_factor,
            "Share of the steps, from the first, that the doodle steers, 0-1 (UI: 0.5-1).",
            DOODLE_FACTOR,
        )
        guard_file_inputs(
            demo,
            {photos._id: ("Photos", "photos", True), doodle._id: ("Doodle", "doodle", False)},
            later_parameters={
                "generate": [None, DOODLE_SCALE, DOODLE_FACTOR]
            },  # doodle and its two numbers
        )

        # -- events ------------------------------------------------------------------------
        inputs = [
            photos, prompt, negative_prompt, style, aspect_ratio, steps, style_strength,
            num_outputs, guidance_scale, seed, randomize_seed, doodle, adapter_scale,
            adapter_factor,
        ]  # fmt: skip
        triggers = [submit.click, prompt.submit]
        gr.on(triggers, fn=None, js=SCROLL_TO_RESULTS, api_visibility="private")
        gr.on(
            triggers,
            handlers.running,
            None,
            [submit, stop],
            queue=False,
            api_visibility="private",
            show_progress="hidden",
        )
        # The page sends the Sketchpad (when the doodle is enabled); API clients send an
        # image file as `doodle` (a hidden input). Both wait in the one GPU queue.
        run = gr.on(
            triggers,
            fn=handlers.generate_from_page,
            inputs=[*inputs[:-3], enable_doodle, sketchpad, adapter_scale, adapter_factor],
            outputs=[gallery, seed_used],
            api_visibility="private",
            concurrency_limit=1,
            concurrency_id="gpu",
            trigger_mode="once",
        )
        api_call.click(
            fn=handlers.generate,
            inputs=inputs,
            outputs=[gallery, seed_used],
            api_name="generate",
            concurrency_limit=1,
            concurrency_id="gpu",
        )
        # .then() runs after a success only in Gradio 6.31's page; .failure() after an error.
        for after in (run.then, run.failure):
            after(
                handlers.finished,
                [gallery, seed_used, usable],
                [submit, stop, seed_shown, reuse, download],
                api_visibility="private",
                show_progress="hidden",
            )
        stop.click(
            handlers.stopped,
            usable,
            [submit, stop],
            cancels=[run],
            api_visibility="private",
        )
        photo_view.change(
            handlers.photos_from_view,
            [photo_view, photos],
            photos,
            api_visibility="private",
            show_progress="hidden",
            queue=False,
        )
        photos.change(
            handlers.preview_photos,
            photos,
            [photo_view, photo_status, submit, usable],
            api_visibility="private",
            concurrency_limit=4,
            concurrency_id="preview",
            show_progress="minimal",
        )
        reuse.click(
            handlers.reuse_seed,
            seed_shown,
            [seed, randomize_seed, advanced, reuse],
            api_visibility="private",
        )
        gr.on(
            [steps.change, style_strength.change],
            merge_hint,
            [steps, style_strength],
            merge_note,
            api_visibility="private",
            show_progress="hidden",
            queue=False,
        )
        randomize_seed.change(
            handlers.randomize_changed,
            randomize_seed,
            seed,
            api_visibility="private",
            show_progress="hidden",
        )
        settings_file.upload(
            handlers.load_settings,
            settings_file,
            [
                prompt,
                negative_prompt,
                style,
                aspect_ratio,
                steps,
                style_strength,
                num_outputs,
                guidance_scale,
                seed,
                randomize_seed,
                advanced,
                adapter_scale,
                adapter_factor,
            ],  # fmt: skip
            api_visibility="private",
        )
        enable_doodle.change(
            handlers.doodle_toggled,
            enable_doodle,
            doodle_area,
            js=PICK_THE_BRUSH,
            api_visibility="private",
            show_progress="hidden",
            queue=False,
        )
        if examples:
            example_view.select(
                handlers.load_example,
                None,
                [photos, prompt, style],
                api_visibility="private",
                js=SCROLL_TO_FORM,
            )
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    return demo


def check_settings(settings: Settings) -> None:
    """Refuse settings this machine cannot run, before anything loads."""
    if settings.compile and on_zerogpu():
        raise PhotoMakerInputError(
            "--compile (PHOTOMAKER_COMPILE) is not supported on ZeroGPU: ZeroGPU does not run "
            "torch.compile. Unset it on this Space (ahead-of-time compilation is not "
            "supported by this app yet)."
        )


# --------------------------------------------------------------------------- entry points


def launch(demo: gr.Blocks, settings: Settings) -> None:
    demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        share=settings.share,
        css=CSS,
        theme=theme(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_args(argv, parser=build_parser(prog="app.py"))
        app = create_app(settings)
    except PhotoMakerInputError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    if on_zerogpu():
        logger.info("running on ZeroGPU")
    globals()["demo"] = app  # for Gradio's reload mode, which looks for `demo`
    launch(app, settings)
    return 0


def _demo_from_env() -> gr.Blocks:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return create_app(Settings.from_env())


def __getattr__(name: str) -> Any:
    """``app.demo`` for embedding apps and ``gradio app.py``'s reloader: built from the
    environment on first use, so that importing this module loads nothing."""
    if name == "demo":
        globals()["demo"] = app = _demo_from_env()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
elif os.environ.get("SPACE_ID"):
    # A Space may import this file and launch the Blocks it finds in it rather than run it:
    # there `demo` is a plain module attribute, built at import as Spaces expect.
    demo = _demo_from_env()
