"""Orchestration: :class:`PhotoMakerService` validates, prepares the job on the CPU, runs
it on the GPU (:mod:`.runtime`), caches ID encodings and scores likeness."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import PhotoMakerInputError
from ..fast import generation_mode
from ..images import DEFAULT_MAX_MEGAPIXELS, image_digest, to_rgb
from ..params import ASPECT_RATIOS
from ..style_image import style_image_mode
from ..styles import StyleBook, default_styles
from . import runtime
from .runtime import _interrupt_when_set, _raise_if_cancelled, gpu_turn
from .types import GenerationJob, GenerationRequest, GenerationResult, JobOutput, PhotoAnalysis
from .validation import (
    _no_face_message,
    check_request,
    log_head,
    merge_step,
    merge_warning,
    size_for,
)

logger = logging.getLogger(__name__)

CROP_MARGIN = 0.5
#: The longer side the style image is kept at (the image encoder reads 224 px).
STYLE_IMAGE_SIDE = 448


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
        from ..pipeline_adapter import PhotoMakerStableDiffusionXLAdapterPipeline

        return (
            isinstance(self.pipe, PhotoMakerStableDiffusionXLAdapterPipeline)
            and getattr(self.pipe, "adapter", None) is not None
        )

    @property
    def controlnet_available(self) -> bool:
        """True when the pipeline has a ControlNet to read a control image with."""
        from ..pipeline_controlnet import PhotoMakerStableDiffusionXLControlNetPipeline

        return (
            isinstance(self.pipe, PhotoMakerStableDiffusionXLControlNetPipeline)
            and getattr(self.pipe, "controlnet", None) is not None
        )

    @property
    def fast_mode(self) -> Any:
        """The fast mode the pipeline carries (:class:`photomaker.fast.FastMode`: its LoRA,
        scheduler, steps and guidance), or ``None`` when the server has no fast LoRA."""
        from ..fast import fast_mode_of

        return fast_mode_of(self.pipe) if hasattr(self.pipe, "unet") else None

    @property
    def fast_available(self) -> bool:
        return self.fast_mode is not None

    @property
    def aot_compiled(self) -> bool:
        """True when the UNet's ahead-of-time compiled forward is in place (``--aot``, and the
        compile worked): it serves quality-mode calls; fast mode runs the eager UNet."""
        from ..aot import compiled_forward_of

        return compiled_forward_of(self.pipe) is not None

    @property
    def style_image_available(self) -> bool:
        """True when the pipeline has an IP-Adapter to read a style image with."""
        from ..style_image import style_adapter_of

        return style_adapter_of(self.pipe) is not None

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
        from ..images import load_id_images

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
        from ..images import load_image

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
        from ..pipeline_adapter import doodle_image

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

    def prepare_style_image(self, request: GenerationRequest) -> Image.Image | None:
        """The style image as a small RGB picture (the IP-Adapter's image encoder reads 224
        px; the job stays small), or ``None``. Refused when the server has no IP-Adapter."""
        if request.style_image is None:
            return None
        if not self.style_image_available:
            raise PhotoMakerInputError(
                "The style image is off on this server (--style-adapter none, or an IP-Adapter "
                "that could not be loaded): send the request without a style image."
            )
        image = self.load_drawing(request.style_image, "Style image")
        if image is None:
            return None
        image = to_rgb(image)
        image.thumbnail((STYLE_IMAGE_SIDE, STYLE_IMAGE_SIDE), Image.Resampling.LANCZOS)
        return image

    # -- validation and preparation -----------------------------------------------------

    def check_request(self, request: GenerationRequest) -> dict[str, Any]:
        """Numbers, style and aspect ratio: cheap checks, no photos loaded yet.

        In fast mode the steps and guidance become the mode's (``values["fast_mode"]``),
        whatever the request said: the distillation LoRA is made for them. A server without
        a fast LoRA refuses ``fast=True`` here, before any photo is read."""
        values = check_request(request, self.styles, tiny=self.tiny, trigger_word=self.trigger_word)
        values["fast_mode"] = None
        if values["fast"]:
            mode = self.fast_mode
            if mode is None:
                raise PhotoMakerInputError(
                    "Fast mode (fast) is off on this server: it has no fast LoRA (the setting "
                    "--fast-lora / PHOTOMAKER_FAST_LORA is none, or its default LoRA could not "
                    "be loaded). Send fast=false, or start the server with --fast-lora naming a "
                    "distillation LoRA (hub id, owner/repo/file.safetensors, folder or file)."
                )
            values["fast_mode"] = mode
            values["steps"], values["guidance_scale"] = mode.steps, mode.guidance_scale
        return values

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
        style_image = self.prepare_style_image(request)
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
            from ..faces import keep_photos_with_faces

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
            fast=values["fast"],
            style_image=style_image,
            style_image_scale=values["style_image_scale"],
        )
        context = {
            "fast_mode": values["fast_mode"],
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

    def server_errors(self, stage: str) -> contextlib.AbstractContextManager[None]:
        """:func:`.runtime.server_errors` for this service's pipeline."""
        return runtime.server_errors(stage, self.pipe)

    def run_job(self, job: GenerationJob, cancel: threading.Event | None = None) -> JobOutput:
        """Encode the ID photos (unless cached) and denoise. Same job -> same images.

        One job at a time on this pipeline (:func:`.runtime.gpu_lock`). With ``cancel`` set (from any thread), a job
        still waiting leaves at once and a running one stops after its current step; both
        raise :class:`GenerationCancelled`. Failures are :class:`PhotoMakerServerError`."""
        with gpu_turn(self.pipe, cancel):
            _raise_if_cancelled(cancel)
            return runtime.in_gpu_thread(self.pipe, self._run_locked, job, cancel)

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
        # Fast mode switches the pipeline (adapter on, the mode's scheduler) for this call
        # only, under the lock; quality is put back on the way out, also after an error.
        with (
            self.server_errors("generating the images"),
            generation_mode(pipe, job.fast),
            style_image_mode(pipe, job.style_image, job.style_image_scale) as style,
        ):
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
                **style,
            )
        _raise_if_cancelled(cancel)  # interrupted: the images are unfinished, none are shown
        t2 = time.perf_counter()
        embeds = id_image_embeds.detach().to("cpu") if torch.is_tensor(id_image_embeds) else None
        return JobOutput(list(output.images), embeds, {"encode": t1 - t0, "denoise": t2 - t1})

    def estimate_seconds(self, job: GenerationJob) -> int:
        """ZeroGPU's ``duration`` for this job, from its FLOPs: see
        :func:`photomaker.zerogpu.gpu_duration`."""
        from ..zerogpu import gpu_duration

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
        from ..faces import likeness

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
        function) must end in :meth:`run_job`, which holds the pipeline's lock: so two jobs
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
            "generated %d image(s) %dx%d, %s, %d steps, seed %d, in %.1fs",
            len(output.images),
            job.width,
            job.height,
            "fast" if job.fast else "quality",
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
            fast_mode=context["fast_mode"].record() if context["fast_mode"] else None,
            style_image=job.style_image is not None,
            style_image_scale=job.style_image_scale if job.style_image is not None else None,
        )
