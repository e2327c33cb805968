"""Trigger-word prompts on real CLIP token ids (the BPE vocabulary from the open-clip-torch wheel)."""

from __future__ import annotations

import pytest

from photomaker.errors import PhotoMakerInputError
from photomaker.prompting import (
    check_prompt,
    expand_prompt,
    ordinary_text,
    prompt_token_ids,
    text_only_prompt,
    trigger_spans,
)
from photomaker.tiny import clip_tokenizer

BOS, EOS = 49406, 49407
A, PHOTO, OF, WOMAN, MAN, IN, THE, SNOW, COMMA = 320, 1125, 539, 2308, 786, 530, 518, 2583, 267


@pytest.fixture(scope="module")
def tokenizers():
    first, second = clip_tokenizer(), clip_tokenizer(pad_token="!")
    for tok in (first, second):
        tok.add_tokens(["img"], special_tokens=True)
    return first, second


def test_real_clip_ids(tokenizers):
    tok, _ = tokenizers
    assert tok.encode("a photo of a woman") == [BOS, A, PHOTO, OF, A, WOMAN, EOS]
    assert tok.convert_tokens_to_ids("img") == 49408


@pytest.mark.parametrize("version,per_image", [("v1", 1), ("v2", 2)])
@pytest.mark.parametrize("num_photos", [1, 2, 4])
def test_expansion_and_mask(tokenizers, version, per_image, num_photos):
    tok, tok2 = tokenizers
    n = num_photos * per_image
    prompt = "a photo of a woman img in the snow"
    expected_ids = [BOS, A, PHOTO, OF, A] + [WOMAN] * n + [IN, THE, SNOW, EOS]
    for tokenizer, pad in ((tok, EOS), (tok2, 0)):  # SDXL's second tokenizer pads with "!" (id 0)
        out = expand_prompt(tokenizer, prompt, "img", n)
        assert out.input_ids == expected_ids + [pad] * (77 - len(expected_ids))
        assert len(out.input_ids) == 77
        assert [i for i, m in enumerate(out.class_tokens_mask) if m] == list(range(5, 5 + n))
        assert out.class_token_id == WOMAN and out.num_truncated == 0


def test_class_word_mid_sentence(tokenizers):
    tok, _ = tokenizers
    out = expand_prompt(tok, "in the snow, a man img", "img", 2)
    assert out.input_ids[:9] == [BOS, IN, THE, SNOW, COMMA, A, MAN, MAN, EOS]
    assert [i for i, m in enumerate(out.class_tokens_mask) if m] == [6, 7]


def test_text_only_prompt(tokenizers):
    tok, _ = tokenizers
    assert text_only_prompt(tok, "A photo of a woman img wearing a red hat, detailed", "img") == (
        "a photo of a woman wearing a red hat , detailed"
    )


@pytest.mark.parametrize(
    "prompt,message",
    [
        (
            "a photo of a woman",
            "no trigger word 'img'.*right after the class word, e.g. 'a photo of a woman img'",
        ),
        ("a man img and a woman img", "'img' 2 times; use it exactly once"),
        ("img in the snow", "must follow a class word"),
        ("a photo, img in the snow", "must follow a class word"),
        ("", "prompt is empty"),
    ],
)
def test_errors_say_what_to_change(tokenizers, prompt, message):
    with pytest.raises(PhotoMakerInputError, match=message):
        check_prompt(tokenizers[0], prompt, num_id_images=2, tokens_per_image=1)


def test_class_block_cut_by_the_limit_says_by_how_much(tokenizers):
    tok, _ = tokenizers
    filler = " ".join(["red"] * 70)  # 70 tokens
    prompt = f"{filler} woman img"
    # BOS + 70 filler: the class block starts at index 71; 4 photos × 2 tokens end at 79 > 77.
    with pytest.raises(
        PhotoMakerInputError, match=r"Shorten the text before the class word by 2 token"
    ) as err:
        check_prompt(tok, prompt, num_id_images=4, tokens_per_image=2)
    assert "fewer photos" in str(err.value)
    # The same prompt fits with 3 photos × 2 tokens (ends at 77): allowed, EOS cut, warned.
    ok = check_prompt(tok, prompt, num_id_images=3, tokens_per_image=2)
    assert ok.num_truncated == 1 and "1 token(s) over" in ok.warning


def test_a_class_word_past_the_limit_asks_to_move_it_not_for_fewer_photos(tokenizers):
    tok, _ = tokenizers
    prompt = " ".join(["red"] * 80) + " woman img"  # the class word at token 82
    with pytest.raises(PhotoMakerInputError, match=r"at token 82, past the model's 77") as err:
        check_prompt(tok, prompt, num_id_images=1, tokens_per_image=2)
    assert "near the start" in str(err.value) and "fewer photos" not in str(err.value)


def test_long_text_after_the_block_is_only_truncated(tokenizers):
    tok, _ = tokenizers
    prompt = "a woman img " + " ".join(["blue"] * 80)
    check = check_prompt(tok, prompt, num_id_images=2, tokens_per_image=2)
    assert check.class_word == "woman" and check.num_class_tokens == 4
    assert check.num_truncated > 0 and check.num_tokens == 77
    out = expand_prompt(tok, prompt, "img", 4)
    assert out.input_ids[2:6] == [WOMAN] * 4 and len(out.input_ids) == 77


def test_check_reports_cost(tokenizers):
    check = check_prompt(
        tokenizers[0], "a photo of a woman img", num_id_images=3, tokens_per_image=2
    )
    assert check.class_word == "woman"
    assert check.num_tokens == 8 - 1 - 1 + 6  # 8 ids, less the trigger, the class word now 6 copies
    assert check.warning is None


# --------------------------------------------------------------------------- the trigger as a word

IMG_WORD, IM, GUR = 24157, 732, 30224  # the ordinary word "img", and "imgur" = "im" + "gur"


@pytest.mark.parametrize("prompt", ["a woman img", "a woman IMG", "a woman Img,", "(a woman iMg)"])
def test_trigger_is_a_whole_word_in_any_case(tokenizers, prompt):
    out = expand_prompt(tokenizers[0], prompt, "img", 2)
    block = [t for t, m in zip(out.input_ids, out.class_tokens_mask, strict=True) if m]
    assert block == [WOMAN, WOMAN] and out.class_token_id == WOMAN
    assert 49408 not in out.input_ids


@pytest.mark.parametrize("prompt", ["a woman imgur", "a womanimg", "a woman img_2"])
def test_trigger_inside_a_word_is_not_the_trigger(tokenizers, prompt):
    with pytest.raises(PhotoMakerInputError, match="no trigger word 'img'.*whole word"):
        check_prompt(tokenizers[0], prompt, num_id_images=1, tokens_per_image=2)


def test_a_word_containing_the_trigger_is_ordinary_text_in_both_prompts(tokenizers):
    """Expansion and the text-only prompt read "imgur" the same way: as the ordinary word."""
    plain = clip_tokenizer()  # no added token: what ordinary text is
    prompt = "a man IMG wearing an imgur shirt"
    for tokenizer in tokenizers:
        expanded = expand_prompt(tokenizer, prompt, "img", 2).input_ids
        assert expanded[:10] == [BOS, A, MAN, MAN] + plain.encode("wearing an imgur shirt")[1:]
        assert 49408 not in expanded and [IM, GUR] == expanded[6:8]
        text_only = text_only_prompt(tokenizer, prompt, "img")
        assert tokenizer.encode(text_only) == plain.encode("a man wearing an imgur shirt")
        ids = prompt_token_ids(tokenizer, prompt, "img")
        assert [i for i in ids if i != 49408] == tokenizer.encode(text_only)


@pytest.mark.parametrize("negative", ["bad img quality", "imgur watermark", "IMG, Img; img"])
def test_ordinary_text_never_carries_the_trigger_token(tokenizers, negative):
    plain = clip_tokenizer()
    for tokenizer in tokenizers:
        assert 49408 in tokenizer.encode(negative.lower())  # what crashed the text encoder
        safe = ordinary_text(tokenizer, negative, "img")
        assert tokenizer.encode(safe) == plain.encode(negative)
    assert ordinary_text(tokenizers[0], "lowres, blurry", "img") == "lowres, blurry"


def test_other_trigger_words(tokenizers):
    tok = clip_tokenizer()
    tok.add_tokens(["sks"], special_tokens=True)
    assert trigger_spans("a SKS dog, sksx, (sks)", "sks") == [(2, 5), (18, 21)]
    out = expand_prompt(tok, "a photo of a dog Sks", "sks", 1)
    assert out.class_token_id == tok.encode("dog")[1]
