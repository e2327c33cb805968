"""What a generation takes and gives: the request (field names are the API's parameter
names, defaults from :mod:`photomaker.params`), the job that crosses to the GPU, and the
result with its captions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..params import default


@dataclass
class GenerationRequest:
    """What a person asks for. Field names are the API's parameter names."""

    photos: Sequence[Any]
    prompt: str
    negative_prompt: str = default("negative_prompt")
    style: str = default("style")
    aspect_ratio: str = default("aspect_ratio")
    steps: int = default("steps")
    style_strength: float = default("style_strength")
    num_outputs: int = default("num_outputs")
    guidance_scale: float = default("guidance_scale")
    seed: int = default("seed")
    randomize_seed: bool = default("randomize_seed")
    #: A rough drawing that sets the layout (needs the doodle's T2I-Adapter): a path, PIL
    #: image, numpy array or a Gradio Sketchpad value (a dict with its "composite").
    doodle: Any = None
    #: How strongly the doodle steers (the adapter's residuals are multiplied by it).
    adapter_conditioning_scale: float = default("adapter_conditioning_scale")
    #: The share of the steps, from the first, that the doodle steers.
    adapter_conditioning_factor: float = default("adapter_conditioning_factor")
    #: A control image for the server's ControlNet (``--controlnet``): pose, edges, depth...
    control_image: Any = None
    controlnet_conditioning_scale: float = default("controlnet_conditioning_scale")
    #: Fast mode (:mod:`photomaker.fast`): the server's distillation LoRA, with the mode's own
    #: steps and guidance in place of ``steps`` and ``guidance_scale``.
    fast: bool = default("fast")
    #: A picture whose look the images take on (the IP-Adapter's input): a path, PIL image
    #: or numpy array; None for none.
    style_image: Any = None
    style_image_scale: float = default("style_image_scale")


@dataclass
class PhotoAnalysis:
    """The uploaded photos and, when faces are analysed, one report per photo."""

    images: list[Image.Image]
    reports: list[Any] | None
    messages: list[str] = field(default_factory=list)

    @property
    def captions(self) -> list[str]:
        if self.reports is None:
            return [f"photo {i + 1}" for i in range(len(self.images))]
        out = []
        for i, report in enumerate(self.reports):
            if report.found and report.embedding is not None:
                extra = (
                    f", {report.num_faces} faces, using the largest" if report.num_faces > 1 else ""
                )
                out.append(f"photo {i + 1}: face found ✓{extra}")
            else:
                out.append(f"photo {i + 1}: no face found ✗")
        return out

    @property
    def num_with_face(self) -> int:
        if self.reports is None:
            return len(self.images)
        return sum(1 for r in self.reports if r.found and r.embedding is not None)


@dataclass
class GenerationJob:
    """Everything the GPU part needs; plain data, so it can cross to a ZeroGPU worker.

    The photos travel as the ID encoder's input, ``id_pixel_values`` (CLIP-preprocessed on
    the CPU, ``[N, 3, 224, 224]`` float32: 0.6 MB a photo), with their ArcFace ``id_embeds``
    (V2). On an ID-cache hit both are ``None`` and ``id_image_embeds`` carries the encoding.
    A trigger word in ``negative_prompt`` is read as the ordinary word by the pipeline
    (:meth:`~photomaker.pipeline.PhotoMakerStableDiffusionXLPipeline.ordinary_text`).
    ``doodle`` (the adapter's white-on-black input) and ``control_image`` are small PIL
    images at the output size, or ``None``.
    """

    prompt: str
    negative_prompt: str
    id_pixel_values: torch.Tensor | None
    id_embeds: np.ndarray | None
    id_image_embeds: torch.Tensor | None
    cache_key: str
    start_merge_step: int
    steps: int
    guidance_scale: float
    num_outputs: int
    width: int
    height: int
    seed: int
    doodle: Image.Image | None = None
    adapter_conditioning_scale: float = default("adapter_conditioning_scale")
    adapter_conditioning_factor: float = default("adapter_conditioning_factor")
    control_image: Image.Image | None = None
    controlnet_conditioning_scale: float = default("controlnet_conditioning_scale")
    #: Run with the fast mode's LoRA and scheduler; ``steps`` and ``guidance_scale`` are then
    #: already the mode's (the service put them in).
    fast: bool = False
    #: The style image, as a small RGB PIL image (the image encoder reads 224 px), or None.
    style_image: Image.Image | None = None
    style_image_scale: float = default("style_image_scale")

    @property
    def unet_calls_per_image(self) -> int:
        """UNet evaluations per image: two per step with classifier-free guidance (the
        pipeline's rule: guidance above 1), one without (the fast mode's default)."""
        return self.steps * (2 if self.guidance_scale > 1 else 1)

    def structure_kwargs(self) -> dict[str, Any]:
        """The pipeline arguments of the doodle or the control image; none without them, so
        such a job calls the pipeline exactly as before."""
        if self.doodle is not None:
            return {
                "image": self.doodle,
                "adapter_conditioning_scale": self.adapter_conditioning_scale,
                "adapter_conditioning_factor": self.adapter_conditioning_factor,
            }
        if self.control_image is not None:
            return {
                "image": self.control_image,
                "controlnet_conditioning_scale": self.controlnet_conditioning_scale,
            }
        return {}


@dataclass
class JobOutput:
    images: list[Image.Image]
    id_image_embeds: torch.Tensor | None
    timings: dict[str, float]


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seed: int
    prompt: str
    negative_prompt: str
    style: str
    width: int
    height: int
    start_merge_step: int
    face_reports: list[Any] | None
    messages: list[str]
    timings: dict[str, float]
    # How the images were made, for their PNG metadata (see the request for the user's words).
    steps: int = 0
    style_strength: float = 0.0
    guidance_scale: float = 0.0
    user_prompt: str = ""
    user_negative_prompt: str = ""
    # Structure control, when used (else False / None).
    doodle: bool = False
    adapter_conditioning_scale: float | None = None
    adapter_conditioning_factor: float | None = None
    control_image: bool = False
    controlnet_conditioning_scale: float | None = None
    #: The fast mode's record (:meth:`photomaker.fast.FastMode.record`: its LoRA, scheduler,
    #: steps and guidance) when the images were made in fast mode; None in quality mode.
    fast_mode: dict[str, Any] | None = None
    #: Whether a style image steered the look, and how strongly (None without one).
    style_image: bool = False
    style_image_scale: float | None = None
    #: Each image's ID likeness (None: no face found in it); None for all when it could not
    #: be scored (no face analyzer, or no face in the ID photos): "likeness n/a".
    likeness: list[float | None] | None = None

    def likeness_text(self, index: int) -> str:
        """``likeness 0.62``, ``no face found`` or ``likeness n/a`` for image ``index``."""
        from ..faces import likeness_caption

        if self.likeness is None or index >= len(self.likeness):
            return likeness_caption(None, available=False)
        return likeness_caption(self.likeness[index])

    @property
    def captions(self) -> list[str]:
        n = len(self.images)
        mode = f" · fast, {self.steps} steps" if self.fast_mode else ""
        return [
            f"seed {self.seed} · {self.style}{mode}"
            + (f" · {i + 1}/{n}" if n > 1 else "")
            + f" · {self.likeness_text(i)}"
            for i in range(n)
        ]


