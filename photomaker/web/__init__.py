"""The PhotoMaker web app (Gradio), as a package.

* :mod:`.layout` — :func:`create_app` (the page in small section functions) and the events;
* :mod:`.handlers` — :class:`AppHandlers`, the event handlers tests call directly;
* :mod:`.api` — the public ``/generate`` endpoint, from :mod:`photomaker.params`;
* :mod:`.gpu` — the ZeroGPU runner and the mapping of errors to ``gr.Error``;
* :mod:`.look` — theme, CSS and scripts (``static/``, shipped as package data), tips;
* :mod:`.compat` — the one thing taken from Gradio beyond its public API, version-checked.

``python -m photomaker app [flags]`` (or ``photomaker app``) launches it from a plain
install; ``app.py`` at the repository root is the Space's entry point, the same app.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import gradio as gr
import spaces  # noqa: F401  (before torch: on ZeroGPU it patches torch at import)

from ..errors import PhotoMakerInputError
from ..settings import Settings, build_parser, on_zerogpu
from .api import check_file_payload
from .gpu import INPUT_TITLE, SERVER_TITLE, gpu_runner, server_error, user_error
from .handlers import AppHandlers, PhotoCheck, example_caption, merge_hint, status_html
from .layout import DELETE_CACHE, IMAGE_FILE_TYPES, check_settings, create_app, launch
from .look import css, theme

__all__ = [
    "DELETE_CACHE", "IMAGE_FILE_TYPES", "INPUT_TITLE", "SERVER_TITLE", "AppHandlers",
    "PhotoCheck", "check_file_payload", "check_settings", "create_app", "css",
    "demo_from_env", "example_caption", "gpu_runner", "launch", "main", "merge_hint",
    "server_error", "status_html", "theme", "user_error",
]  # fmt: skip

logger = logging.getLogger("photomaker.app")
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure_logging() -> None:
    """Our INFO lines in the log; httpx's per-request INFO lines (Gradio's own start-up
    checks of its server) only from WARNING up."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None, prog: str = "app.py") -> int:
    """Build the app from flags and ``PHOTOMAKER_*`` variables and launch it."""
    configure_logging()
    try:
        settings = Settings.from_args(argv, parser=build_parser(prog=prog))
        app = create_app(settings)
    except PhotoMakerInputError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    if on_zerogpu():
        logger.info("running on ZeroGPU")
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.demo = app  # for Gradio's reload mode, which looks for `demo`
    launch(app, settings)
    return 0


def demo_from_env() -> gr.Blocks:
    """The app built from ``PHOTOMAKER_*`` variables alone (Spaces, ``gradio app.py``)."""
    configure_logging()
    return create_app(Settings.from_env())
