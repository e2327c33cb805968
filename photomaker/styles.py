"""Style templates: a named prompt wrapper and a negative prompt.

``style_templates.json`` is a list of
``{"name": ..., "prompt": "... {prompt} ...", "negative_prompt": "..."}``: the file at the
project root in a source checkout (the one to edit), else the copy that ``pip install .``
ships inside the package (``setup.py`` copies it there at build time). The user's prompt
replaces ``{prompt}`` (which must appear exactly once); the style's negative prompt is put
in front of the user's. Templates are checked when they are loaded, so a broken file stops
the app at start-up with a message naming the style, not at the first click.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import PhotoMakerInputError

PLACEHOLDER = "{prompt}"
DEFAULT_STYLE = "Photographic (Default)"
NO_STYLE = "(No style)"


def _style_file() -> Path:
    """The project's top-level file in a source checkout, else the installed package's copy."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "style_templates.json"
    if checkout.is_file() and (package.parent / "pyproject.toml").is_file():
        return checkout
    return package / "style_templates.json"


STYLE_FILE = _style_file()


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative_prompt: str = ""

    def apply(self, prompt: str, negative_prompt: str = "") -> tuple[str, str]:
        """Return (prompt, negative prompt) with this style applied."""
        styled = self.prompt.replace(PLACEHOLDER, prompt.strip())
        negatives = [n.strip() for n in (self.negative_prompt, negative_prompt or "") if n.strip()]
        return styled, ", ".join(negatives)


class StyleBook:
    """The validated set of styles, in file order."""

    def __init__(self, styles: Iterable[Style], trigger_word: str = "img") -> None:
        self._styles: dict[str, Style] = {}
        for style in styles:
            _check(style, trigger_word)
            if style.name in self._styles:
                raise PhotoMakerInputError(
                    f"Style templates: the name {style.name!r} appears twice."
                )
            self._styles[style.name] = style
        if not self._styles:
            raise PhotoMakerInputError("Style templates: the file has no styles.")

    @classmethod
    def load(cls, path: str | Path | None = None, trigger_word: str = "img") -> StyleBook:
        path = Path(path) if path is not None else STYLE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PhotoMakerInputError(f"Style templates: {path} does not exist.") from None
        except json.JSONDecodeError as err:
            raise PhotoMakerInputError(
                f"Style templates: {path} is not valid JSON ({err})."
            ) from None
        return cls.from_data(data, trigger_word=trigger_word, source=str(path))

    @classmethod
    def from_data(
        cls, data: object, trigger_word: str = "img", source: str = "styles"
    ) -> StyleBook:
        if isinstance(data, Mapping):  # also accept {"name": {"prompt":..., ...}}
            data = [{"name": k, **v} if isinstance(v, Mapping) else v for k, v in data.items()]
        if not isinstance(data, list):
            raise PhotoMakerInputError(f"Style templates in {source}: expected a list of styles.")
        styles = []
        for i, entry in enumerate(data, start=1):
            if not isinstance(entry, Mapping):
                raise PhotoMakerInputError(
                    f"Style templates in {source}: entry {i} is not an object."
                )
            unknown = set(entry) - {"name", "prompt", "negative_prompt"}
            if unknown:
                raise PhotoMakerInputError(
                    f"Style templates in {source}: entry {i} has unknown keys {sorted(unknown)}."
                )
            name, prompt = entry.get("name"), entry.get("prompt")
            negative = entry.get("negative_prompt", "")
            if not isinstance(name, str) or not name.strip():
                raise PhotoMakerInputError(f"Style templates in {source}: entry {i} has no name.")
            if not isinstance(prompt, str) or not isinstance(negative, str):
                raise PhotoMakerInputError(
                    f"Style templates in {source}: style {name!r} needs text for "
                    "'prompt' and 'negative_prompt'."
                )
            styles.append(Style(name.strip(), prompt, negative))
        return cls(styles, trigger_word=trigger_word)

    @property
    def names(self) -> list[str]:
        return list(self._styles)

    def __contains__(self, name: object) -> bool:
        return name in self._styles

    def __iter__(self) -> Iterator[Style]:
        return iter(self._styles.values())

    def __len__(self) -> int:
        return len(self._styles)

    def __getitem__(self, name: str) -> Style:
        try:
            return self._styles[name]
        except KeyError:
            raise PhotoMakerInputError(
                f"Unknown style {name!r}. Choose one of: {', '.join(self._styles)}."
            ) from None

    def apply(self, name: str | None, prompt: str, negative_prompt: str = "") -> tuple[str, str]:
        """Apply the style ``name`` (``None`` or empty = no style)."""
        if not name:
            return prompt.strip(), (negative_prompt or "").strip()
        return self[name].apply(prompt, negative_prompt)


def _check(style: Style, trigger_word: str) -> None:
    count = style.prompt.count(PLACEHOLDER)
    if count != 1:
        raise PhotoMakerInputError(
            f"Style {style.name!r}: its prompt must contain {PLACEHOLDER} exactly once "
            f"(found {count} times)."
        )
    for label, text in (
        ("prompt", style.prompt.replace(PLACEHOLDER, "")),
        ("negative prompt", style.negative_prompt),
    ):
        if re.search(r"[{}]", text):
            raise PhotoMakerInputError(
                f"Style {style.name!r}: its {label} has a brace other than {PLACEHOLDER}."
            )
        if re.search(rf"(?<![\w]){re.escape(trigger_word)}(?![\w])", text, flags=re.IGNORECASE):
            raise PhotoMakerInputError(
                f"Style {style.name!r}: its {label} contains the trigger word "
                f"{trigger_word!r}; the trigger word must come only from the user's prompt."
            )


_DEFAULT_BOOK: StyleBook | None = None


def default_styles() -> StyleBook:
    """The project's styles (``style_templates.json``), loaded and checked once."""
    global _DEFAULT_BOOK
    if _DEFAULT_BOOK is None:
        _DEFAULT_BOOK = StyleBook.load()
    return _DEFAULT_BOOK


def style_names() -> list[str]:
    return default_styles().names


def apply_style(name: str | None, prompt: str, negative_prompt: str = "") -> tuple[str, str]:
    """Apply one of the project's styles: returns (prompt, negative prompt)."""
    return default_styles().apply(name, prompt, negative_prompt)
