"""photomaker/library_notices.py: the library notices that are wrong for this app are dropped
at their loggers, and nothing else is (a non-empty float32 list, a style LoRA's hint)."""

from __future__ import annotations

import logging
import warnings

import pytest

from photomaker.library_notices import (
    DropPattern,
    quiet_library_notices,
    without_text_encoder_lora_notice,
)


def drops(name: str) -> list[DropPattern]:
    """This module's filters on a logger (diffusers puts its own there too)."""
    return [f for f in logging.getLogger(name).filters if isinstance(f, DropPattern)]


class Seen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def seen():
    """A handler on every logger the module filters (transformers' do not propagate)."""
    names = ("transformers.utils.import_utils", "diffusers.models.modeling_utils",
             "diffusers.loaders.lora_base", "diffusers.loaders.peft")  # fmt: skip
    handler = Seen()
    for name in names:
        logging.getLogger(name).addHandler(handler)
    yield handler
    for name in names:
        logging.getLogger(name).removeHandler(handler)


TORCHVISION = (
    "`CLIPImageProcessor` requires torchvision (not installed); falling back to "
    "`CLIPImageProcessorPil` for backward compatibility. Install torchvision to use the default "
    "backend, or import `CLIPImageProcessorPil` directly to silence this warning."
)
EMPTY_FP32 = (
    "There are modules in UNet2DConditionModel that should be kept in float32: []. Casting "
    "directly with `to()` can lead to inconsistent results; set `torch_dtype` in "
    "`from_pretrained()` instead to keep these modules in float32."
)
NO_TE_KEYS = (
    "No LoRA keys associated to CLIPTextModelWithProjection found with the prefix='text_encoder_2'"
    ". This is safe to ignore if LoRA state dict didn't originally have any "
    "CLIPTextModelWithProjection related params."
)


def test_known_notices_are_dropped_and_real_ones_kept(seen):
    quiet_library_notices()
    quiet_library_notices()  # idempotent: one filter per logger
    assert len(drops("diffusers.models.modeling_utils")) == 1
    logging.getLogger("transformers.utils.import_utils").warning(TORCHVISION)
    logging.getLogger("diffusers.models.modeling_utils").warning(EMPTY_FP32)
    real = EMPTY_FP32.replace("[]", "['norm_out']")
    logging.getLogger("diffusers.models.modeling_utils").warning(real)
    logging.getLogger("transformers.utils.import_utils").warning("Could not import module 'X'.")
    assert seen.messages == [real, "Could not import module 'X'."]


def test_the_text_encoder_lora_notice_is_dropped_only_while_the_fast_lora_loads(seen):
    with without_text_encoder_lora_notice():
        logging.getLogger("diffusers.loaders.lora_base").warning(NO_TE_KEYS)
        logging.getLogger("diffusers.loaders.peft").warning(
            NO_TE_KEYS.replace("WithProjection", "")
        )
        logging.getLogger("diffusers.loaders.peft").warning("Adapter 'fast' already loaded.")
    logging.getLogger("diffusers.loaders.lora_base").warning(NO_TE_KEYS)  # a style LoRA's hint
    assert seen.messages == ["Adapter 'fast' already loaded.", NO_TE_KEYS]
    assert not drops("diffusers.loaders.lora_base")


def test_insightfaces_deprecation_warning_is_dropped_and_others_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_notices()
        message = "`estimate` is deprecated since version 0.26 and will be removed in version 2.2."
        for module in ("insightface.utils.face_align", "photomaker.faces"):
            warnings.warn_explicit(message, FutureWarning, "face_align.py", 23, module=module)
    assert [str(w.message) for w in caught] == [message]  # photomaker's own still shows
