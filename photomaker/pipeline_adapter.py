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
code: this class only adds the residuals, prepared once per call in ``prepare_control`` and
handed explicitly to its ``photomaker_unet_kwargs`` hook at every step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import MultiAdapter, StableDiffusionXLAdapterPipeline, T2IAdapter
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput

from photomaker.encoders import FuseModule, PhotoMakerIDEncoder
from photomaker.pipeline import (
    PhotoMakerConditioning,
    PhotoMakerStableDiffusionXLPipeline,
    PipelineImageInput,
    call_arguments,
    call_docstring,
    prompt_batch_size,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AdapterControl",
    "AdapterInputs",
    "PhotoMakerStableDiffusionXLAdapterPipeline",
    "adapter_image_tensor",
    "doodle_image",
]

AdapterImage = PIL.Image.Image | torch.Tensor | list[PIL.Image.Image] | list[torch.Tensor]


ADAPTER_ARGS_DOC = """\
    image: the adapter's input: for the sketch adapter, white strokes on black (see
        :func:`doodle_image`), a PIL image or a ``[B, C, H, W]`` tensor in [0, 1]; one per
        adapter for a ``MultiAdapter``. Resized to the output size, which defaults to the
        image's own, rounded down to the adapter's factor. ``None``: no structure control,
        the plain PhotoMaker images.
    adapter_conditioning_scale: multiplies the adapter's residuals (one per adapter for a
        ``MultiAdapter``). The reference demo offers 0.5–1.0.
    adapter_conditioning_factor: the fraction of the steps that get the residuals, the first
        ``int(steps × factor)``. The reference demo offers 0.5–1.0.
"""


@dataclass(frozen=True)
class AdapterInputs:
    """What one call asked of the adapter: its preprocessed input(s) and the two knobs."""

    inputs: torch.Tensor | list[torch.Tensor]
    scale: float | list[float]
    factor: float
    num_prompts: int = 1  # one sketch per prompt serves that prompt's images


@dataclass(frozen=True)
class AdapterControl:
    """The adapter's residuals for one call (one row per image, CFG halves joined), given to
    the UNet's down blocks at the steps ``i < last_step``."""

    states: list[torch.Tensor]
    last_step: int


def adapter_image_tensor(image: AdapterImage, height: int, width: int) -> torch.Tensor:
    """The adapter's input as a ``[B, C, height, width]`` float tensor in [0, 1].

    PIL images are resized (Lanczos) and divided by 255, as diffusers' adapter pipeline
    reads them; tensors are taken as they are (``[C, H, W]`` stacked, ``[B, C, H, W]``
    concatenated)."""
    if isinstance(image, torch.Tensor):
        return image
    images = [image] if isinstance(image, PIL.Image.Image) else list(image)
    if isinstance(images[0], torch.Tensor):
        return torch.stack(images) if images[0].ndim == 3 else torch.cat(images)
    arrays = []
    for one in images:
        array = np.asarray(one.resize((width, height), PIL.Image.Resampling.LANCZOS))
        arrays.append(array[None, ..., None] if array.ndim == 2 else array[None])
    batch = np.concatenate(arrays).astype(np.float32) / 255.0
    return torch.from_numpy(batch.transpose(0, 3, 1, 2))


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

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image: AdapterImage | list[AdapterImage] | None = None,
        height: int | None = None,
        width: int | None = None,
        *,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: Any | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        # PhotoMaker
        input_id_images: PipelineImageInput | None = None,
        start_merge_step: int = 10,
        class_tokens_mask: torch.Tensor | None = None,
        id_embeds: torch.Tensor | None = None,
        prompt_embeds_text_only: torch.Tensor | None = None,
        pooled_prompt_embeds_text_only: torch.Tensor | None = None,
        id_image_embeds: torch.Tensor | None = None,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int | None = None,
        # T2I-Adapter
        adapter_conditioning_scale: float | list[float] = 1.0,
        adapter_conditioning_factor: float = 1.0,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        control_inputs = None
        if image is not None:
            if self.adapter is None:
                raise ValueError(
                    "This pipeline has no T2I-Adapter: build it with `adapter=T2IAdapter...` to use `image`"
                )
            height, width = self._default_height_width(height, width, image)
            num_prompts = prompt_batch_size(prompt, prompt_embeds, prompt_embeds_text_only)
            control_inputs = self.check_adapter_inputs(
                image, height, width, adapter_conditioning_scale, adapter_conditioning_factor,
                num_prompts=num_prompts,
            )  # fmt: skip
        arguments = {**call_arguments(locals()), "height": height, "width": width}
        return self._generate(**arguments, control_inputs=control_inputs)

    __call__.__doc__ = call_docstring(
        "Generate images of the person in ``input_id_images``, laid out like ``image``.\n\n"
        "The adapter's arguments are named and mean as in diffusers'\n"
        "``StableDiffusionXLAdapterPipeline``.",
        ADAPTER_ARGS_DOC,
    )

    def check_adapter_inputs(
        self,
        image: AdapterImage | list[AdapterImage],
        height: int,
        width: int,
        adapter_conditioning_scale: float | list[float],
        adapter_conditioning_factor: float,
        num_prompts: int = 1,
    ) -> AdapterInputs:
        """The adapter's part of a call, checked, its image(s) as tensors at the output size.
        ``num_prompts``: the prompt batch, which one sketch per prompt must match."""
        if isinstance(self.adapter, MultiAdapter):
            if not isinstance(image, (list, tuple)) or len(image) != len(self.adapter.adapters):
                raise ValueError(
                    f"A MultiAdapter needs one image per adapter ({len(self.adapter.adapters)})"
                )
            inputs: torch.Tensor | list[torch.Tensor] = [
                adapter_image_tensor(one, height, width) for one in image
            ]
            if not isinstance(adapter_conditioning_scale, (list, tuple)):
                adapter_conditioning_scale = [adapter_conditioning_scale] * len(inputs)
            scale: float | list[float] = [float(s) for s in adapter_conditioning_scale]
        else:
            inputs = adapter_image_tensor(image, height, width)
            scale = float(adapter_conditioning_scale)
        return AdapterInputs(inputs, scale, float(adapter_conditioning_factor), num_prompts)

    def prepare_control(
        self,
        control_inputs: AdapterInputs | None,
        conditioning: PhotoMakerConditioning,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        num_inference_steps: int,
    ) -> AdapterControl | None:
        """Run the adapter once: its residuals, scaled, one row per image, CFG halves joined.

        Here, where the step count is final (``denoising_end`` may have cut it) and the prompt
        encoders are done. As in diffusers, a ``MultiAdapter`` weighs its adapters by the
        scales itself. ``None`` when no step would get the residuals."""
        if control_inputs is None:
            return None
        # diffusers' rule, over the steps actually run: residuals while i < int(steps × factor).
        last_step = int(num_inference_steps * control_inputs.factor)
        scale = control_inputs.scale
        if last_step <= 0 or not any(s != 0 for s in (scale if isinstance(scale, list) else [scale])):
            return None
        batch, device, dtype = latents.shape[0], latents.device, self.adapter.dtype
        if isinstance(control_inputs.inputs, list):
            inputs = [x.to(device=device, dtype=dtype) for x in control_inputs.inputs]
            states = list(self.adapter(inputs, scale))
        else:
            states = [s * scale for s in self.adapter(control_inputs.inputs.to(device=device, dtype=dtype))]
        rows, prompts = states[0].shape[0], control_inputs.num_prompts
        if rows not in (1, prompts, batch):
            per_prompt = f", {prompts}, one per prompt," if prompts not in (1, batch) else ""
            raise ValueError(f"Pass one sketch{per_prompt} or {batch}, one per image, not {rows}")
        # One per prompt: repeated for that prompt's images, which sit next to each other.
        states = [s.repeat_interleave(batch // rows, dim=0) for s in states]
        if self.do_classifier_free_guidance:
            states = [torch.cat([s, s]) for s in states]
        return AdapterControl(states, last_step)

    def photomaker_unet_kwargs(
        self,
        i: int,
        t: torch.Tensor,
        latent_model_input: torch.Tensor,
        prompt_embeds: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor],
        control: AdapterControl | None = None,
    ) -> dict[str, Any]:
        """The adapter's residuals for the UNet's down blocks, during the first steps.

        A new list every step: the UNet pops the residuals off the list it is given. The last
        ``rows`` rows are taken, so a step callback that switches CFG off keeps working."""
        unet_kwargs = super().photomaker_unet_kwargs(
            i, t, latent_model_input, prompt_embeds, added_cond_kwargs, control
        )
        if control is not None and i < control.last_step:
            rows = latent_model_input.shape[0]
            unet_kwargs["down_intrablock_additional_residuals"] = [
                s[-rows:] for s in control.states
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
