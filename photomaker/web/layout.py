"""The page: :func:`create_app` lays out the sections (each a small function) and wires the
events to :class:`~photomaker.web.handlers.AppHandlers`. Labels, ranges and defaults of the
/generate parameters come from :mod:`photomaker.params`.

One public API endpoint, ``/generate`` (:mod:`.api`); every other event is private.
"""

from __future__ import annotations

import warnings
from typing import Any

import gradio as gr

from ..errors import PhotoMakerInputError
from ..params import ASPECT_RATIOS, BY_NAME
from ..service import PhotoMakerService
from ..settings import Settings, on_zerogpu
from . import api, compat
from .handlers import (
    FAST,
    QUALITY,
    AppHandlers,
    _why_not,
    example_caption,
    merge_hint,
    status_html,
    ui_steps,
)
from .look import css, static_text, theme, tips

#: What the photo uploads accept: any image the browser offers, plus iPhone (HEIC/HEIF) and
#: AVIF files by extension, which some systems do not file under image/*.
IMAGE_FILE_TYPES = ["image", ".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif"]
#: Uploaded face photos and results are deleted after an hour (checked every 30 minutes).
DELETE_CACHE = (1800, 3600)

Page = dict[str, Any]  # the components, by name (the /generate parameters' names where one)


def check_settings(settings: Settings) -> None:
    """Refuse settings this machine cannot run, before anything loads."""
    if settings.compile and on_zerogpu():
        raise PhotoMakerInputError(
            "--compile (PHOTOMAKER_COMPILE) is not supported on ZeroGPU: ZeroGPU does not run "
            "torch.compile. Unset it on this Space; PHOTOMAKER_AOT=1 compiles the UNet ahead "
            "of time instead, which ZeroGPU runs."
        )


def ui_default(name: str, settings: Settings) -> Any:
    """A component's first value: the table's default (fewer steps in tiny mode)."""
    if name == "steps":
        return ui_steps(settings)
    return BY_NAME[name].default


def slider(name: str, handlers: AppHandlers, **extra: Any) -> gr.Slider:
    """The slider of /generate parameter ``name``, from the table."""
    param = BY_NAME[name]
    low, high = handlers.ui_range(name)
    return gr.Slider(
        label=param.ui_label or param.label,
        minimum=low,
        maximum=high,
        step=param.step,
        value=ui_default(name, handlers.settings),
        info=param.info or None,
        **({"precision": 0} if param.kind == "integer" else {}),
        **extra,
    )


def create_app(settings: Settings, service: PhotoMakerService | None = None) -> gr.Blocks:
    """The whole app for ``settings`` (the service is built from them unless given)."""
    check_settings(settings)
    if service is None:
        from ..loading import build_service

        service = build_service(settings)
    # Step-by-step progress in the UI comes from the pipeline's tqdm bar (track_tqdm).
    pipe = getattr(service, "pipe", None)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=False, leave=False)
    handlers = AppHandlers(service, settings)
    # css/theme on the Blocks: Gradio 6 moved them to launch() but still honours them here as
    # launch()'s defaults, so they apply however the app is launched (`python app.py`,
    # `gradio app.py`, a Space, an embedding app's demo.launch()). The warning says only that.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*moved from the Blocks constructor.*")
        demo = compat.blocks_class()(
            title="PhotoMaker", css=css(), theme=theme(), delete_cache=DELETE_CACHE
        )
    with demo:
        # quality_values: the Steps and Guidance set in Quality mode, kept while Fast holds them
        page: Page = {"usable": gr.State(False), "quality_values": gr.State(None)}
        header(service, settings)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                photo_section(page, service, settings)
                doodle_section(page, handlers, service)
                style_image_section(page, handlers, service)
                mode_section(page, handlers, service)
                generate_row(page)
            with gr.Column(scale=1, min_width=320, elem_id="results"):
                results_section(page)
        advanced_section(page, handlers)
        examples_section(page, handlers)
        with gr.Accordion("Tips", open=False):
            gr.Markdown(tips(service, settings))
        api_endpoint(demo, page, handlers, service, settings)
        wire_generate(page, handlers)
        wire_form(page, handlers)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    return demo


# --------------------------------------------------------------------------- sections


def header(service: PhotoMakerService, settings: Settings) -> None:
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


def photo_section(page: Page, service: PhotoMakerService, settings: Settings) -> None:
    """The photos (a hidden upload list and the preview people edit), status, prompt, style."""
    word = service.trigger_word
    page["photos"] = gr.File(
        label="Photos",
        file_count="multiple",
        file_types=IMAGE_FILE_TYPES,
        type="filepath",
        visible="hidden",
        elem_id="photos",
    )
    page["photo_view"] = gr.Gallery(
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
    page["photo_status"] = gr.HTML(
        status_html(f"Add 1–{settings.max_photos} photos of the person to start.", "empty"),
        elem_id="photo-status",
    )
    page["prompt"] = gr.Textbox(
        label=BY_NAME["prompt"].label,
        info=f"The class word, then the trigger word '{word}': "
        f"'a photo of a man {word} in the snow'. Enter generates, Shift+Enter adds a line.",
        placeholder=f"a photo of a woman {word} wearing a red hat",
        lines=1,
        max_lines=6,
        elem_id="prompt",
    )
    with gr.Row():
        page["style"] = gr.Dropdown(
            label=BY_NAME["style"].label,
            choices=service.style_names,
            value=BY_NAME["style"].default,
            elem_id="style",
            min_width=220,
        )
        page["aspect_ratio"] = gr.Dropdown(
            label=BY_NAME["aspect_ratio"].label
            + (" (tiny mode renders at 64 px)" if settings.tiny else ""),
            choices=list(ASPECT_RATIOS),
            value=BY_NAME["aspect_ratio"].default,
            elem_id="aspect-ratio",
            min_width=220,
        )


def doodle_section(page: Page, handlers: AppHandlers, service: PhotoMakerService) -> None:
    """The doodle: a Sketchpad and its two sliders, behind a checkbox (when the server has
    the adapter)."""
    page["enable_doodle"] = gr.Checkbox(
        label="Enable doodle",
        value=False,
        visible=bool(getattr(service, "doodle_available", False)),
        info="Sketch a rough layout (pose, framing) for the picture to follow.",
        elem_id="enable-doodle",
    )
    with gr.Column(visible=False, elem_id="doodle-area") as page["doodle_area"]:
        page["sketchpad"] = gr.Sketchpad(
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
            page["adapter_conditioning_scale"] = slider(
                "adapter_conditioning_scale", handlers, elem_id="doodle-strength"
            )
            page["adapter_conditioning_factor"] = slider(
                "adapter_conditioning_factor", handlers, elem_id="doodle-factor"
            )


def style_image_section(page: Page, handlers: AppHandlers, service: PhotoMakerService) -> None:
    """An optional style image and its strength (when the server has the IP-Adapter)."""
    available = bool(getattr(service, "style_image_available", False))
    with gr.Accordion(
        "Style image (optional)", open=False, visible=available, elem_id="style-image-area"
    ) as page["style_image_area"]:
        page["style_image"] = gr.Image(
            label=BY_NAME["style_image"].label + ": the pictures take on its look",
            type="filepath",
            sources=["upload", "clipboard"],
            height=220,
            elem_id="style-image",
        )
        page["style_image_scale"] = slider(
            "style_image_scale", handlers, elem_id="style-image-scale"
        )


def mode_section(page: Page, handlers: AppHandlers, service: PhotoMakerService) -> None:
    """Quality or Fast (when the server has a fast LoRA), and what the chosen mode trades."""
    available = bool(getattr(service, "fast_available", False))
    param = BY_NAME["fast"]
    page["fast"] = gr.Radio(
        choices=[QUALITY, FAST],
        value=QUALITY,
        label=param.ui_label or param.label,
        info=param.info,
        visible=available,
        elem_id="mode",
    )
    page["mode_note"] = gr.Markdown(
        handlers.mode_note(QUALITY), visible=available, elem_id="mode-note"
    )


def generate_row(page: Page) -> None:
    with gr.Row(elem_id="generate-row"):
        page["submit"] = gr.Button(
            _why_not("empty"), variant="primary", interactive=False, elem_id="generate"
        )
        page["stop"] = gr.Button("Stop", variant="stop", visible=False, elem_id="stop")


def results_section(page: Page) -> None:
    """The gallery, the seed used (and reuse), the zip, and settings from a PNG."""
    page["gallery"] = gr.Gallery(
        label="Results",
        columns=2,
        height="auto",
        object_fit="contain",
        interactive=False,
        buttons=["download", "fullscreen"],
        elem_id="gallery",
    )
    # The API's seed output; Gradio's Number shows 0 for "no value", so people see the seed
    # in a text box that stays empty until the first result.
    page["seed_used"] = gr.Number(label="Seed used", value=None, precision=0, visible="hidden")
    with gr.Row(equal_height=False, elem_id="seed-row"):
        page["seed_shown"] = gr.Textbox(
            label="Seed used",
            placeholder="none yet",
            interactive=False,
            max_lines=1,
            elem_id="seed-used",
            min_width=140,
        )
        page["reuse"] = gr.Button(
            "Reuse this seed",
            size="sm",
            interactive=False,
            scale=0,
            min_width=150,
            elem_id="reuse-seed",
        )
    page["download"] = gr.DownloadButton(
        "Download all (.zip)", visible=False, size="sm", elem_id="download-all"
    )
    page["settings_file"] = gr.File(
        label="Load settings from image (drop a PhotoMaker PNG)",
        file_types=[".png"],
        type="filepath",
        height=120,
        elem_id="load-settings",
    )


def advanced_section(page: Page, handlers: AppHandlers) -> None:
    settings = handlers.settings
    with gr.Accordion("Advanced options", open=False, elem_id="advanced") as page["advanced"]:
        page["negative_prompt"] = gr.Textbox(
            label=BY_NAME["negative_prompt"].label,
            value=BY_NAME["negative_prompt"].default,
            lines=2,
            max_lines=6,
        )
        with gr.Row():
            page["steps"] = slider("steps", handlers, elem_id="steps")
            page["style_strength"] = slider("style_strength", handlers)
        page["merge_note"] = gr.Markdown(
            merge_hint(ui_default("steps", settings), ui_default("style_strength", settings)),
            elem_id="merge-hint",
        )
        with gr.Row():
            page["num_outputs"] = slider("num_outputs", handlers, elem_id="num-outputs")
            page["guidance_scale"] = slider("guidance_scale", handlers)
        with gr.Row():
            seed = BY_NAME["seed"]
            page["seed"] = gr.Number(
                label=seed.label,
                value=seed.default,
                precision=0,
                minimum=seed.low,
                maximum=seed.high,
                interactive=False,
                info=seed.info,
                elem_id="seed",
            )
            page["randomize_seed"] = gr.Checkbox(
                label=BY_NAME["randomize_seed"].label,
                value=BY_NAME["randomize_seed"].default,
                elem_id="randomize",
            )


def examples_section(page: Page, handlers: AppHandlers) -> None:
    examples = handlers.examples()
    if not examples:
        return
    page["examples"] = gr.Gallery(
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


# --------------------------------------------------------------------------- events


def api_endpoint(
    demo: gr.Blocks,
    page: Page,
    handlers: AppHandlers,
    service: PhotoMakerService,
    settings: Settings,
) -> None:
    """``/generate``: hidden inputs from the table, checked in the handler (:mod:`.api`)."""
    doodle_on = bool(getattr(service, "doodle_available", False))
    notes = {} if doodle_on else {"doodle": " The doodle is off on this server: refused."}
    if not getattr(service, "style_image_available", False):
        notes["style_image"] = " The style image is off on this server: refused."
    mode = getattr(service, "fast_mode", None)
    notes["fast"] = (
        " The fast mode is off on this server: true is refused."
        if mode is None
        else f" On this server: {mode.name}, {mode.steps} steps, guidance {mode.guidance_scale:g}."
    )
    inputs = api.api_inputs(
        service.style_names,
        service.trigger_word,
        defaults={"steps": ui_default("steps", settings)},
        notes=notes,
    )
    trigger = gr.Button(visible=False, elem_id="api-generate")
    trigger.click(
        fn=api.endpoint(handlers.generate, service.style_names),
        inputs=inputs,
        outputs=[page["gallery"], page["seed_used"]],
        api_name="generate",
        preprocess=False,
        concurrency_limit=1,
        concurrency_id="gpu",
    )
    if isinstance(demo, compat.PhotoMakerBlocks):
        demo.request_checks["generate"] = api.check_request_files


def wire_generate(page: Page, handlers: AppHandlers) -> None:
    """Generate (button or Enter) and Stop, from the page."""
    triggers = [page["submit"].click, page["prompt"].submit]
    gr.on(triggers, fn=None, js=static_text("scroll_to_results.js"), api_visibility="private")
    gr.on(
        triggers,
        handlers.running,
        None,
        [page["submit"], page["stop"]],
        queue=False,
        api_visibility="private",
        show_progress="hidden",
    )
    names = ["photos", "prompt", "negative_prompt", "style", "aspect_ratio", "steps",
             "style_strength", "num_outputs", "guidance_scale", "seed", "randomize_seed",
             "enable_doodle", "sketchpad", "adapter_conditioning_scale",
             "adapter_conditioning_factor", "fast", "style_image", "style_image_scale"]  # fmt: skip
    # The page sends the Sketchpad (when the doodle is enabled); both this and /generate
    # wait in the one GPU queue.
    run = gr.on(
        triggers,
        fn=handlers.generate_from_page,
        inputs=[page[name] for name in names],
        outputs=[page["gallery"], page["seed_used"]],
        api_visibility="private",
        concurrency_limit=1,
        concurrency_id="gpu",
        trigger_mode="once",
    )
    # .then() runs after a success only in Gradio 6.31's page; .failure() after an error.
    for after in (run.then, run.failure):
        after(
            handlers.finished,
            [page["gallery"], page["seed_used"], page["usable"]],
            [page[n] for n in ("submit", "stop", "seed_shown", "reuse", "download")],
            api_visibility="private",
            show_progress="hidden",
        )
    page["stop"].click(
        handlers.stopped,
        page["usable"],
        [page["submit"], page["stop"]],
        cancels=[run],
        api_visibility="private",
    )


def wire_form(page: Page, handlers: AppHandlers) -> None:
    """The form's own events: photos, seed, merge hint, settings from a PNG, doodle, mode,
    examples."""
    private = {"api_visibility": "private"}
    page["photo_view"].change(
        handlers.photos_from_view, [page["photo_view"], page["photos"]], page["photos"],
        show_progress="hidden", queue=False, **private,
    )  # fmt: skip
    page["photos"].change(
        handlers.preview_photos, page["photos"],
        [page["photo_view"], page["photo_status"], page["submit"], page["usable"]],
        concurrency_limit=4, concurrency_id="preview", show_progress="minimal", **private,
    )  # fmt: skip
    page["reuse"].click(
        handlers.reuse_seed, page["seed_shown"],
        [page["seed"], page["randomize_seed"], page["advanced"], page["reuse"]], **private,
    )  # fmt: skip
    gr.on(
        [page["steps"].change, page["style_strength"].change], merge_hint,
        [page["steps"], page["style_strength"]], page["merge_note"],
        show_progress="hidden", queue=False, **private,
    )  # fmt: skip
    page["randomize_seed"].change(
        handlers.randomize_changed, page["randomize_seed"], [page["seed"], page["reuse"]],
        show_progress="hidden", **private,
    )  # fmt: skip
    page["settings_file"].upload(
        handlers.load_settings, page["settings_file"],
        [page[name] for name in handlers.settings_outputs()], **private,
    )  # fmt: skip
    page["fast"].input(
        handlers.mode_changed,
        [page["fast"], page["steps"], page["guidance_scale"], page["quality_values"]],
        [page["steps"], page["guidance_scale"], page["mode_note"], page["quality_values"]],
        show_progress="hidden", queue=False, **private,
    )  # fmt: skip
    page["fast"].change(
        handlers.mode_note, page["fast"], page["mode_note"],
        show_progress="hidden", queue=False, **private,
    )  # fmt: skip
    page["enable_doodle"].change(
        handlers.doodle_toggled, page["enable_doodle"], page["doodle_area"],
        js=static_text("pick_the_brush.js"), show_progress="hidden", queue=False, **private,
    )  # fmt: skip
    if "examples" in page:
        page["examples"].select(
            handlers.load_example, None, [page["photos"], page["prompt"], page["style"]],
            js=static_text("scroll_to_form.js"), **private,
        )  # fmt: skip


def launch(demo: gr.Blocks, settings: Settings) -> None:
    demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        share=settings.share,
        css=css(),
        theme=theme(),
    )
