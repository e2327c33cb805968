"""The one thing this app takes from Gradio beyond its public API, in one place.

A raw ``/generate`` request is read here before Gradio reads it
(:meth:`PhotoMakerBlocks.preprocess_data`, which Gradio calls for every event):

* requests written before the doodle (11 values) run as before: Gradio's public API has
  no way to give a missing trailing value its default (it refuses a short request);
* file values are checked first, so that ``/etc/passwd`` or a malformed value is refused
  with a message that names the parameter, where Gradio's own says nothing actionable;
* a file URL the server cannot fetch is said so (Gradio's own error names the host only);
* anything else that cannot be read becomes a message with an error id.

Checked with Gradio 6.31 (:data:`TESTED_GRADIO`); :func:`supported` compares the method's
signature and ``tests/test_web.py`` fails loudly when Gradio changes it. Where it is not
supported the app runs on a plain ``gr.Blocks`` (Gradio's own checks and messages) with a
warning: nothing breaks, the messages are less helpful and old 11-value requests are refused.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable
from typing import Any

import gradio as gr

from ..errors import PhotoMakerInputError, new_error_id
from .gpu import INPUT_TITLE

logger = logging.getLogger("photomaker.app")

TESTED_GRADIO = "6.31"
_EXPECTED_PARAMETERS = ["self", "block_fn", "inputs", "state", "explicit_call"]


def supported() -> bool:
    """True when ``gr.Blocks.preprocess_data`` has the signature this module overrides."""
    method = getattr(gr.Blocks, "preprocess_data", None)
    if method is None or not inspect.iscoroutinefunction(method):
        return False
    return list(inspect.signature(method).parameters) == _EXPECTED_PARAMETERS


class PhotoMakerBlocks(gr.Blocks):
    """``gr.Blocks`` whose requests for the api names in :attr:`request_checks` pass through
    their check (``inputs -> inputs``, raising :class:`PhotoMakerInputError`) first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_checks: dict[str, Callable[[list[Any]], list[Any]]] = {}

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        check = None if explicit_call else self.request_checks.get(block_fn.api_name)
        if check is None:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        try:
            inputs = check(list(inputs))
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except PhotoMakerInputError as err:
            raise gr.Error(str(err), title=INPUT_TITLE, print_exception=False) from None
        except gr.Error:
            raise
        except Exception as exc:
            if _fetching_a_url(exc):
                logger.info("a file URL in a request could not be fetched: %s", exc)
                raise gr.Error(
                    f"A file given as a URL could not be fetched by the server ({exc}; it "
                    "fetches only public http(s) addresses). Send the file itself: "
                    "gradio_client's handle_file('photo.jpg') on a local file uploads it.",
                    title=INPUT_TITLE,
                    print_exception=False,
                ) from None
            error_id = new_error_id()
            logger.exception("could not read a request (error id %s)", error_id)
            raise gr.Error(
                "The request could not be read: a value has the wrong shape for its parameter "
                f"(see the API page). Error id {error_id}.",
                title=INPUT_TITLE,
                print_exception=False,
            ) from None


#: Where Gradio fetches a file value given as a URL (its SSRF-checked download).
_URL_FETCH_FRAMES = ("async_ssrf_protected_download", "async_ssrf_protected_get")


def _fetching_a_url(exc: BaseException) -> bool:
    """Whether ``exc`` came from Gradio fetching a URL file value (an unknown host, a
    private address it refuses, a failed download) rather than from a malformed value."""
    frames = traceback.extract_tb(exc.__traceback__)
    return any(frame.name in _URL_FETCH_FRAMES for frame in frames)


def blocks_class() -> type[gr.Blocks]:
    """:class:`PhotoMakerBlocks` where Gradio supports it, else ``gr.Blocks`` (logged)."""
    if supported():
        if not gr.__version__.startswith(TESTED_GRADIO):
            logger.info("Gradio %s: request checks tested with %s", gr.__version__, TESTED_GRADIO)
        return PhotoMakerBlocks
    logger.warning(
        "Gradio %s changed Blocks.preprocess_data: /generate runs without the early request "
        "checks (Gradio's own messages; 11-value requests from before the doodle are refused)",
        gr.__version__,
    )
    return gr.Blocks
