"""Command line: ``python -m photomaker generate --photos a.jpg b.jpg --prompt "..." --out DIR``.

The same :class:`~photomaker.service.PhotoMakerService` as the app; every setting of the
app (``--tiny``, ``--base-model``, ``--pm-version``, ...) is a flag here too. A mistake the
user can fix prints its message and exits with status 2; a failure of the machine (out of
memory, ...) prints its message and error id and exits with status 1. Every PNG written
carries its settings (:mod:`photomaker.metadata`).

Output: ``seed: N``, then one line per PNG: its path, a tab, and its ID likeness
(``likeness 0.62``, ``no face found`` or ``likeness n/a``). ``--fast`` runs the fast mode
(the ``--fast-lora`` setting's LoRA, with its own steps and guidance). ``--controlnet`` (a setting)
with ``--control-image`` lays the picture out like the control image.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import PhotoMakerError, PhotoMakerInputError, PhotoMakerServerError
from .params import default, default_steps
from .service import (
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_NEGATIVE_PROMPT,
    GenerationRequest,
    check_request,
)
from .settings import Settings, add_arguments
from .styles import DEFAULT_STYLE

EXIT_USER_ERROR = 2
EXIT_SERVER_ERROR = 1


def _say(text: str, err: bool = False) -> None:
    """The CLI's output: results on stdout, notes and errors on stderr."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m photomaker",
        description="PhotoMaker: pictures of a person from a few of their photos.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser(
        "generate",
        help="generate images and write them as PNG files",
        formatter_class=_DefaultsFormatter,
    )
    gen.add_argument(
        "--photos", nargs="+", required=True, metavar="PHOTO", help="photos of the person"
    )
    gen.add_argument("--prompt", required=True, help="e.g. 'a photo of a woman img in a garden'")
    gen.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT, help="what to avoid")
    gen.add_argument("--style", default=DEFAULT_STYLE, help="a style name (see `styles`)")
    gen.add_argument(
        "--aspect-ratio", default=DEFAULT_ASPECT_RATIO, help="one of: " + "; ".join(ASPECT_RATIOS)
    )
    gen.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default 50; 4 with --tiny)"
    )
    gen.add_argument("--style-strength", type=float, default=20.0, help="percent, 0-100")
    gen.add_argument("--num-outputs", type=int, default=1, help="1-4 images")
    gen.add_argument(
        "--guidance-scale", type=float, default=None, help="classifier-free guidance (default 5)"
    )
    gen.add_argument(
        "--fast",
        action="store_true",
        help="fast mode: the --fast-lora distillation LoRA with its own steps and guidance "
        "(SDXL-Lightning 8-step: 8 steps, guidance 0) in place of --steps and --guidance-scale; "
        "quicker, usually less detail",
    )
    gen.add_argument("--seed", type=int, default=None, help="random seed (default: a random one)")
    gen.add_argument(
        "--control-image",
        default=None,
        metavar="PATH",
        help="a control image (pose, edges, depth... as the ControlNet expects) that lays out "
        "the picture; needs --controlnet",
    )
    gen.add_argument(
        "--controlnet-scale",
        type=float,
        default=1.0,
        help="how strongly the control image steers, 0-2 (with --control-image)",
    )
    gen.add_argument(
        "--style-image",
        default=None,
        metavar="PATH",
        help="a picture whose look (colours, medium, mood) the images take on, through the "
        "--style-adapter IP-Adapter",
    )
    gen.add_argument(
        "--style-image-scale",
        type=float,
        default=0.5,
        help="how strongly the style image steers, 0-1 (with --style-image)",
    )
    gen.add_argument("--out", default="outputs", type=Path, help="folder for the PNG files")
    gen.add_argument("-v", "--verbose", action="store_true", help="log progress")
    add_arguments(gen)

    styles = commands.add_parser("styles", help="list the style templates")
    styles.add_argument("--show", action="store_true", help="print each template too")

    commands.add_parser("aspect-ratios", help="list the aspect-ratio presets")
    commands.add_parser(
        "app", help="launch the web app (the Space's app; app.py's flags, see 'app --help')"
    )
    return parser


class _DefaultsFormatter(argparse.HelpFormatter):
    """argparse's ``(default: …)`` only where a flag has a value of its own and its help does
    not give it already: the settings' flags default to ``None`` (their help names the real
    default and the environment variable), as do ``--steps`` and ``--seed``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        no_value = default is None or default is False or default == argparse.SUPPRESS
        if no_value or "default" in text.lower():  # not 0 == False: a default of 0 is shown
            return text
        return f"{text} (default: %(default)s)"


def _generate(args: argparse.Namespace) -> int:
    from .images import load_id_images, load_image
    from .loading import build_service
    from .metadata import save_results

    settings = Settings.from_namespace(args)
    if args.control_image and not settings.controlnet:
        raise PhotoMakerInputError(
            "--control-image needs a ControlNet to read it: add --controlnet (a hub id, e.g. "
            "diffusers/controlnet-canny-sdxl-1.0, or a folder), or drop --control-image."
        )
    if args.style_image and settings.style_adapter_location is None:
        raise PhotoMakerInputError(
            "--style-image needs the style image's IP-Adapter, and --style-adapter "
            "(PHOTOMAKER_STYLE_ADAPTER) is none: name one, or drop --style-image."
        )
    if args.fast and settings.fast_lora_location is None:
        raise PhotoMakerInputError(
            "--fast needs a fast LoRA, and --fast-lora (PHOTOMAKER_FAST_LORA) is none: name a "
            "distillation LoRA with --fast-lora, or drop --fast."
        )
    steps = args.steps if args.steps is not None else default_steps(settings.tiny)
    guidance = args.guidance_scale if args.guidance_scale is not None else default("guidance_scale")
    request = GenerationRequest(
        photos=args.photos,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        style=args.style,
        aspect_ratio=args.aspect_ratio,
        steps=steps,
        style_strength=args.style_strength,
        num_outputs=args.num_outputs,
        guidance_scale=guidance,
        seed=args.seed if args.seed is not None else 0,
        randomize_seed=args.seed is None,
        control_image=args.control_image,
        controlnet_conditioning_scale=args.controlnet_scale,
        fast=args.fast,
        style_image=args.style_image,
        style_image_scale=args.style_image_scale,
    )
    # The checks that need no model run before the (long) model loading.
    check_request(request, tiny=settings.tiny, trigger_word=settings.trigger_word)
    load_id_images(request.photos, max_photos=settings.max_photos)
    if args.control_image:
        try:
            load_image(args.control_image, max_megapixels=settings.max_photo_megapixels)
        except PhotoMakerInputError as error:
            raise PhotoMakerInputError(f"Control image: {error}") from None
    if args.style_image:
        try:
            load_image(args.style_image, max_megapixels=settings.max_photo_megapixels)
        except PhotoMakerInputError as error:
            raise PhotoMakerInputError(f"Style image: {error}") from None
    _writable_folder(args.out)
    service = build_service(settings)
    if args.fast and service.fast_mode is not None:
        mode = service.fast_mode
        ignored = [
            f
            for f, v in (("--steps", args.steps), ("--guidance-scale", args.guidance_scale))
            if v is not None
        ]
        _say(
            f"note: fast mode: {mode.name}, {mode.steps} steps, guidance {mode.guidance_scale:g}"
            + (f" ({' and '.join(ignored)} not used)" if ignored else ""),
            err=True,
        )
    result = service.generate(request)
    for message in result.messages:
        _say(f"note: {message}", err=True)
    _say(f"seed: {result.seed}")
    # Each PNG carries its settings (text chunks), like the app's downloads.
    try:
        paths = save_results(
            result,
            settings,
            args.out,
            aspect_ratio=request.aspect_ratio,
            scheduler=type(service.pipe.scheduler).__name__,
        )
    except OSError as error:  # e.g. the disk filled up while the images were made
        raise PhotoMakerInputError(
            f"The images could not be written to {args.out} ({error.strerror or error})."
        ) from None
    for index, path in enumerate(paths):
        _say(f"{path}\t{result.likeness_text(index)}")
    if settings.tiny:
        _say("note: --tiny uses random weights; these images are noise.", err=True)
    return 0


def _writable_folder(folder: Path) -> None:
    """Make the output folder before the models load, so that one that cannot be written is
    said at once rather than after the generation (and its GPU time)."""
    if folder.exists() and not folder.is_dir():
        raise PhotoMakerInputError(f"--out {folder} is a file, not a folder; choose a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PhotoMakerInputError(
            f"--out {folder} cannot be made ({error.strerror or error}); choose another folder."
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PhotoMakerInputError(f"--out {folder} is not writable; choose another folder.")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["app"]:  # the web app parses its own flags (the settings', as app.py)
        from .web import main as app_main

        return app_main(argv[1:], prog="photomaker app")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "styles":
            from .styles import default_styles

            for style in default_styles():
                _say(style.name)
                if args.show:
                    _say(f"    prompt:   {style.prompt}\n    negative: {style.negative_prompt}")
            return 0
        if args.command == "aspect-ratios":
            for name in ASPECT_RATIOS:
                _say(name)
            return 0
    except PhotoMakerInputError as err:
        _say(f"error: {err}", err=True)
        return EXIT_USER_ERROR
    except PhotoMakerServerError as err:
        error_id = f" (error id {err.error_id})" if err.error_id else ""
        _say(f"error: {err}{error_id}", err=True)
        return EXIT_SERVER_ERROR
    except PhotoMakerError as err:  # e.g. GenerationCancelled
        _say(f"error: {err}", err=True)
        return EXIT_SERVER_ERROR
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
