"""PhotoMaker web app: the Hugging Face Space's entry point (the app is :mod:`photomaker.web`).

``python app.py [flags]`` (what ``gradio app.py`` runs too) builds the app from flags and
``PHOTOMAKER_*`` variables and launches it, like ``python -m photomaker app``. ``import app;
app.demo`` builds it from the environment on first access; importing this module alone loads
nothing, except on a Space (``SPACE_ID`` set), which may import this file and launch the
``demo`` it finds: there ``demo`` is built at import. Tests and embedding apps call
:func:`photomaker.web.create_app` (settings -> ``gr.Blocks``), which touches nothing else.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import spaces  # noqa: F401  (first, before torch: on ZeroGPU it patches torch at import)

from photomaker.web import demo_from_env, main


def __getattr__(name: str) -> Any:
    """``app.demo`` for embedding apps and ``gradio app.py``'s reloader, built on first use."""
    if name == "demo":
        globals()["demo"] = app = demo_from_env()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
elif os.environ.get("SPACE_ID"):
    # A Space may import this file and launch the Blocks it finds in it rather than run it:
    # there `demo` is a plain module attribute, built at import as Spaces expect.
    demo = demo_from_env()
