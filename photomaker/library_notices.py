"""Library log notices that are wrong for this app, dropped one exact pattern at a time.

A start of the app printed six warnings from transformers and diffusers, every one of them
expected here, and each reading like a fault to someone watching the log of their Space:

* transformers: "``CLIPImageProcessor`` requires torchvision (not installed); falling back to
  ``CLIPImageProcessorPil`` … Install torchvision". The package is built without torchvision
  on purpose (it does not import beside the CPU wheel, and the PIL processors are the ones
  the ID encoder is tested with), so the advice is wrong. Emitted while diffusers imports.
* diffusers: "There are modules in UNet2DConditionModel that should be kept in float32: [].
  Casting directly with ``to()`` …", from loading an IP-Adapter: the list is *empty*, so
  nothing is kept in float32 and nothing is inconsistent. A non-empty list still shows.
* insightface, through scikit-image: "FutureWarning: ``estimate`` is deprecated since version
  0.26 …" at the first face aligned. InsightFace's call, not ours; the pinned scikit-image
  still has it.
* diffusers: "No LoRA keys associated to CLIPTextModel found …" (twice), when the fast mode's
  distillation LoRA loads: those LoRAs train the UNet only. Dropped only while that LoRA
  loads (:func:`without_text_encoder_lora_notice`); for a style LoRA it may be a real hint.

Filters on the emitting loggers (not on handlers) and one ``warnings`` filter for
InsightFace's module: every other record passes untouched.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: (logger, pattern) of the notices dropped for the whole process.
ALWAYS_DROPPED = (
    (
        "transformers.utils.import_utils",
        re.compile(r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back"),
    ),
    ("diffusers.models.modeling_utils", re.compile(r"should be kept in float32: \[\]\.")),
)
#: The loggers diffusers reports a LoRA without text-encoder keys from, and the pattern.
TEXT_ENCODER_LORA_LOGGERS = ("diffusers.loaders.lora_base", "diffusers.loaders.peft")
TEXT_ENCODER_LORA_NOTICE = re.compile(r"No LoRA keys associated to CLIPTextModel\w* found")


class DropPattern(logging.Filter):
    """Drops the records whose message matches ``pattern``."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


_installed: list[tuple[logging.Logger, DropPattern]] = []


def quiet_library_notices() -> None:
    """Drop :data:`ALWAYS_DROPPED` and InsightFace's deprecation warning from now on
    (idempotent). Called before the models and the face pack load."""
    # Every call (warnings.filterwarnings replaces an identical filter): pytest and
    # catch_warnings() restore the filters on their way out.
    warnings.filterwarnings("ignore", r"`estimate` is deprecated", FutureWarning, r"insightface\.")
    if _installed:
        return
    for name, pattern in ALWAYS_DROPPED:
        logger, drop = logging.getLogger(name), DropPattern(pattern)
        logger.addFilter(drop)
        _installed.append((logger, drop))


@contextmanager
def without_text_encoder_lora_notice() -> Iterator[None]:
    """Drop diffusers' "no LoRA keys for the text encoder" notice inside the block."""
    drop = DropPattern(TEXT_ENCODER_LORA_NOTICE)
    loggers = [logging.getLogger(name) for name in TEXT_ENCODER_LORA_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


@contextmanager
def without_transformers_progress_bars() -> Iterator[None]:
    """transformers' progress bars off inside the block (the tiny models write and load in
    milliseconds: a bar there is only noise in the log), as they were after it."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
