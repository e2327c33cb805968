"""The app's event handlers: :class:`AppHandlers` on one service and its settings, and the
small pure functions the page shows (the merge hint, example captions). Tests call them
directly, without a browser."""

from __future__ import annotations

import asyncio
import contextvars
import html
import logging
import re
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from .. import metadata
from ..errors import GenerationCancelled, PhotoMakerError, PhotoMakerInputError
from ..params import API_PARAMS, BY_NAME, default, default_steps
from ..service import GenerationRequest, PhotoMakerService, merge_step
from ..settings import Settings
from ..styles import DEFAULT_STYLE
from .gpu import gpu_runner, server_error, user_error

logger = logging.getLogger("photomaker.app")

#: Example photos (public domain), in the repository; a plain install has none.
ASSETS = Path(__file__).resolve().parents[2] / "assets"
#: The doodle's two numbers when a request does not give them.
DOODLE_SCALE = default("adapter_conditioning_scale")
DOODLE_FACTOR = default("adapter_conditioning_factor")
STYLE_IMAGE_SCALE = default("style_image_scale")
#: The Quality/Fast choice on the page (the API's ``fast`` is False / True).
QUALITY, FAST = "Quality", "Fast"
#: Under --aot the compiled graph is Quality mode's; the fast LoRA is not in it.
AOT_FAST_NOTE = "It runs the uncompiled UNet: the ahead-of-time compiled one serves Quality."
#: What "Load settings from image" fills: the recorded /generate parameters in the API's
#: order, the Advanced accordion (opened) after randomize_seed, then the doodle's checkbox and
#: the style image's section, turned on and opened where the picture used them.
SETTINGS_OUTPUTS: tuple[str, ...] = (
    *(
        name
        for p in API_PARAMS
        if p.kind not in ("files", "image")
        for name in ((p.name, "advanced") if p.name == "randomize_seed" else (p.name,))
    ),
    "enable_doodle",
    "style_image_area",
)


@dataclass
class PhotoCheck:
    """What the photo area shows: the photos with badges, a status line, whether to go."""

    items: list[tuple[Any, str]]
    status: str
    kind: str  # "ok", "warn", "error", "empty"
    usable: bool


def status_html(text: str, kind: str) -> str:
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
        fast: bool = False,
        style_image: str | None = None,
        style_image_scale: float = STYLE_IMAGE_SCALE,
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
            fast: true for the fast mode: the server's distillation LoRA with its own steps and guidance in place of steps and guidance_scale. Needs a fast LoRA on the server.
            style_image: optional picture whose look the images take on (an IP-Adapter); null for none. Needs the style adapter on the server.
            style_image_scale: how strongly the style image steers, 0-1.
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
            fast=fast,
            style_image=style_image or None,
            style_image_scale=style_image_scale,
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
        mode: str = QUALITY,
        style_image: str | None = None,
        style_image_scale: float = STYLE_IMAGE_SCALE,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's way)
    ):
        """:meth:`generate` from the page: the doodle is the Sketchpad's drawing, when
        enabled; ``mode`` the Quality/Fast choice; the style image as uploaded."""
        return await self.generate(
            photos, prompt, negative_prompt, style, aspect_ratio, steps, style_strength,
            num_outputs, guidance_scale, seed, randomize_seed,
            self.read_doodle(doodle_enabled, sketch), adapter_conditioning_scale,
            adapter_conditioning_factor, mode == FAST, style_image, style_image_scale,
            progress=progress,
        )  # fmt: skip

    def mode_note(self, mode: str) -> str:
        """What the chosen mode does and trades, under the Quality/Fast choice."""
        fast_mode = getattr(self.service, "fast_mode", None)
        if fast_mode is None:
            return ""
        if mode == FAST:
            if getattr(self.service, "aot_compiled", False):
                return fast_mode.trade() + " " + AOT_FAST_NOTE
            return fast_mode.trade()
        steps = ui_steps(self.settings)
        return (
            f"Quality: {steps} steps (or the Steps slider's), guidance "
            f"{default('guidance_scale'):g}, the negative prompt used. Fast mode: "
            f"{fast_mode.steps} steps."
        )

    def mode_changed(
        self,
        mode: str,
        steps_now: Any = None,
        guidance_now: Any = None,
        kept: tuple[Any, Any] | None = None,
    ):
        """Quality/Fast chosen: the Steps and Guidance sliders show the mode's values (locked
        in fast mode, where the mode sets them), the note says what the mode trades.

        The quality values the user had (``steps_now``, ``guidance_now``) are kept aside on the
        way to Fast and come back on the way to Quality (``kept``, a ``gr.State``; the
        defaults when there are none, e.g. after loading a fast PNG). Returns the sliders,
        the note and what to keep."""
        fast_mode = getattr(self.service, "fast_mode", None)
        if mode == FAST and fast_mode is not None:
            steps, guidance, free = fast_mode.steps, fast_mode.guidance_scale, False
            kept = (steps_now, guidance_now) if steps_now is not None else kept
        else:
            steps, guidance = kept or (None, None)
            steps = ui_steps(self.settings) if steps is None else steps
            guidance = default("guidance_scale") if guidance is None else guidance
            free, kept = True, None
        return (
            _slider_to(steps, *self.ui_range("steps"), interactive=free),
            _slider_to(guidance, *self.ui_range("guidance_scale"), interactive=free),
            self.mode_note(mode),
            kept,
        )

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
        """The seed box is disabled while Randomize is on; Reuse's "✓ Seed reused" is taken
        back then, since the next run will not use it."""
        reuse = gr.update(value="Reuse this seed") if randomize else gr.update()
        return gr.update(interactive=not randomize), reuse

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
            # Every photo stays in the view (a shorter view would come back as the new photo
            # list and hide the error); those over the limit or not readable are marked, the
            # others wait for the faces check. The message says what to do.
            items = []
            for i, path in enumerate(photos, start=1):
                if i > n_max:
                    items.append((path, f"{i} ✗ over the limit of {n_max}"))
                    continue
                try:
                    self.service.load_photos([path])
                    items.append((path, f"{i} · not checked yet"))
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
        """Restore the form from one of our PNGs (its JSON text chunk): one value per
        /generate parameter the PNG records (params.py's ``meta_key``), in the API's order,
        with Randomize off and the Advanced options open after ``randomize_seed``; then the
        doodle and style-image sections, opened where the picture used them (and this server
        has them), so that what the warning asks to add again is in view."""
        if not path:
            return [gr.update()] * len(SETTINGS_OUTPUTS)
        try:
            meta = metadata.read_metadata(path)
        except PhotoMakerInputError as err:
            raise user_error(err) from None
        gr.Info(f"Settings of {Path(path).name} loaded: seed {meta.get('seed')}, Randomize off.")
        if meta.get("style_image"):
            gr.Warning(
                "That picture was made with a style image, which PNGs do not keep: add it again."
            )
        if meta.get("doodle"):
            gr.Warning(
                "That picture was made with a doodle, which PNGs do not keep: draw it again."
            )
        if meta.get("mode") == "fast" and not getattr(self.service, "fast_available", False):
            gr.Warning("That picture was made in fast mode, which this server does not have.")
        fast = meta.get("mode") == "fast" and getattr(self.service, "fast_available", False)
        doodle = meta.get("doodle") and getattr(self.service, "doodle_available", False)
        style = meta.get("style_image") and getattr(self.service, "style_image_available", False)
        values = []
        for name in SETTINGS_OUTPUTS:
            if name == "advanced":
                values.append(gr.update(open=True))
            elif name == "enable_doodle":
                values.append(gr.update(value=True) if doodle else gr.update())
            elif name == "style_image_area":
                values.append(gr.update(open=True) if style else gr.update())
            else:
                value = self._setting_from(BY_NAME[name], meta)
                if name in ("steps", "guidance_scale") and isinstance(value, dict):
                    value["interactive"] = not fast  # the fast mode sets them
                values.append(value)
        return tuple(values)

    @staticmethod
    def settings_outputs() -> tuple[str, ...]:
        """The names of what :meth:`load_settings` returns, in its order."""
        return SETTINGS_OUTPUTS

    def _setting_from(self, param, meta: dict[str, Any]):
        """The form value of ``param`` from the PNG's metadata ``meta``."""
        value = meta.get(param.meta_key) if param.meta_key else None
        if param.name == "randomize_seed":
            return False
        if param.name == "seed":
            return gr.update(value=value, interactive=True)
        if param.name == "fast":  # PNGs from before the fast mode were made in quality mode
            available = getattr(self.service, "fast_available", False)
            return FAST if value == "fast" and available else QUALITY
        if param.kind == "text":
            return value or ""
        if param.name == "style":
            if value not in self.service.style_names:
                gr.Warning(f"The style {value!r} is not on this server; kept the current style.")
                return gr.update()
            return value
        if param.kind == "choice":
            return value if value in param.choices else gr.update()
        return _slider_to(value, *self.ui_range(param.name))

    def ui_range(self, name: str) -> tuple[float, float]:
        """The slider's range in the UI (params.py), or the API's for steps in tiny mode."""
        if self.settings.tiny and name == "steps":
            return BY_NAME[name].api_range
        return BY_NAME[name].ui_range

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
    try:
        steps, at = int(steps), merge_step(float(style_strength), int(steps))
    except (TypeError, ValueError):
        return ""
    # Steps 0..at (from 0) see the text only, as in the official pipeline: the identity's
    # first step, counted from 1 as the page counts, is at + 2.
    first = at + 2
    if first >= steps:
        when = "never comes in" if first > steps else "comes in only at the last step"
        return (
            f"⚠ With these values the identity {when} ({steps} steps, the first {min(at + 1, steps)} "
            "text only): lower the style strength or add steps."
        )
    return f"The identity comes in at step {first} of {steps}."


def example_caption(photos: list[str], prompt: str, style: str) -> str:
    return f"{style} · {len(photos)} photo{'s' if len(photos) > 1 else ''}"


def _why_not(kind: str) -> str:
    return "Add photos to generate" if kind == "empty" else "Fix the photos to generate"


def _slider_to(value: Any, low: float, high: float, **extra: Any):
    """A slider update to ``value``, widening the slider's range when the value (sent through
    the API, or the fast mode's 8 steps) lies outside the UI's normal range."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return gr.update(**extra)
    return gr.update(value=value, minimum=min(low, value), maximum=max(high, value), **extra)


def ui_steps(settings: Settings) -> int:
    """The Steps slider's first value."""
    return default_steps(settings.tiny)


def _log_cancelled_outcome(work) -> None:
    error = work.exception()
    if error is None:
        logger.info("a cancelled generation finished before it saw the cancel")
    elif isinstance(error, GenerationCancelled):
        logger.info("a cancelled generation stopped")
    elif not isinstance(error, PhotoMakerError):
        logger.error("a cancelled generation failed", exc_info=error)


