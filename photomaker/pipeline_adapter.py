"""``PhotoMakerStableDiffusionXLAdapterPipeline``: PhotoMaker plus a T2I-Adapter (the doodle).

A drop-in for the reference package's class of the same name: built like diffusers'
``StableDiffusionXLAdapterPipeline`` (the SDXL components plus ``adapter=T2IAdapter``), then
``load_photomaker_adapter(...)``, then called with everything the PhotoMaker pipeline takes
plus ``image`` (the sketch), ``adapter_conditioning_scale`` and ``adapter_conditioning_factor``.

The adapter is a small network that turns the sketch into one feature map per UNet down block;
the UNet adds them inside its down blocks (``down_intrablock_additional_residuals``) during the
first ``int(steps × adapter_conditioning_factor)`` steps, so the layout is set early and the
details are left to the prompt and the ID. Everything PhotoMaker does — prompt expansion, ID
fuse, merge switch — is :class:`~photomaker.pipeline.PhotoMakerStableDiffusionXLPipeline`'s own
code: this class only adds the residuals through its ``photomaker_unet_kwargs`` hook.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import MultiAdapter, StableDiffusionXLAdapterPipeline, T2IAdapter
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from diffusers.pipelines.t2i_adapter.pipeline_stable_diffusion_xl_adapter import (
    _preprocess_adapter_image,
)

from photomaker.encoders import FuseModule, PhotoMakerIDEncoder
from photomaker.pipeline import PhotoMakerConditioning, PhotoMakerStableDiffusionXLPipeline

logger = logging.getLogger(__name__)

__all__ = ["PhotoMakerStableDiffusionXLAdapterPipeline", "doodle_image"]

AdapterImage = PIL.Image.Image | torch.Tensor | list[PIL.Image.Image] | list[torch.Tensor]


@dataclass
class _AdapterRequest:
    """What one call asked of the adapter: its preprocessed input(s) and the two knobs."""

    inputs: torch.Tensor | list[torch.Tensor]
    scale: float | list[float]
    factor: float
    states: list[torch.Tensor] | None = None  # the residuals, once computed (CFG halves joined)
    last_step: int = 0  # residuals go to steps i < last_step


class PhotoMakerStableDiffusionXLAdapterPipeline(PhotoMakerStableDiffusionXLPipeline):
    """SDXL with PhotoMaker identity conditioning and T2I-Adapter structure (e.g. a sketch).

    Without an ``image`` (or with ``adapter_conditioning_scale=0`` or
    ``adapter_conditioning_factor`` giving no step) it makes exactly the images of
    :class:`~photomaker.pipeline.PhotoMakerStableDiffusionXLPipeline`, so one pipeline serves
    requests with and without a doodle.
    """

    # The adapter runs once per call, after the prompt is fused and before the UNet, so it can
    # take its turn in the offload chain (and leave the GPU when the UNet comes).
    model_cpu_offload_seq = (
        "id_encoder->text_encoder->text_encoder_2->image_encoder->id_fuse_module->adapter->unet->vae"
    )
    # Optional so that ``from_pretrained`` of a plain SDXL repo works; the sketch then needs one.
    _optional_components = [*PhotoMakerStableDiffusionXLPipeline._optional_components, "adapter"]

    # diffusers' own: the output size from the sketch, rounded down to the adapter's factor.
    _default_height_width = StableDiffusionXLAdapterPipeline._default_height_width

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        adapter: T2IAdapter | MultiAdapter | list[T2IAdapter] | None,
        scheduler,
        force_zeros_for_empty_prompt: bool = True,
        feature_extractor=None,
        image_encoder=None,
        add_watermarker: bool | None = None,
        id_encoder: PhotoMakerIDEncoder | None = None,
        id_fuse_module: FuseModule | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
            id_encoder=id_encoder,
            id_fuse_module=id_fuse_module,
        )
        if isinstance(adapter, (list, tuple)):
            adapter = MultiAdapter(adapter)
        self.register_modules(adapter=adapter)
        self._adapter_request: _AdapterRequest | None = None

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image: AdapterImage | list[AdapterImage] | None = None,
        height: int | None = None,
        width: int | None = None,
        *,
        adapter_conditioning_scale: float | list[float] = 1.0,
        adapter_conditioning_factor: float = 1.0,
        **kwargs: Any,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        r"""Generate images of the person in ``input_id_images``, laid out like ``image``.

        Every argument of :meth:`PhotoMakerStableDiffusionXLPipeline.__call__` works as there.
        The adapter adds (names and meaning as in diffusers' ``StableDiffusionXLAdapterPipeline``):

        Args:
            image: the adapter's input: for the sketch adapter, white strokes on black (see
                :func:`doodle_image`), a PIL image or a ``[B, C, H, W]`` tensor in [0, 1];
                one per adapter for a ``MultiAdapter``. Resized to the output size, which
                defaults to the image's own, rounded down to the adapter's factor. ``None``:
                no structure control, the plain PhotoMaker images.
            adapter_conditioning_scale: multiplies the adapter's residuals (one per adapter
                for a ``MultiAdapter``). The reference demo offers 0.5–1.0.
            adapter_conditioning_factor: the fraction of the steps that get the residuals, the
                first ``int(steps × factor)``. The reference demo offers 0.5–1.0.
        """
        if image is None:
            return super().__call__(prompt, prompt_2, height=height, width=width, **kwargs)
        if self.adapter is None:
            raise ValueError(
                "This pipeline has no T2I-Adapter: build it with `adapter=T2IAdapter...` to use `image`"
            )
        height, width = self._default_height_width(height, width, image)
        if isinstance(self.adapter, MultiAdapter):
            if not isinstance(image, (list, tuple)) or len(image) != len(self.adapter.adapters):
                raise ValueError(
                    f"A MultiAdapter needs one image per adapter ({len(self.adapter.adapters)})"
                )
            inputs: torch.Tensor | list[torch.Tensor] = [
                _preprocess_adapter_image(one, height, width) for one in image
            ]
            if not isinstance(adapter_conditioning_scale, (list, tuple)):
                adapter_conditioning_scale = [adapter_conditioning_scale] * len(inputs)
            scale = [float(s) for s in adapter_conditioning_scale]
        else:
            inputs = _preprocess_adapter_image(image, height, width)
            scale = float(adapter_conditioning_scale)
        self._adapter_request = _AdapterRequest(inputs, scale, adapter_conditioning_factor)
        try:
            return super().__call__(prompt, prompt_2, height=height, width=width, **kwargs)
        finally:
            self._adapter_request = None

    def prepare_adapter_states(
        self, request: _AdapterRequest, batch: int, device: torch.device
    ) -> list[torch.Tensor]:
        """Run the adapter once: its residuals, scaled, one row per image, CFG halves joined.

        As in diffusers, a ``MultiAdapter`` weighs its adapters by the scales itself."""
        dtype = self.adapter.dtype
        if isinstance(request.inputs, list):
            inputs = [x.to(device=device, dtype=dtype) for x in request.inputs]
            states = list(self.adapter(inputs, request.scale))
        else:
            states = [
                s * request.scale
                for s in self.adapter(request.inputs.to(device=device, dtype=dtype))
            ]
        rows = states[0].shape[0]
        if rows not in (1, batch):
            raise ValueError(f"Pass one sketch (or {batch}, one per image), not {rows}")
        states = [s.repeat(batch // rows, 1, 1, 1) for s in states]
        if self.do_classifier_free_guidance:
            states = [torch.cat([s, s]) for s in states]
        return states

    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        num_inference_steps: int,
        conditioning: PhotoMakerConditioning,
        start_merge_step: int,
        add_time_ids: torch.Tensor,
        extra_step_kwargs: dict[str, Any],
        **kwargs: Any,
    ) -> torch.Tensor:
        """The parent's loop, after the adapter has run once (here, where the step count is
        final — ``denoising_end`` may have cut it — and the prompt encoders are done)."""
        request = self._adapter_request
        if request is not None:
            # diffusers' rule, over the steps actually run: residuals while i < int(steps × factor).
            request.last_step = int(num_inference_steps * request.factor)
            scales = request.scale if isinstance(request.scale, list) else [request.scale]
            if request.last_step > 0 and any(s != 0 for s in scales):
                request.states = self.prepare_adapter_states(
                    request, latents.shape[0], latents.device
                )
        return super().denoise(
            latents,
            timesteps,
            num_inference_steps,
            conditioning,
            start_merge_step,
            add_time_ids,
            extra_step_kwargs,
            **kwargs,
        )

    def photomaker_unet_kwargs(
        self,
        i: int,
        t: torch.Tensor,
        latent_model_input: torch.Tensor,
        prompt_embeds: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor],
    ) -> dict[str, Any]:
        """The adapter's residuals for the UNet's down blocks, during the first steps.

        A new list every step: the UNet pops the residuals off the list it is given. The last
        ``rows`` rows are taken, so a step callback that switches CFG off keeps working."""
        unet_kwargs = super().photomaker_unet_kwargs(
            i, t, latent_model_input, prompt_embeds, added_cond_kwargs
        )
        request = self._adapter_request
        if request is not None and request.states is not None and i < request.last_step:
            rows = latent_model_input.shape[0]
            unet_kwargs["down_intrablock_additional_residuals"] = [
                s[-rows:] for s in request.states
            ]
        return unet_kwargs


def doodle_image(
    sketch: PIL.Image.Image | np.ndarray,
    width: int,
    height: int,
    threshold: int = 128,
) -> PIL.Image.Image | None:
    """A drawing → the sketch adapter's input at the output size, or ``None`` if it is blank.

    The SDXL sketch adapter was trained on white lines on black. A drawing with transparency
    (Gradio's Sketchpad composite, RGBA) has its strokes where it is opaque, whatever their
    colour — as the reference demo reads it. In an opaque drawing (or a canvas with a solid
    background) the strokes are what differs from the paper, the colour of most of its
    border: dark strokes on light paper, or light strokes on dark paper (the adapter's own
    white-on-black, as an API client or an edge detector may send it). Either way the result
    is binary white-on-black RGB of ``width × height`` (stretched, like the reference, so the
    layout maps onto the whole picture). Runs on the CPU.
    """
    image = PIL.Image.fromarray(sketch) if isinstance(sketch, np.ndarray) else sketch
    alpha = None
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
    if alpha is not None and alpha.min() < threshold:  # strokes on a transparent canvas
        strokes = alpha >= threshold
    else:  # an opaque drawing: the strokes differ from the paper (most of the border)
        dark = np.asarray(image.convert("L")) < threshold
        border = np.concatenate([dark[0], dark[-1], dark[:, 0], dark[:, -1]])
        strokes = ~dark if border.mean() > 0.5 else dark
    if not strokes.any():
        return None
    mask = PIL.Image.fromarray((strokes * 255).astype(np.uint8)).resize(
        (int(width), int(height)), PIL.Image.Resampling.BILINEAR
    )
    binary = (np.asarray(mask) >= 128).astype(np.uint8) * 255
    return PIL.Image.fromarray(binary).convert("RGB")
