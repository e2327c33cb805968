"""The checks that need no model: numbers in range (from :mod:`photomaker.params`), a known
style and aspect ratio, prompts of a sane length; and the small facts derived from them
(output size, merge step)."""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np

from ..errors import PhotoMakerInputError
from ..params import (
    ASPECT_RATIOS,
    BY_NAME,
    LIMITS,
    MAX_NEGATIVE_PROMPT_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    short_repr,
)
from ..styles import StyleBook, default_styles
from .types import GenerationRequest

MAX_MERGE_STEP = 30
#: How much of a prompt goes into the log.
LOG_PROMPT_CHARS = 120


def tiny_size(width: int, height: int, long_side: int = 64) -> tuple[int, int]:
    """A preset scaled down for the tiny models: long side 64, both multiples of 16."""
    scale = long_side / max(width, height)

    def snap(v: float) -> int:
        return max(32, int(round(v * scale / 16)) * 16)

    return snap(width), snap(height)


def merge_step(style_strength: float, steps: int) -> int:
    """The demo's mapping from the style strength (%) to ``start_merge_step``."""
    return min(int(style_strength / 100 * steps), MAX_MERGE_STEP)


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


def _number(name: str, value: Any) -> float | int:
    """``value`` as the number parameter ``name`` takes (range and kind from the table)."""
    low, high = LIMITS[name]
    integer = BY_NAME[name].kind == "integer"
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
    Returns the normalized values, the seed to use, the size and the styled prompts. ``fast``
    is only checked to be a boolean here; whether the server has the mode, and the mode's
    steps and guidance, are the service's (:meth:`PhotoMakerService.check_request`)."""
    styles = styles or default_styles()
    values: dict[str, Any] = {}
    for name in LIMITS:  # the table's order
        if name == "seed" and request.randomize_seed:
            values["seed"] = secrets.randbelow(MAX_SEED + 1)
        else:
            values[name] = _number(name, getattr(request, name))
    fast = getattr(request, "fast", False)
    if not isinstance(fast, (bool, np.bool_)):
        raise BY_NAME["fast"].fail(f"expected true or false, got {short_repr(fast, 60)}.")
    values["fast"] = bool(fast)
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

