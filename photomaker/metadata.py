"""How an image was made, written into the PNG itself and read back.

Every PNG the app, the API and the CLI write carries two text chunks:

* ``parameters``: the plain-text convention of the AUTOMATIC1111 web UI, which image viewers,
  galleries and other tools already read::

      <prompt as sent to the model>
      Negative prompt: <negative prompt as sent>
      Steps: 50, Sampler: Euler, CFG scale: 5.0, Seed: 42, Size: 896x1152, Model: ..., ...,
      Likeness: 0.62


* ``photomaker``: the same facts as JSON, with the user's own words kept apart from the style
  (what :func:`read_metadata` reads, so "Load settings from image" restores the form exactly).

Both say whether a style image steered the look (``style_image``, with its strength and
IP-Adapter; the image itself is not stored), the mode (``mode``: "quality", or "fast" with the distillation LoRA and its
scheduler; ``steps`` and ``guidance_scale`` are always those actually used), whether a doodle or a control image steered the layout (with their strengths; the
drawing itself is not stored) and the image's ID likeness (``likeness``: the cosine
similarity, or null with ``likeness_text`` "no face found" / "likeness n/a").

Pure functions, no Gradio: :func:`build_metadata` (from a
:class:`~photomaker.service.GenerationResult` and the :class:`~photomaker.settings.Settings`),
:func:`save_png` / :func:`save_results`, :func:`read_metadata`.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import PhotoMakerInputError

if TYPE_CHECKING:  # pragma: no cover
    from .service import GenerationResult
    from .settings import Settings

PARAMETERS_KEY = "parameters"
JSON_KEY = "photomaker"
FORMAT = "photomaker-open/1"
APP_NAME = "photomaker-open"

#: diffusers scheduler class -> the sampler name other tools use.
SAMPLER_NAMES = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DDIMScheduler": "DDIM",
    "LCMScheduler": "LCM",
}


def app_version() -> str:
    """This package's version (``photomaker.__version__``, the one pyproject.toml reads)."""
    from . import __version__

    return __version__


def file_name(seed: int, number: int) -> str:
    """``photomaker-<seed>-<n>.png``, ``n`` counting from 1 (the CLI's and the app's names)."""
    return f"photomaker-{seed}-{number}.png"


def zip_name(seed: int) -> str:
    return f"photomaker-{seed}.zip"


def aspect_ratio_name(width: int, height: int, tiny: bool = False) -> str | None:
    """The aspect-ratio preset that renders at ``width`` × ``height`` (None if none does)."""
    from .service import ASPECT_RATIOS, tiny_size

    for name, size in ASPECT_RATIOS.items():
        if (tiny_size(*size) if tiny else size) == (width, height):
            return name
    return None


def build_metadata(
    result: GenerationResult,
    settings: Settings,
    *,
    index: int = 0,
    aspect_ratio: str | None = None,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Everything needed to make image ``index`` of ``result`` again, as JSON-ready values.

    ``aspect_ratio`` is the preset name the request used (found from the size when not
    given); ``scheduler`` the pipeline's scheduler class name, when known."""
    checkpoint, checkpoint_file = settings.checkpoint_location
    meta: dict[str, Any] = {
        "format": FORMAT,
        "prompt": result.user_prompt,
        "negative_prompt": result.user_negative_prompt,
        "style": result.style,
        "styled_prompt": result.prompt,
        "styled_negative_prompt": result.negative_prompt,
        "seed": int(result.seed),
        "steps": int(result.steps),
        "style_strength": _plain_number(result.style_strength),
        "start_merge_step": int(result.start_merge_step),
        "guidance_scale": float(result.guidance_scale),
        "width": int(result.width),
        "height": int(result.height),
        "aspect_ratio": aspect_ratio
        or aspect_ratio_name(result.width, result.height, tiny=settings.tiny),
        "image": index + 1,
        "num_images": len(result.images),
        "sampler": _sampler(result, scheduler),
        "photomaker_version": settings.pm_version,
        "base_model": "tiny random weights" if settings.tiny else settings.base_model,
        "checkpoint": "tiny random weights" if settings.tiny else checkpoint,
        "checkpoint_file": None if settings.tiny else checkpoint_file,
        "trigger_word": settings.trigger_word,
        "style_lora": settings.style_lora,
        "style_lora_weight": settings.style_lora_weight if settings.style_lora else None,
        "doodle": bool(result.doodle),
        "doodle_adapter": _model_name(settings.doodle_adapter_location, settings, result.doodle),
        "adapter_conditioning_scale": _optional_number(result.adapter_conditioning_scale),
        "adapter_conditioning_factor": _optional_number(result.adapter_conditioning_factor),
        "control_image": bool(result.control_image),
        "controlnet": _model_name(settings.controlnet, settings, result.control_image),
        "controlnet_conditioning_scale": _optional_number(result.controlnet_conditioning_scale),
        **_mode(result, settings),
        "style_image": bool(result.style_image),
        "style_adapter": _model_name(settings.style_adapter_location, settings, result.style_image),
        "style_image_scale": _optional_number(result.style_image_scale),
        "likeness": _likeness(result, index),
        "likeness_text": result.likeness_text(index),
        "tiny": settings.tiny,
        "app": APP_NAME,
        "app_version": app_version(),
    }
    return meta


def _mode(result: GenerationResult, settings: Settings) -> dict[str, Any]:
    """``mode`` ("quality" or "fast") and, in fast mode, which distillation LoRA and scheduler
    made the image (the steps and guidance used are the metadata's ``steps`` and
    ``guidance_scale``)."""
    record = result.fast_mode
    if not record:
        return {"mode": "quality", "fast_lora": None, "fast_scheduler": None}
    spacing = record.get("scheduler_timestep_spacing")
    return {
        "mode": "fast",
        "fast_lora": "tiny random weights" if settings.tiny else record.get("fast_lora"),
        "fast_scheduler": record.get("scheduler")
        + (f" (timestep_spacing={spacing})" if spacing else ""),
    }


def _sampler(result: GenerationResult, scheduler: str | None) -> str | None:
    """The sampler name of the scheduler that ran: the fast mode's own in fast mode."""
    if result.fast_mode:
        scheduler = result.fast_mode.get("scheduler")
    name = SAMPLER_NAMES.get(scheduler or "", scheduler)
    spacing = (result.fast_mode or {}).get("scheduler_timestep_spacing")
    return f"{name} {spacing}" if spacing and name else name


def _model_name(location: str | None, settings: Settings, used: bool) -> str | None:
    """The model that read a doodle or control image, when one did."""
    if not used:
        return None
    return "tiny random weights" if settings.tiny else location


def _optional_number(value: float | None) -> int | float | None:
    return None if value is None else _plain_number(value)


def _likeness(result: GenerationResult, index: int) -> float | None:
    scores = result.likeness
    if scores is None or index >= len(scores) or scores[index] is None:
        return None
    return round(float(scores[index]), 4)


def _plain_number(value: float) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else value


def _a1111_value(value: Any) -> str:
    """A value in the ``Key: value, ...`` line; quoted when it holds a comma, colon or quote."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if re.search(r'[,:"]', text) else text


def parameters_text(meta: Mapping[str, Any]) -> str:
    """The ``parameters`` chunk in the AUTOMATIC1111 layout."""
    fields: list[tuple[str, Any]] = [
        ("Steps", meta["steps"]),
        ("Sampler", meta.get("sampler")),
        ("Mode", meta.get("mode")),
        ("CFG scale", meta["guidance_scale"]),
        ("Seed", meta["seed"]),
        ("Size", f"{meta['width']}x{meta['height']}"),
        ("Model", meta["base_model"]),
        ("Style", meta["style"]),
        ("Style strength", f"{meta['style_strength']}%"),
        ("PhotoMaker merge step", meta["start_merge_step"]),
        (
            "PhotoMaker",
            " ".join(
                str(x)
                for x in (meta["photomaker_version"], meta["checkpoint"], meta["checkpoint_file"])
                if x
            ),
        ),
        ("Trigger word", meta["trigger_word"]),
        ("Style LoRA", meta.get("style_lora")),
        ("Style LoRA weight", meta.get("style_lora_weight")),
        ("Doodle adapter", meta.get("doodle_adapter")),
        ("Doodle strength", meta.get("adapter_conditioning_scale")),
        ("Doodle steps share", meta.get("adapter_conditioning_factor")),
        ("Fast LoRA", meta.get("fast_lora")),
        ("Style image adapter", meta.get("style_adapter")),
        ("Style image strength", meta.get("style_image_scale")),
        ("ControlNet", meta.get("controlnet")),
        ("ControlNet scale", meta.get("controlnet_conditioning_scale")),
        ("Likeness", _likeness_words(meta)),
        ("Version", f"{meta['app']} {meta['app_version']}"),
    ]
    line = ", ".join(f"{k}: {_a1111_value(v)}" for k, v in fields if v not in (None, ""))
    lines = [meta["styled_prompt"]]
    if meta.get("styled_negative_prompt"):
        lines.append(f"Negative prompt: {meta['styled_negative_prompt']}")
    lines.append(line)
    return "\n".join(lines)


def _likeness_words(meta: Mapping[str, Any]) -> str | None:
    """``0.62``, ``no face found`` or ``n/a``; nothing for metadata written before likeness."""
    if meta.get("likeness") is not None:
        return f"{meta['likeness']:.2f}"
    text = meta.get("likeness_text")
    if not text:
        return None
    return "n/a" if text.endswith("n/a") else text


def png_info(meta: Mapping[str, Any]) -> PngImagePlugin.PngInfo:
    """Both text chunks (iTXt when the text is not Latin-1, as Pillow decides)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters_text(meta))
    info.add_text(JSON_KEY, json.dumps(dict(meta), ensure_ascii=False, sort_keys=True))
    return info


def save_png(image: Image.Image, path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``image`` as a PNG carrying ``meta``."""
    path = Path(path)
    image.save(path, format="PNG", pnginfo=png_info(meta))
    return path


def save_results(
    result: GenerationResult,
    settings: Settings,
    folder: str | Path,
    *,
    aspect_ratio: str | None = None,
    scheduler: str | None = None,
) -> list[Path]:
    """Every image of ``result`` as ``folder/photomaker-<seed>-<n>.png`` with its metadata."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(result.images):
        meta = build_metadata(
            result, settings, index=i, aspect_ratio=aspect_ratio, scheduler=scheduler
        )
        paths.append(save_png(image, folder / file_name(result.seed, i + 1), meta))
    return paths


def zip_files(paths: Iterable[str | Path], zip_path: str | Path) -> Path:
    """The files, stored (PNGs do not compress further) under their own names."""
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in paths:
            archive.write(path, arcname=Path(path).name)
    return zip_path


def read_metadata(source: str | Path | Image.Image) -> dict[str, Any]:
    """The JSON metadata of one of our PNGs; :class:`PhotoMakerInputError` when there is none."""
    if isinstance(source, Image.Image):
        return _from_info(source.info)
    try:
        with Image.open(source) as image:
            image_format = image.format
            info = dict(image.info)
    except (UnidentifiedImageError, OSError):
        raise PhotoMakerInputError(
            "This file is not an image. Load settings from a PNG that PhotoMaker made."
        ) from None
    if image_format != "PNG":
        raise PhotoMakerInputError(
            f"This is a {image_format or 'non-PNG'} image; only PhotoMaker's PNG files carry "
            "their settings. Load settings from a PNG that PhotoMaker made."
        )
    return _from_info(info)


def _from_info(info: Mapping[str, Any]) -> dict[str, Any]:
    raw = info.get(JSON_KEY)
    if raw is None:
        other = " (it has another tool's 'parameters')" if PARAMETERS_KEY in info else ""
        raise PhotoMakerInputError(
            f"This PNG has no PhotoMaker settings{other}. Load settings from a PNG that "
            "PhotoMaker made: downloaded from the app or the API, or written by the CLI."
        )
    try:
        meta = json.loads(raw)
    except (TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith(APP_NAME + "/"):
        raise PhotoMakerInputError("This PNG's PhotoMaker settings are damaged and cannot be read.")
    return meta
