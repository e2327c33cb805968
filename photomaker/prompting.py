"""Trigger-word prompts, on token ids.

PhotoMaker prompts name the person with a class word followed by the trigger word:
"a photo of a woman img in a spacesuit". The trigger token is dropped and the class word
before it is repeated once per ID vector — ``num_photos × tokens_per_image`` times (V1: 1
token per photo, V2: 2) — so that the fuse module can replace each copy with one photo's ID
embedding. Everything here works on token ids from a real CLIP tokenizer and raises
:class:`~photomaker.errors.PhotoMakerInputError` with a message that says what to change, so
the app can check a prompt before any GPU time is spent.

The trigger word is a **whole word in any case** ("a woman img", "a woman IMG,"), never part of
a word ("imgur", "womanimg"). The tokenizers cannot be trusted with that on their own: the
trigger is an *added* token, which the tokenizer matches case-sensitively anywhere in the text,
inside words too. So the prompt is split at the whole-word trigger matches here, each match
becomes the trigger token, and the text between them is encoded as ordinary text
(:func:`ordinary_text`: the tokenizer's lower-casing makes "IMGur" read exactly as "imgur",
while the added token "img" can no longer match inside it). Text that must never carry the
trigger token — the negative prompt, the text-only prompt of the first steps — goes through
:func:`ordinary_text` too: a trigger word there is read as the ordinary word, not refused, and
can no longer reach the text encoder as an id it has no embedding for.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from photomaker.errors import PhotoMakerInputError

__all__ = [
    "ExpandedPrompt",
    "PromptCheck",
    "check_prompt",
    "expand_class_tokens",
    "expand_prompt",
    "ordinary_text",
    "prompt_token_ids",
    "text_only_prompt",
    "trigger_spans",
]

DEFAULT_TRIGGER_WORD = "img"


class Tokenizer(Protocol):  # the part of a transformers tokenizer used here
    model_max_length: int
    pad_token_id: int

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def convert_tokens_to_ids(self, token: str) -> int: ...
    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...


@dataclass(frozen=True)
class ExpandedPrompt:
    """Token ids ready for a text encoder, and where the class-word copies are."""

    input_ids: list[int]
    class_tokens_mask: list[bool]
    class_token_index: int
    class_token_id: int
    #: tokens after the class-token block that did not fit in ``max_length`` and were cut.
    num_truncated: int


@dataclass(frozen=True)
class PromptCheck:
    """What a valid prompt costs, for the UI to show."""

    class_word: str
    num_class_tokens: int
    num_tokens: int
    max_length: int
    num_truncated: int
    text_only: str

    @property
    def warning(self) -> str | None:
        if not self.num_truncated:
            return None
        return (
            f"The prompt is {self.num_truncated} token(s) over the {self.max_length}-token limit "
            "once the class word is repeated for each photo; its end is ignored."
        )


def _trigger_hint(trigger_word: str) -> str:
    return (
        f"add '{trigger_word}' right after the class word, e.g. 'a photo of a woman {trigger_word}'"
    )


# --------------------------------------------------------------------------- the trigger in text


def _trigger_pattern(trigger_word: str, whole_word: bool) -> re.Pattern[str]:
    word = re.escape(trigger_word)
    return re.compile(rf"(?<!\w){word}(?!\w)" if whole_word else word, re.IGNORECASE)


def trigger_spans(text: str, trigger_word: str) -> list[tuple[int, int]]:
    """Where ``trigger_word`` stands in ``text`` as a whole word, in any case.

    A word is letters, digits and underscores, as in the style templates' check: "img," and
    "(IMG)" are the trigger, "imgur", "womanimg" and "img_2" are not."""
    return [m.span() for m in _trigger_pattern(trigger_word, whole_word=True).finditer(text)]


def _words_containing(text: str, trigger_word: str) -> list[str]:
    """The words of ``text`` that contain the trigger word without being it ("imgur")."""
    words = re.findall(r"\w+", text)
    needle = trigger_word.lower()
    return [w for w in words if needle in w.lower() and w.lower() != needle]


def _swap_case(text: str, trigger_word: str) -> str:
    """Every exact occurrence of the trigger word, inside words too, with its case swapped
    ("imgur" → "IMGur"): the tokenizer's added token, which matches its exact text, no longer
    matches, while a lower-casing tokenizer (CLIP) reads the very same ordinary word."""
    return text.replace(trigger_word, trigger_word.swapcase())


def _ordinary_ids(tokenizer: Tokenizer, text: str, trigger_word: str, trigger_id: int) -> list[int]:
    """Token ids of ``text`` read as ordinary words: never the trigger token."""
    if not text:
        return []
    if trigger_word.lower() not in text.lower():
        return tokenizer.encode(text, add_special_tokens=False)
    ids = tokenizer.encode(_swap_case(text, trigger_word), add_special_tokens=False)
    if trigger_id in ids:  # a tokenizer that matches the added token in any case
        raise PhotoMakerInputError(
            f"The text contains the trigger word '{trigger_word}' where it cannot be used "
            f"({', '.join(_words_containing(text, trigger_word)) or trigger_word}): "
            f"remove it, or put it only right after the class word of the prompt."
        )
    return ids


def ordinary_text(tokenizer: Tokenizer, text: str, trigger_word: str) -> str:
    """``text`` rewritten so the tokenizer reads any trigger word in it as an ordinary word.

    For text that must never carry the trigger token: the negative prompt ("bad img quality",
    "imgur watermark") and the text-only prompt of the first steps. With CLIP's tokenizers the
    ids are those of the same text without the added token ("img" → the ordinary "img</w>").
    Raises :class:`PhotoMakerInputError` only for a tokenizer that would still read the
    trigger token (none of SDXL's do).
    """
    if not text or trigger_word.lower() not in text.lower():
        return text
    swapped = _swap_case(text, trigger_word)
    _ordinary_ids(tokenizer, text, trigger_word, tokenizer.convert_tokens_to_ids(trigger_word))
    return swapped


def prompt_token_ids(
    tokenizer: Tokenizer, prompt: str, trigger_word: str, add_special_tokens: bool = True
) -> list[int]:
    """The prompt's token ids, with the trigger token exactly where the trigger word stands as a
    whole word (any case) and ordinary ids everywhere else (see the module docstring)."""
    trigger_id = tokenizer.convert_tokens_to_ids(trigger_word)
    ids: list[int] = []
    start = 0
    for begin, end in trigger_spans(prompt, trigger_word):
        ids += _ordinary_ids(tokenizer, prompt[start:begin], trigger_word, trigger_id)
        ids.append(trigger_id)
        start = end
    ids += _ordinary_ids(tokenizer, prompt[start:], trigger_word, trigger_id)
    if not add_special_tokens:
        return ids
    bos, *eos = tokenizer.encode("")  # CLIP: [BOS, EOS]
    return [bos, *ids, *eos]


def _no_trigger_message(prompt: str, trigger_word: str) -> str:
    inside = _words_containing(prompt, trigger_word)
    if inside:
        return (
            f"The prompt has no trigger word '{trigger_word}' as a whole word ('{inside[0]}' "
            f"only contains it): the trigger word must be a word of its own (any case); "
            f"{_trigger_hint(trigger_word)}."
        )
    return (
        f"The prompt has no trigger word '{trigger_word}' (a whole word, any case): "
        f"{_trigger_hint(trigger_word)}."
    )


def expand_class_tokens(
    token_ids: list[int],
    trigger_token_id: int,
    num_class_tokens: int,
    max_length: int,
    pad_token_id: int,
    trigger_word: str = DEFAULT_TRIGGER_WORD,
    is_word: Callable[[int], bool] | None = None,
) -> ExpandedPrompt:
    """Drop the trigger token and repeat the token before it ``num_class_tokens`` times.

    ``token_ids`` are the tokenizer's ids *with* the special tokens (BOS first, EOS last) and
    without padding. The result is padded with ``pad_token_id`` or cut to ``max_length``.
    ``is_word(token_id)`` tells whether a token can be a class word (not BOS, not
    punctuation); the default accepts anything but the first position.
    """
    positions = [i for i, t in enumerate(token_ids) if t == trigger_token_id]
    if not positions:
        raise PhotoMakerInputError(
            f"The prompt has no trigger word '{trigger_word}' (a whole word, any case): "
            f"{_trigger_hint(trigger_word)}."
        )
    if len(positions) > 1:
        raise PhotoMakerInputError(
            f"The prompt has the trigger word '{trigger_word}' {len(positions)} times; use it "
            f"exactly once, right after the class word, e.g. 'a photo of a man {trigger_word}'."
        )
    trigger_at = positions[0]
    class_index = trigger_at - 1  # the trigger is dropped, so this index holds in both lists
    if class_index < 1 or (is_word is not None and not is_word(token_ids[class_index])):
        raise PhotoMakerInputError(
            f"The trigger word '{trigger_word}' must follow a class word such as man, woman, "
            f"boy, girl or person: {_trigger_hint(trigger_word)}."
        )
    if num_class_tokens < 1:
        raise ValueError("num_class_tokens must be at least 1")

    clean = token_ids[:trigger_at] + token_ids[trigger_at + 1 :]
    class_id = clean[class_index]
    expanded = clean[:class_index] + [class_id] * num_class_tokens + clean[class_index + 1 :]
    block_end = class_index + num_class_tokens
    if class_index >= max_length:
        raise PhotoMakerInputError(
            f"The class word before '{trigger_word}' is at token {class_index + 1}, past the "
            f"model's {max_length}-token limit, so the photos could not be used. Put the "
            f"class word and '{trigger_word}' near the start, e.g. 'a photo of a woman "
            f"{trigger_word}, …'."
        )
    if block_end > max_length:
        over = block_end - max_length
        raise PhotoMakerInputError(
            f"The prompt is too long for {num_class_tokens} ID token(s): the class word is "
            f"repeated once per ID token and {over} of those copies fall past the "
            f"{max_length}-token limit. Shorten the text before the class word by {over} "
            "token(s) or use fewer photos."
        )
    num_truncated = max(0, len(expanded) - max_length)
    expanded = expanded[:max_length] + [pad_token_id] * (max_length - len(expanded))
    mask = [class_index <= i < block_end for i in range(max_length)]
    return ExpandedPrompt(expanded, mask, class_index, class_id, num_truncated)


def is_word_token(tokenizer: Tokenizer, token_id: int) -> bool:
    """True for a token with a letter or digit that is not a special token."""
    if token_id in set(getattr(tokenizer, "all_special_ids", []) or []):
        return False
    token = tokenizer.convert_ids_to_tokens([token_id])[0] or ""
    return re.search(r"[^\W_]", token.replace("</w>", "")) is not None


def expand_prompt(
    tokenizer: Tokenizer, prompt: str, trigger_word: str, num_class_tokens: int
) -> ExpandedPrompt:
    """Tokenize ``prompt`` and expand its class word (see :func:`expand_class_tokens`)."""
    if not trigger_spans(prompt, trigger_word):
        raise PhotoMakerInputError(_no_trigger_message(prompt, trigger_word))
    return expand_class_tokens(
        prompt_token_ids(tokenizer, prompt, trigger_word),
        trigger_token_id=tokenizer.convert_tokens_to_ids(trigger_word),
        num_class_tokens=num_class_tokens,
        max_length=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        trigger_word=trigger_word,
        is_word=lambda token_id: is_word_token(tokenizer, token_id),
    )


def text_only_prompt(tokenizer: Tokenizer, prompt: str, trigger_word: str) -> str:
    """The prompt without its trigger word, decoded from token ids as the reference does.

    Decoding normalises the text the way the tokenizer sees it (lower case, spaces around
    punctuation): "a photo of a woman wearing a red hat , detailed". The result is
    :func:`ordinary_text`, ready for the pipeline's own ``encode_prompt``: a word such as
    "imgur" left in it is read as the ordinary word there too, as in the expanded prompt.
    """
    ids = prompt_token_ids(tokenizer, prompt, trigger_word, add_special_tokens=False)
    trigger_id = tokenizer.convert_tokens_to_ids(trigger_word)
    if trigger_id in ids:
        ids.remove(trigger_id)
    return ordinary_text(tokenizer, tokenizer.decode(ids), trigger_word)


def check_prompt(
    tokenizer: Tokenizer,
    prompt: str,
    num_id_images: int,
    tokens_per_image: int,
    trigger_word: str = DEFAULT_TRIGGER_WORD,
) -> PromptCheck:
    """Validate a prompt for ``num_id_images`` photos without running any model.

    The tokenizer must already know the trigger word (``add_tokens([trigger], special_tokens=True)``,
    which ``load_photomaker_adapter`` does).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise PhotoMakerInputError(
            f"The prompt is empty: describe the picture and {_trigger_hint(trigger_word)}."
        )
    if num_id_images < 1:
        raise PhotoMakerInputError("Upload at least one photo of the person.")
    expanded = expand_prompt(tokenizer, prompt, trigger_word, num_id_images * tokens_per_image)
    class_word = tokenizer.convert_ids_to_tokens([expanded.class_token_id])[0].replace("</w>", "")
    return PromptCheck(
        class_word=class_word,
        num_class_tokens=num_id_images * tokens_per_image,
        num_tokens=min(
            tokenizer.model_max_length,
            len(prompt_token_ids(tokenizer, prompt, trigger_word))
            - 1
            + num_id_images * tokens_per_image
            - 1,
        ),
        max_length=tokenizer.model_max_length,
        num_truncated=expanded.num_truncated,
        text_only=text_only_prompt(tokenizer, prompt, trigger_word),
    )
