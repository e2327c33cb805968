"""The public ``/generate`` endpoint, from :mod:`photomaker.params`.

Gradio's public means only: the endpoint's inputs are hidden :class:`ApiValue` components
(a custom component: Gradio's documented hooks ``api_info`` and ``example_payload`` give
the API page each parameter's type, description and example), the event runs with
``preprocess=False`` so the handler receives the values as sent, and :func:`endpoint`
checks them against the table (:func:`~photomaker.params.check_value`), so a wrong value
is refused with a message that names the parameter. Files still pass through Gradio's own
upload checks (only uploaded files or http(s) URLs are read).

The page does not use this endpoint: its own (private) event reads the visible components.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from ..errors import PhotoMakerInputError
from ..params import API_PARAMS, REQUIRED_API_PARAMS, Param, check_value, short_repr
from .gpu import user_error

#: Example photo for the API page: the NASA portrait our assets/ photos come from.
EXAMPLE_PHOTO_URL = (
    "https://raw.githubusercontent.com/scikit-image/scikit-image/main/skimage/data/astronaut.png"
)
_PYTHON_TYPES = {"files": list, "image": dict, "text": str, "choice": str, "integer": int,
                 "number": float, "bool": bool}  # fmt: skip


class ApiValue(gr.components.Component):
    """One ``/generate`` parameter as API clients see it: no widget of its own (hidden), the
    value handed on as sent, and the API page's type, description and example given."""

    EVENTS: list = []

    def __init__(
        self,
        value: Any = None,
        *,
        label: str,
        schema: dict,
        example: Any = None,
        visible: bool = False,
    ):
        # `visible` is a parameter here so that Gradio puts it in the page's config (it
        # sends the attributes named in __init__'s signature).
        self._schema = schema
        self._example = example
        super().__init__(value=value, label=label, visible=visible)

    def preprocess(self, payload: Any) -> Any:
        return payload

    def postprocess(self, value: Any) -> Any:
        return value

    def api_info(self) -> dict[str, Any]:
        return self._schema

    def example_payload(self) -> Any:
        return self._example

    def example_value(self) -> Any:
        return self._example

    def get_block_name(self) -> str:
        return "json"  # hidden; a frontend every Gradio page has


def api_example_photo() -> dict:
    """An example photo a remote client can fetch: this Space's own asset, else the original."""
    from gradio_client import handle_file

    space = os.environ.get("SPACE_ID")
    if space:
        return handle_file(
            f"https://huggingface.co/spaces/{space}/resolve/main/assets/astronaut.jpg"
        )
    return handle_file(EXAMPLE_PHOTO_URL)


def _schema(param: Param, choices: Sequence[str], note: str) -> dict[str, Any]:
    if param.kind == "files":
        schema = gr.File(file_count="multiple", render=False).api_info()
    elif param.kind == "image":
        schema = gr.Image(type="filepath", render=False).api_info()
    elif param.kind in ("integer", "number"):
        schema = {"type": param.kind, "minimum": param.low, "maximum": param.high}
    elif param.kind == "choice":
        schema = {"type": "string", "enum": list(choices)}
    else:
        schema = {"type": {"text": "string", "bool": "boolean"}[param.kind]}
    return {**schema, "description": param.description() + note}


def api_inputs(
    styles: Sequence[str], trigger_word: str, defaults: dict[str, Any], notes: dict[str, str]
) -> list[ApiValue]:
    """The hidden inputs of ``/generate``, in the API's order (call inside the Blocks).

    ``defaults`` overrides the table's (steps in tiny mode), ``notes`` adds to a parameter's
    description (the doodle off on this server)."""
    components = []
    for param in API_PARAMS:
        choices = styles if param.name == "style" else param.choices
        example = param.example
        if param.name == "photos":
            example = [api_example_photo()]
        elif isinstance(example, str) and param.kind == "text":
            example = example.replace(" img ", f" {trigger_word} ")
        schema = _schema(param, choices, notes.get(param.name, ""))
        # No value: Gradio's API page and gradio_client then call the parameter required.
        value = (
            None if param.name in REQUIRED_API_PARAMS else defaults.get(param.name, param.default)
        )
        components.append(ApiValue(value, label=param.label, schema=schema, example=example))
    return components


def check_file_payload(label: str, name: str, payload: Any, multiple: bool = True) -> None:
    """Files as the API sends them: uploaded files (or http(s) URLs Gradio fetches); a list
    of them, or with ``multiple=False`` one (or null).

    Runs before Gradio's own handling, whose errors for a malformed value or a path that was
    never uploaded (``/etc/passwd``) say nothing the user can act on."""
    if payload is None:
        return
    what = "photo" if multiple else "image"
    how = (
        "upload each file first (gradio_client: handle_file('photo.jpg'))"
        if multiple
        else f"upload the file first (gradio_client: handle_file('{name}.png'))"
    )
    if not multiple:
        if not isinstance(payload, dict):
            raise PhotoMakerInputError(
                f"{label} ({name}): expected an image file or null, got {short_repr(payload, 60)}; {how}."
            )
        payload = [payload]
    elif isinstance(payload, dict):
        raise PhotoMakerInputError(
            f"{label} ({name}): expected a list of image files, got one file; put it in a list "
            f"(gradio_client: {name}=[handle_file('photo.jpg')])."
        )
    elif not isinstance(payload, list):
        raise PhotoMakerInputError(
            f"{label} ({name}): expected a list of image files, got {short_repr(payload, 60)}; {how}."
        )
    from gradio.utils import abspath, get_upload_folder, is_in_or_equal

    uploads = get_upload_folder()
    for number, item in enumerate(payload, start=1):
        path = item.get("path") if isinstance(item, dict) else None
        which = f"{what} {number}" if multiple else "it"
        if not isinstance(path, str) or not path:
            thing = f"item {number}" if multiple else "the value"
            raise PhotoMakerInputError(
                f"{label} ({name}): {thing} is not a file, got {short_repr(item, 60)}; {how}."
            )
        if re.match(r"(?i)https?://", path):
            continue
        if not is_in_or_equal(abspath(path), uploads):
            raise PhotoMakerInputError(
                f"{label} ({name}): {which} names a file on the server "
                f"({short_repr(path, 40)}), which is never read. Send the {what} itself: {how}, "
                "or an http(s) URL."
            )


def check_request_files(inputs: list[Any]) -> list[Any]:
    """A raw ``/generate`` request before Gradio reads it (see :mod:`.compat`): the omittable
    parameters a request written before them lacks get their defaults (Gradio itself
    refuses a short request; gradio_client fills them in on its own), and the file values
    are checked so that a mistake names its parameter."""
    omittable = [p for p in API_PARAMS if p.omittable]
    missing = len(API_PARAMS) - len(inputs)
    if 0 < missing <= len(omittable):
        inputs = [*inputs, *(p.default for p in omittable[len(omittable) - missing :])]
    elif missing:
        needed = len(API_PARAMS) - len(omittable)
        first = ", ".join(p.name for p in API_PARAMS[:needed])
        raise PhotoMakerInputError(
            f"The request has {len(inputs)} values; /generate takes {needed} to "
            f"{len(API_PARAMS)}, in the API page's order: first {first}, then the optional "
            f"{', '.join(p.name for p in omittable)}."
        )
    for param, payload in zip(API_PARAMS, inputs, strict=False):
        if param.kind in ("files", "image"):
            check_file_payload(param.label, param.name, payload, param.kind == "files")
    return inputs


def _paths(param: Param, payload: Any) -> Any:
    """The uploaded files' paths (Gradio has moved them into its cache by now)."""
    check_file_payload(param.label, param.name, payload, param.kind == "files")
    if payload is None:
        return None
    if param.kind == "image":
        return payload["path"]
    return [item["path"] for item in payload]


def endpoint(generate: Callable[..., Any], styles: Sequence[str]) -> Callable[..., Any]:
    """The ``/generate`` function: the values checked against the table, then ``generate``
    (:meth:`~photomaker.web.handlers.AppHandlers.generate`) with them by name.

    Its signature is the table's (names, order, defaults of the omittable parameters), which
    is what Gradio shows on the API page and what gradio_client calls by name."""

    async def generate_api(*values: Any):
        """Generate pictures of the person in `photos` (see each parameter's description).

        Returns the images (PNG files named photomaker-<seed>-<n>.png that carry their
        settings and likeness, with captions that end in the likeness) and the seed used."""
        checked = {}
        try:
            for param, value in zip(API_PARAMS, values, strict=False):
                if param.kind in ("files", "image"):
                    checked[param.name] = _paths(param, value)
                else:
                    choices = tuple(styles) if param.name == "style" else None
                    checked[param.name] = check_value(param, value, choices)
        except PhotoMakerInputError as err:
            raise user_error(err) from None
        return await generate(**checked)

    parameters = [
        inspect.Parameter(
            p.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=p.default if p.omittable else inspect.Parameter.empty,
            annotation=_PYTHON_TYPES[p.kind] | None if p.optional else _PYTHON_TYPES[p.kind],
        )
        for p in API_PARAMS
    ]
    progress = inspect.Parameter(
        "progress",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=gr.Progress(track_tqdm=True),
        annotation=gr.Progress,
    )
    generate_api.__signature__ = inspect.Signature([*parameters, progress])
    generate_api.__annotations__ = {p.name: p.annotation for p in [*parameters, progress]}
    return generate_api
