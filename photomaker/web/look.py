"""How the app looks: the theme, the CSS and the small scripts (static files shipped with
the package, :data:`STATIC`), and the tips text."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import gradio as gr

from ..service import PhotoMakerService
from ..settings import Settings

STATIC = Path(__file__).resolve().parent / "static"
#: The stylesheets, in order: the layout and colours, then the error toasts' titles (the one
#: rule that leans on Gradio's page markup; see toast.css).
CSS_FILES = ("app.css", "toast.css")


@cache
def static_text(name: str) -> str:
    """A file of :data:`STATIC` (CSS or a script for an event's ``js=``)."""
    return (STATIC / name).read_text(encoding="utf-8")


def css() -> str:
    return "\n".join(static_text(name) for name in CSS_FILES)


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
        checkbox_label_background_fill_selected="*primary_700",  # white on it: Quality/Fast
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
    mode = getattr(service, "fast_mode", None)
    fast = (
        f"\n- **Fast** runs {mode.name} ({mode.steps} steps, guidance {mode.guidance_scale:g}) "
        "in place of the Steps and Guidance sliders: a draft in a fraction of the time, usually "
        "with less detail and a weaker likeness; the style strength still sets where the "
        "identity comes in (a step or two)."
        if mode is not None
        else ""
    )
    style = (
        "\n- **Style image** (optional): the pictures take on its colours, medium and mood; "
        "the strength says how much."
        if getattr(service, "style_image_available", False)
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
  or *Load settings from image* with one of the PNGs you downloaded (they carry their settings).{doodle}{style}{fast}
- Each caption ends with the picture's **likeness** to the person: the cosine similarity of
  face embeddings (ArcFace), about 0.4–0.7 for a good likeness; "no face found" when the
  picture shows no face.
"""
