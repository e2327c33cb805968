"""Style templates: validated at load, applied around the user's prompt."""

from __future__ import annotations

import json
import re

import pytest

from photomaker.errors import PhotoMakerInputError
from photomaker.styles import (
    DEFAULT_STYLE,
    NO_STYLE,
    STYLE_FILE,
    StyleBook,
    apply_style,
    default_styles,
)


def test_project_styles_load():
    book = default_styles()
    assert len(book) >= 10
    assert DEFAULT_STYLE in book and NO_STYLE in book
    assert book.names[0] == DEFAULT_STYLE
    raw = json.loads(STYLE_FILE.read_text())
    assert all(entry["prompt"].count("{prompt}") == 1 for entry in raw)


def test_apply_keeps_prompt_and_joins_negatives():
    prompt, negative = apply_style("Watercolor", "a photo of a man img", "blurry")
    assert "a photo of a man img" in prompt and prompt.startswith("watercolor")
    assert negative.endswith(", blurry") and "photorealistic" in negative
    assert apply_style(NO_STYLE, " a woman img ", "") == ("a woman img", "")
    assert apply_style(None, "a woman img", "x") == ("a woman img", "x")


def test_user_braces_are_not_format_fields():
    prompt, _ = apply_style(DEFAULT_STYLE, "a man img holding a sign {hello}")
    assert "{hello}" in prompt


def test_unknown_style_lists_the_choices():
    with pytest.raises(PhotoMakerInputError, match="Unknown style 'Nope'.*Watercolor"):
        apply_style("Nope", "a man img")


@pytest.mark.parametrize(
    "data, message",
    [
        ([{"name": "A", "prompt": "no placeholder"}], "exactly once"),
        ([{"name": "A", "prompt": "{prompt} and {prompt}"}], "exactly once"),
        ([{"name": "A", "prompt": "{prompt}"}, {"name": "A", "prompt": "x {prompt}"}], "twice"),
        ([{"name": "A", "prompt": "{prompt}, {style}"}], "brace"),
        ([{"name": "A", "prompt": "photo img, {prompt}"}], "trigger word"),
        ([{"name": "", "prompt": "{prompt}"}], "no name"),
        ([{"name": "A", "prompt": "{prompt}", "negative": "x"}], "unknown keys"),
        ([{"name": "A", "prompt": 3}], "needs text"),
        ({"oops": 1}, "not an object"),
        ([], "no styles"),
        ("text", "list"),
    ],
)
def test_broken_templates_fail_with_the_style_named(data, message):
    with pytest.raises(PhotoMakerInputError, match=message):
        StyleBook.from_data(data)


def test_load_errors(tmp_path):
    with pytest.raises(PhotoMakerInputError, match="does not exist"):
        StyleBook.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(PhotoMakerInputError, match="not valid JSON"):
        StyleBook.load(bad)


def test_other_trigger_word():
    book = StyleBook.from_data(
        [{"name": "A", "prompt": "{prompt}, img quality"}], trigger_word="sks"
    )
    assert book.apply("A", "a man sks") == ("a man sks, img quality", "")


@pytest.fixture(scope="module")
def tokenizer():
    from photomaker.tiny import clip_tokenizer

    tok = clip_tokenizer()
    tok.add_tokens(["img"], special_tokens=True)
    return tok


@pytest.mark.parametrize("name", default_styles().names)
def test_every_style_keeps_the_trigger_word_and_fits_the_token_budget(tokenizer, name):
    from photomaker.prompting import check_prompt

    prompt, _ = apply_style(name, "a photo of a woman img wearing a red scarf in a park", "blurry")
    assert len(re.findall(r"\bimg\b", prompt)) == 1
    # The check runs on the styled prompt: 4 photos x 2 tokens (V2) still fit in 77 tokens.
    check = check_prompt(tokenizer, prompt, num_id_images=4, tokens_per_image=2, trigger_word="img")
    assert check.class_word == "woman" and check.num_truncated == 0
    # ... and it catches a styled prompt whose class-token block no longer fits.
    long_prompt = ", ".join(["a very long and detailed description"] * 12) + ", a woman img"
    styled, _ = apply_style(name, long_prompt)
    with pytest.raises(PhotoMakerInputError, match="token"):
        check_prompt(tokenizer, styled, num_id_images=4, tokens_per_image=2, trigger_word="img")
