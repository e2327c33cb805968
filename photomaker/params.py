"""Every parameter of a generation, declared once.

:data:`PARAMS` lists the ``/generate`` parameters in the API's order (plus the request fields
only the CLI sets, ``api=False``): name, kind, API range, UI range, default, label, help text
and example. Everything else reads it:

* the service's checks (:func:`photomaker.service.validation.check_request`) and the
  defaults of :class:`~photomaker.service.GenerationRequest`;
* the API's type errors (:func:`check_value`), its descriptions and example values
  (:mod:`photomaker.web.api`);
* the UI components' labels, ranges and defaults, and "Load settings from image"
  (:mod:`photomaker.web`);
* the PNG metadata's keys (:mod:`photomaker.metadata`);
* the README's API table (:func:`markdown_table`; ``tests/test_web.py`` compares them).

Adding a parameter: one :class:`Param` here, in the order the API takes it (new ones last,
``omittable=True`` so that requests written before it run as they did), plus the feature's
own code in the service and the pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import PhotoMakerInputError
from .styles import DEFAULT_STYLE

MAX_SEED = 2**31 - 1
#: Longest prompt and negative prompt accepted, in characters. Only 77 tokens (about 300
#: characters) reach the model; the cap keeps a megabyte of text from being tokenized.
MAX_PROMPT_CHARS = 2000
MAX_NEGATIVE_PROMPT_CHARS = 2000

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

#: Kinds of value: "files" (a list of uploads), "image" (one upload or null), "text",
#: "choice", "integer", "number", "bool".
KINDS = ("files", "image", "text", "choice", "integer", "number", "bool")


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: messages and logs never echo a megabyte."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number_text(value: float) -> str:
    """``2147483647`` rather than ``:g``'s ``2.14748e+09``; ``7.5`` and ``0.05`` as they are."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Param:
    """One parameter: what it is, how it is checked, shown, documented and recorded."""

    name: str
    kind: str
    label: str
    help: str  # one sentence for the API page and the README; ranges are added from low/high
    default: Any = None
    example: Any = None
    low: float | None = None  # the API's range (numbers)
    high: float | None = None
    ui_low: float | None = None  # the UI slider's range, when narrower than the API's
    ui_high: float | None = None
    step: float | None = None  # the UI slider's step
    info: str = ""  # the UI's hint under the component
    ui_label: str | None = None  # the UI's label, when it differs from ``label``
    choices: tuple[str, ...] = ()  # fixed choices ("choice"; the styles come from the server)
    optional: bool = False  # null is accepted (the service says what it needs)
    max_chars: int | None = None  # "text"
    meta_key: str | None = None  # its key in the PNG metadata (None: not recorded)
    api: bool = True  # a /generate parameter (False: a request field for the CLI only)
    omittable: bool = False  # added after the first release: raw requests may leave it out

    @property
    def ui_range(self) -> tuple[float, float]:
        low = self.low if self.ui_low is None else self.ui_low
        high = self.high if self.ui_high is None else self.ui_high
        return low, high

    @property
    def api_range(self) -> tuple[float, float]:
        return self.low, self.high

    def range_text(self) -> str:
        """``1-100`` (and ``UI: 20-100`` when the slider is narrower) for numbers."""
        if self.low is None:
            return ""
        text = f"{number_text(self.low)}-{number_text(self.high)}"
        if self.ui_range != self.api_range:
            low, high = self.ui_range
            text += f" (UI: {number_text(low)}-{number_text(high)})"
        return text

    def description(self) -> str:
        """The API page's and the README's description: the help and the range."""
        span = self.range_text()
        return f"{self.help} {span}." if span else self.help

    def fail(self, problem: str) -> PhotoMakerInputError:
        return PhotoMakerInputError(f"{self.label} ({self.name}): {problem}")


PARAMS: tuple[Param, ...] = (
    Param(
        "photos", "files", "Photos", help="1 to 10 photos of one person (handle_file(path or "
        "URL)); JPEG, PNG, WebP, HEIC/HEIF or AVIF; with V2 each needs a visible face.",
    ),
    Param(
        "prompt", "text", "Prompt", optional=True, max_chars=MAX_PROMPT_CHARS, default="",
        help="The picture to make; the class word then the trigger word, once: "
        "'a photo of a woman img in a garden'.",
        example="a photo of a woman img in a spacesuit, smiling", meta_key="prompt",
    ),
    Param(
        "negative_prompt", "text", "Negative prompt", optional=True,
        max_chars=MAX_NEGATIVE_PROMPT_CHARS, default=DEFAULT_NEGATIVE_PROMPT,
        help="What to avoid.", example=DEFAULT_NEGATIVE_PROMPT, meta_key="negative_prompt",
    ),
    Param(
        "style", "choice", "Style", default=DEFAULT_STYLE, example=DEFAULT_STYLE,
        help="A style name (see the choices).", meta_key="style",
    ),
    Param(
        "aspect_ratio", "choice", "Aspect ratio", default=DEFAULT_ASPECT_RATIO,
        example=DEFAULT_ASPECT_RATIO, choices=tuple(ASPECT_RATIOS),
        help="An aspect-ratio preset name.", meta_key="aspect_ratio",
    ),
    Param(
        "steps", "integer", "Steps", default=50, example=30, low=1, high=100, ui_low=20,
        ui_high=100, step=1, help="Sampling steps, a whole number",
        info="More steps: finer detail, slower.", meta_key="steps",
    ),
    Param(
        "style_strength", "number", "Style strength", default=20.0, example=20, low=0,
        high=100, ui_low=15, ui_high=50, step=1,
        help="Percent of the steps before the identity is merged in; higher keeps more of "
        "the text and style,", info="Share of the steps before the identity is merged in.",
        ui_label="Style strength (%)",
        meta_key="style_strength",
    ),
    Param(
        "num_outputs", "integer", "Number of images", default=2, example=2, low=1, high=4,
        step=1, help="How many images,", meta_key="num_images",
    ),
    Param(
        "guidance_scale", "number", "Guidance scale", default=5.0, example=5.0, low=0.0,
        high=20.0, step=0.1, help="Classifier-free guidance scale,", meta_key="guidance_scale",
    ),
    Param(
        "seed", "integer", "Seed", default=0, example=42, low=0, high=MAX_SEED, optional=True,
        help="The random seed, used when randomize_seed is false;",
        info="Used when Randomize seed is off.", meta_key="seed",
    ),
    Param(
        "randomize_seed", "bool", "Randomize seed", default=True, example=False,
        help="True to pick a new random seed.",
    ),
    Param(
        "doodle", "image", "Doodle", optional=True, omittable=True,
        help="Optional rough drawing that sets the layout (handle_file(path or URL)): dark "
        "strokes on white or transparent, or white on black; stretched to the picture. null "
        "for none; needs the doodle adapter on the server.", meta_key="doodle",
    ),
    Param(
        "adapter_conditioning_scale", "number", "Doodle strength", default=0.7, example=0.7,
        low=0.0, high=1.0, ui_low=0.5, ui_high=1.0, step=0.05, omittable=True,
        help="How strongly the doodle steers the layout (used with a doodle),",
        info="How strongly the doodle steers the layout.",
        meta_key="adapter_conditioning_scale",
    ),
    Param(
        "adapter_conditioning_factor", "number", "Doodle share of steps", default=0.8,
        example=0.8, low=0.0, high=1.0, ui_low=0.5, ui_high=1.0, step=0.05, omittable=True,
        help="Share of the steps, from the first, that the doodle steers,",
        info="Early steps set the layout; later ones, the details.",
        ui_label="Doodle follows for (share of steps)",
        meta_key="adapter_conditioning_factor",
    ),
    Param(
        "fast", "bool", "Fast mode", default=False, example=False, omittable=True,
        help="True for the fast mode: a few-step distillation LoRA (SDXL-Lightning 8-step by "
        "default) whose own steps and guidance replace the request's steps and "
        "guidance_scale (8 and 0: the negative prompt then has no effect); the style "
        "strength still sets where the identity comes in, and the PNG records the steps and "
        "guidance used. Usually less detail and a weaker likeness than false (quality). "
        "Needs a fast LoRA on the server (--fast-lora).",
        info="Fast: a few steps with a distillation LoRA; quicker, usually less detail.",
        ui_label="Mode", meta_key="mode",
    ),
    Param(
        "style_image", "image", "Style image", optional=True, omittable=True,
        help="Optional picture whose look (colours, medium, mood) the images take on, through "
        "an IP-Adapter (handle_file(path or URL)); null for none. Needs the style adapter on "
        "the server (--style-adapter).", meta_key="style_image",
    ),
    Param(
        "style_image_scale", "number", "Style image strength", default=0.5, example=0.5,
        low=0.0, high=1.0, step=0.05, omittable=True,
        help="How strongly the style image steers (used with a style image; 0 ignores it),",
        info="How strongly the pictures take on the style image's look.",
        meta_key="style_image_scale",
    ),
    Param(
        "control_image", "image", "Control image", optional=True, api=False,
        help="A control image for the server's ControlNet (pose, edges, depth...).",
        meta_key="control_image",
    ),
    Param(
        "controlnet_conditioning_scale", "number", "ControlNet strength", default=1.0,
        low=0.0, high=2.0, api=False, help="How strongly the control image steers,",
        meta_key="controlnet_conditioning_scale",
    ),
)  # fmt: skip

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
#: The /generate parameters a call must give (gradio_client refuses a call without them; the
#: others default to the UI's values). The prompt takes null too: the message then says
#: what to write.
REQUIRED_API_PARAMS = ("photos", "prompt")
#: The /generate parameters, in the API's order.
API_PARAMS: tuple[Param, ...] = tuple(p for p in PARAMS if p.api)
#: (lowest, highest) of each number a request carries.
LIMITS: dict[str, tuple[float, float]] = {
    p.name: (p.low, p.high) for p in PARAMS if p.kind in ("integer", "number")
}


def param(name: str) -> Param:
    return BY_NAME[name]


def default(name: str) -> Any:
    return BY_NAME[name].default


def default_steps(tiny: bool) -> int:
    """The steps a request starts from: the table's default, or 4 for ``--tiny``'s random
    models, whose pictures are noise at any step count (a generation in seconds on a CPU)."""
    return 4 if tiny else default("steps")


def check_value(param: Param, value: Any, choices: tuple[str, ...] | None = None) -> Any:
    """The value if it is one ``param`` takes, else :class:`PhotoMakerInputError` naming it.

    Integers are never rounded: 2.5 steps or a 1.5 seed is refused, as the service does.
    ``choices`` overrides ``param.choices`` (the styles this server has). Files ("files",
    "image") are checked by :func:`photomaker.web.api.check_file_payload`."""
    if value is None:
        if param.optional:
            return None
        raise param.fail("a value is required (got null).")
    if param.kind in ("integer", "number"):
        return _check_number(param, value)
    if param.kind == "bool":
        if not isinstance(value, bool):
            raise param.fail(f"expected true or false, got {short_repr(value, 60)}.")
        return value
    if param.kind == "choice":
        choices = param.choices if choices is None else choices
        if not isinstance(value, str) or value not in choices:
            raise param.fail(
                f"unknown value {short_repr(value, 60)}. Choose one of: {', '.join(choices)}."
            )
        return value
    if param.kind == "text":
        if not isinstance(value, str):
            raise param.fail(f"expected text, got {short_repr(value, 60)}.")
        limit = param.max_chars or MAX_PROMPT_CHARS
        if len(value) > limit:
            raise param.fail(
                f"{len(value)} characters is too long; keep it to {limit} at most "
                "(the model reads about 75 words)."
            )
        return value
    raise ValueError(f"{param.name}: kind {param.kind!r} is not checked here")


def _check_number(param: Param, value: Any) -> int | float:
    what = "a whole number" if param.kind == "integer" else "a number"
    span = f"{what} from {number_text(param.low)} to {number_text(param.high)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise param.fail(f"expected {span}, got {short_repr(value, 60)}.")
    if not math.isfinite(value):
        raise param.fail(f"expected {span}, got {value}.")
    if param.kind == "integer" and not float(value).is_integer():
        raise param.fail(f"expected {span}, got {value} (not rounded: send a whole number).")
    if not param.low <= value <= param.high:
        raise param.fail(f"expected {span}, got {number_text(value)}.")
    return int(value) if param.kind == "integer" else float(value)


def markdown_table() -> str:
    """The README's table of /generate parameters (``tests/test_web.py`` keeps it equal)."""
    rows = [
        "| # | Parameter | Type | Default | Description |",
        "|---|---|---|---|---|",
    ]
    for number, p in enumerate(API_PARAMS, start=1):
        kind = {"files": "list of files", "image": "file or null"}.get(p.kind, p.kind)
        default = "required" if p.name in REQUIRED_API_PARAMS else f"`{p.default!r}`"
        if p.name == "negative_prompt":
            default = "a list of common flaws"
        rows.append(f"| {number} | `{p.name}` | {kind} | {default} | {p.description()} |")
    return "\n".join(rows) + "\n"
