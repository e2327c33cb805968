"""PhotoMaker, open: personalized SDXL photos of a person from a few of their photos.

The heavy modules (diffusers, transformers) load on first use, so that importing a light part
of the package (``photomaker.errors``, ``photomaker.prompting``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from photomaker.errors import PhotoMakerInputError

__version__ = "0.1.0"

_LAZY = {
    "PhotoMakerStableDiffusionXLPipeline": "photomaker.pipeline",
    "PhotoMakerStableDiffusionXLAdapterPipeline": "photomaker.pipeline_adapter",
    "PhotoMakerStableDiffusionXLControlNetPipeline": "photomaker.pipeline_controlnet",
    "PhotoMakerIDEncoder": "photomaker.encoders",
    "PhotoMakerIDEncoderV2": "photomaker.encoders",
    "IDEncoderConfig": "photomaker.encoders",
    "build_id_encoder": "photomaker.encoders",
    "GenerationRequest": "photomaker.service",
    "GenerationResult": "photomaker.service",
    "PhotoMakerService": "photomaker.service",
    "FaceAnalyzer": "photomaker.faces",
    "FaceReport": "photomaker.faces",
}

__all__ = [  # noqa: F822 - the lazy names resolve through __getattr__
    "PhotoMakerInputError",
    "__version__",
    "PhotoMakerStableDiffusionXLPipeline",
    "PhotoMakerStableDiffusionXLAdapterPipeline",
    "PhotoMakerStableDiffusionXLControlNetPipeline",
    "PhotoMakerIDEncoder",
    "PhotoMakerIDEncoderV2",
    "IDEncoderConfig",
    "build_id_encoder",
    "GenerationRequest",
    "GenerationResult",
    "PhotoMakerService",
    "FaceAnalyzer",
    "FaceReport",
]

if TYPE_CHECKING:  # pragma: no cover
    from photomaker.encoders import (
        IDEncoderConfig,
        PhotoMakerIDEncoder,
        PhotoMakerIDEncoderV2,
        build_id_encoder,
    )
    from photomaker.faces import FaceAnalyzer, FaceReport
    from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline
    from photomaker.pipeline_adapter import PhotoMakerStableDiffusionXLAdapterPipeline
    from photomaker.pipeline_controlnet import PhotoMakerStableDiffusionXLControlNetPipeline
    from photomaker.service import GenerationRequest, GenerationResult, PhotoMakerService


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'photomaker' has no attribute {name!r}")
