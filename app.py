"""PhotoMaker web app (Gradio Blocks): the UI only.

Everything real lives in :mod:`photomaker.service`; this file lays out components and wires
events. The pipeline is built once, at import, from :class:`~photomaker.settings.Settings`
(command-line flags when run as ``python app.py ...``, ``PHOTOMAKER_*`` environment
variables always), which is what Hugging Face ZeroGPU Spaces expect.

One public API endpoint, ``/generate``; every other event is private.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import gradio as gr
import spaces

from photomaker.errors import PhotoMakerInputError
from photomaker.loading import build_service
from photomaker.service import (
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_NEGATIVE_PROMPT,
    LIMITS,
    MAX_SEED,
    GenerationJob,
    GenerationRequest,
    PhotoMakerService,
)
from photomaker.settings import Settings, build_parser, on_zerogpu
from photomaker.styles import DEFAULT_STYLE

logger = logging.getLogger("photomaker.app")

ASSETS = Path(__file__).resolve().parent / "assets"


def _settings() -> Settings:
    # Flags only when started as a script: `import app` (tests, Spaces' reloader) reads the
    # environment alone, never pytest's own argv.
    if __name__ == "__main__":
        return Settings.from_args(sys.argv[1:], parser=build_parser(prog="app.py"))
    return Settings.from_env()


def named(component):
    """Gradio checks ranges and choices itself; make its message name the setting, since the
    API can send any value. (Per instance: a Component subclass would make Gradio write an
    ``app.pyi`` stub next to this file.)"""
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except gr.Error as err:
            raise gr.Error(
                f"{component.label}: {err.message}", title="Please check your input"
            ) from None

    component.preprocess = preprocess
    return component


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
SETTINGS = _settings()
SERVICE: PhotoMakerService = build_service(SETTINGS)
# Step-by-step progress in the UI comes from the pipeline's tqdm bar (track_tqdm).
SERVICE.pipe.set_progress_bar_config(disable=False, leave=False)


# --------------------------------------------------------------------------- GPU part


def _gpu_seconds(job: GenerationJob, *args, **kwargs) -> int:
    """ZeroGPU's duration for this job: from steps × outputs × resolution."""
    return SERVICE.estimate_seconds(job)


@spaces.GPU(duration=_gpu_seconds)
def run_on_gpu(job: GenerationJob):
    """Encode the ID photos and denoise; on ZeroGPU this runs with a GPU attached."""
    return SERVICE.run_job(job)


# --------------------------------------------------------------------------- events


def generate(
    photos: list[str] | None,
    prompt: str,
    negative_prompt: str,
    style: str,
    aspect_ratio: str,
    steps: int,
    style_strength: float,
    num_outputs: int,
    guidance_scale: float,
    seed: int,
    randomize_seed: bool,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's way)
):
    """Generate pictures of the person in `photos`.

    Args:
        photos: one or more photos of the person (image files).
        prompt: what to make; the class word must be followed by the trigger word, e.g. "a photo of a woman img in a garden".
        negative_prompt: what to avoid.
        style: a style template name.
        aspect_ratio: an aspect-ratio preset name.
        steps: sampling steps (1-100).
        style_strength: percent of steps before the identity is merged in (0-100); higher keeps more of the text and style.
        num_outputs: how many images (1-4).
        guidance_scale: classifier-free guidance scale (0-20).
        seed: the random seed, used when randomize_seed is false.
        randomize_seed: pick a new random seed.
    Returns:
        The images (with captions) and the seed used.
    """
    request = GenerationRequest(
        photos=photos or [],
        prompt=prompt,
        negative_prompt=negative_prompt,
        style=style,
        aspect_ratio=aspect_ratio,
        steps=steps,
        style_strength=style_strength,
        num_outputs=num_outputs,
        guidance_scale=guidance_scale,
        seed=seed,
        randomize_seed=randomize_seed,
    )
    try:
        result = SERVICE.generate(request, run_job=run_on_gpu)
    except PhotoMakerInputError as err:
        raise gr.Error(str(err), title="Please check your input") from None
    for message in result.messages:
        gr.Warning(message)
    return list(zip(result.images, result.captions, strict=True)), result.seed


def preview_photos(photos: list[str] | None):
    """Show the uploaded photos with each one's face status, before any GPU work."""
    if not photos:
        return gr.update(value=None, visible=False), ""
    try:
        analysis = SERVICE.analyze_photos(photos)
    except PhotoMakerInputError as err:
        return gr.update(value=None, visible=False), f"⚠ {err}"
    items = list(zip(analysis.images, analysis.captions, strict=True))
    n = len(analysis.images)
    if analysis.reports is None:
        status = f"{n} photo{'s' if n > 1 else ''} ready."
    else:
        found = analysis.num_with_face
        status = f"Faces found in {found} of {n} photo{'s' if n > 1 else ''}."
        missing = [r for r in analysis.reports if not (r.found and r.embedding is not None)]
        if missing:
            status = (
                "⚠️ "
                + status
                + " Remove or replace: "
                + ", ".join(f"photo {r.index + 1}" for r in missing)
            )
        elif found:
            status = "✓ " + status
    return gr.update(value=items, visible=True), status


def clear_photos():
    return None, gr.update(value=None, visible=False), ""


def reuse_seed(seed_used):
    if seed_used is None:
        return gr.update(), gr.update()
    return int(seed_used), False


# --------------------------------------------------------------------------- layout

CSS = """
#tiny-banner { background: #fff3cd; color: #664d03; border: 1px solid #ffe69c;
               border-radius: 8px; padding: 10px 14px; font-weight: 600; }
#tiny-banner p { margin: 0; }
#title { text-align: center; }
"""

TIPS = f"""
- Upload **1 to {SETTINGS.max_photos} photos** of one person; several photos from different
  angles give a better likeness. Faces should be clear and not too small
  {"(a status line under the photos says which ones have a face)" if SERVICE.needs_faces else ""}.
- Write the **class word followed by the trigger word `{SERVICE.trigger_word}`**: "a photo of
  a man {SERVICE.trigger_word} ...", "a woman {SERVICE.trigger_word} ...", "a boy
  {SERVICE.trigger_word} ...". Exactly once.
- **Style strength** is the share of the steps that see only your text before the identity
  comes in: raise it (30–50%) for stylized pictures, lower it (15–20%) for likeness.
- For a photo-realistic result keep the *Photographic* style; for painted or drawn looks pick
  another style (the server may also add a style LoRA).
- The same photos, prompt, settings and seed always give the same pictures: untick
  *Randomize seed* and use *Seed used* to reproduce one.
"""


def _examples() -> list[list]:
    photos = sorted(
        p for p in ASSETS.glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}
    )
    if not photos:
        return []
    word = SERVICE.trigger_word
    return [
        [
            [str(p) for p in photos[:2]],
            f"a photo of a woman {word} in a spacesuit, smiling",
            DEFAULT_STYLE,
        ],
        [
            [str(p) for p in photos],
            f"portrait of a woman {word} reading a book in a cafe",
            "Watercolor",
        ],
        [[str(photos[0])], f"a woman {word} as a knight in shining armor", "Fantasy art"],
    ]


def build_demo(service: PhotoMakerService, settings: Settings) -> gr.Blocks:
    word = service.trigger_word
    steps_default = 4 if settings.tiny else 50
    with gr.Blocks(title="PhotoMaker") as demo:
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
        with gr.Row():
            with gr.Column():
                photos = gr.File(
                    label=f"Photos of the person (1–{settings.max_photos})",
                    file_count="multiple",
                    file_types=["image"],
                    type="filepath",
                    elem_id="photos",
                )
                preview = gr.Gallery(
                    label="Your photos",
                    columns=4,
                    height="auto",
                    visible=False,
                    interactive=False,
                    elem_id="preview",
                )
                photo_status = gr.Markdown(elem_id="photo-status")
                clear = gr.Button("Clear photos", size="sm", variant="secondary", elem_id="clear")
                prompt = gr.Textbox(
                    label="Prompt",
                    info=f"Put the trigger word '{word}' right after the class word: "
                    f"'a photo of a man {word} in the snow'.",
                    placeholder=f"a photo of a woman {word} wearing a red hat",
                    lines=2,
                    elem_id="prompt",
                )
                style = named(
                    gr.Dropdown(
                        label="Style",
                        choices=service.style_names,
                        value=DEFAULT_STYLE,
                        elem_id="style",
                    )
                )
                aspect_ratio = named(
                    gr.Dropdown(
                        label="Aspect ratio"
                        + (" (tiny mode renders at 64 px)" if settings.tiny else ""),
                        choices=list(ASPECT_RATIOS),
                        value=DEFAULT_ASPECT_RATIO,
                        elem_id="aspect-ratio",
                    )
                )
                submit = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Accordion("Advanced options", open=False):
                    negative_prompt = gr.Textbox(
                        label="Negative prompt", value=DEFAULT_NEGATIVE_PROMPT, lines=2
                    )
                    steps = named(
                        gr.Slider(
                            label="Steps",
                            minimum=LIMITS["steps"][0],
                            maximum=LIMITS["steps"][1],
                            step=1,
                            value=steps_default,
                            precision=0,
                        )
                    )
                    style_strength = named(
                        gr.Slider(
                            label="Style strength (%)",
                            minimum=LIMITS["style_strength"][0],
                            maximum=LIMITS["style_strength"][1],
                            step=1,
                            value=20,
                            info="Share of the steps before the identity is merged in.",
                        )
                    )
                    num_outputs = named(
                        gr.Slider(
                            label="Number of images",
                            minimum=1,
                            maximum=4,
                            step=1,
                            value=2,
                            precision=0,
                        )
                    )
                    guidance_scale = named(
                        gr.Slider(
                            label="Guidance scale",
                            minimum=LIMITS["guidance_scale"][0],
                            maximum=LIMITS["guidance_scale"][1],
                            step=0.1,
                            value=5.0,
                        )
                    )
                    with gr.Row():
                        seed = named(
                            gr.Number(
                                label="Seed",
                                value=0,
                                precision=0,
                                minimum=0,
                                maximum=MAX_SEED,
                                elem_id="seed",
                            )
                        )
                        randomize_seed = gr.Checkbox(
                            label="Randomize seed", value=True, elem_id="randomize"
                        )
            with gr.Column():
                gallery = gr.Gallery(
                    label="Results",
                    columns=2,
                    height="auto",
                    format="png",
                    elem_id="gallery",
                    interactive=False,
                )
                with gr.Row():
                    seed_used = gr.Number(
                        label="Seed used", interactive=False, precision=0, elem_id="seed-used"
                    )
                    reuse = gr.Button("Reuse this seed", size="sm", elem_id="reuse-seed")
                with gr.Accordion("Tips", open=True):
                    gr.Markdown(TIPS)
        examples = _examples()
        if examples:
            gr.Examples(
                examples=examples,
                inputs=[photos, prompt, style],
                cache_examples=False,
                label="Examples (public-domain photos)",
            )

        inputs = [
            photos,
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
        ]
        gr.on(
            triggers=[submit.click, prompt.submit],
            fn=generate,
            inputs=inputs,
            outputs=[gallery, seed_used],
            api_name="generate",
            concurrency_limit=1,
            concurrency_id="gpu",
        )
        photos.change(
            preview_photos,
            photos,
            [preview, photo_status],
            api_visibility="private",
            concurrency_limit=4,
            concurrency_id="preview",
            show_progress="minimal",
        )
        clear.click(clear_photos, None, [photos, preview, photo_status], api_visibility="private")
        reuse.click(reuse_seed, seed_used, [seed, randomize_seed], api_visibility="private")
    return demo


demo = build_demo(SERVICE, SETTINGS)
demo.queue(max_size=SETTINGS.queue_size, default_concurrency_limit=1)

if __name__ == "__main__":
    if on_zerogpu():
        logger.info("running on ZeroGPU")
    demo.launch(
        server_name=SETTINGS.host,
        server_port=SETTINGS.port,
        share=SETTINGS.share,
        css=CSS,
        theme=gr.themes.Soft(),
    )
