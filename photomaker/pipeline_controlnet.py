"""``PhotoMakerStableDiffusionXLControlNetPipeline``: PhotoMaker plus ControlNet(s).

A drop-in for the reference package's class of the same name: built like diffusers'
``StableDiffusionXLControlNetPipeline`` (the SDXL components plus ``controlnet=`` one
``ControlNetModel``, a list of them or a ``MultiControlNetModel``), then
``load_photomaker_adapter(...)``, then called with everything the PhotoMaker pipeline takes
plus ``image`` (the control image), ``controlnet_conditioning_scale``, ``guess_mode`` and
``control_guidance_start`` / ``control_guidance_end``.

Input checks, control-image preparation and the per-step keep rule are diffusers' own
(``check_inputs``, ``check_image``, ``prepare_image``); PhotoMaker's prompt expansion, ID fuse
and merge switch are :class:`~photomaker.pipeline.PhotoMakerStableDiffusionXLPipeline`'s. The
ControlNet runs inside its ``photomaker_unet_kwargs`` hook, from the call's
:class:`ControlNetControl` (prepared once in ``prepare_control``, passed explicitly).

As in the reference, the ControlNet is conditioned on the *text-only* prompt embedding at
every step, also after the merge step: ControlNets are trained on plain SDXL prompts, and the
fused ID vectors in the class-word positions are not text they have seen. (The pooled
embedding and time ids are those of the step, as the reference passes them.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from diffusers.utils.torch_utils import is_compiled_module

from photomaker.encoders import FuseModule, PhotoMakerIDEncoder
from photomaker.pipeline import (
    PhotoMakerConditioning,
    PhotoMakerStableDiffusionXLPipeline,
    call_arguments,
    call_docstring,
    prompt_batch_size,
)

logger = logging.getLogger(__name__)

__all__ = ["PhotoMakerStableDiffusionXLControlNetPipeline"]


CONTROLNET_ARGS_DOC = """\
    image: the control image (one per ControlNet for a ``MultiControlNetModel``): PIL, numpy
        or a tensor in [0, 1]. The output size defaults to its size, rounded down to a
        multiple of the VAE factor. ``None`` (unlike diffusers, which requires one): no
        control, the plain PhotoMaker images, so one loaded pipeline serves requests with and
        without a control image.
    controlnet_conditioning_scale: multiplies the ControlNet residuals (one per net).
    guess_mode: run the ControlNet on the conditional half only (no prompt needed).
    control_guidance_start, control_guidance_end: the fraction of the steps in which each
        ControlNet acts.
"""


def _image_count(image: PipelineImageInput) -> int:
    """How many images a control input holds: a list's length, a 4-D array's first side."""
    if isinstance(image, list):
        return max(1, len(image))
    if isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 4:
        return max(1, image.shape[0])
    return 1


@dataclass(frozen=True)
class ControlNetInputs:
    """What one call asked of the ControlNet(s), checked."""

    images: PipelineImageInput | list[PipelineImageInput]
    scales: list[float]
    starts: list[float]
    ends: list[float]
    guess_mode: bool
    height: int
    width: int


@dataclass(frozen=True)
class ControlNetControl:
    """What the loop needs from the ControlNet(s) of one call, per step."""

    prepared: torch.Tensor | list[torch.Tensor]  # CFG halves joined unless guess mode
    scales: list[float]
    keep: list[list[float]]  # per step, per ControlNet: 1.0 or 0.0
    text_embeds: torch.Tensor  # the text-only prompt embedding, CFG halves joined
    guess_mode: bool


def control_keep(num_steps: int, starts: list[float], ends: list[float]) -> list[list[float]]:
    """diffusers' rule: ControlNet ``k`` acts at step ``i`` unless ``i / n < start_k`` or
    ``(i + 1) / n > end_k``, over the ``n`` scheduler timesteps (before ``denoising_end``)."""
    return [
        [
            1.0 - float(i / num_steps < s or (i + 1) / num_steps > e)
            for s, e in zip(starts, ends, strict=True)
        ]
        for i in range(num_steps)
    ]


class PhotoMakerStableDiffusionXLControlNetPipeline(PhotoMakerStableDiffusionXLPipeline):
    """SDXL with PhotoMaker identity conditioning and ControlNet structure (pose, edges, depth…).

    Without an ``image``, or where every net's scale is 0 at a step (``controlnet_conditioning_scale
    =0``, outside ``control_guidance_start/end``), the ControlNet is not run and the step is
    exactly the plain PhotoMaker pipeline's.
    """

    # ControlNets run at every step next to the UNet, so (as in diffusers) they stay out of the
    # offload chain: each gets its own hook and stays on the GPU once called.
    model_cpu_offload_seq = PhotoMakerStableDiffusionXLPipeline.model_cpu_offload_seq

    # diffusers' own checks and preparation of the control image(s).
    check_image = StableDiffusionXLControlNetPipeline.check_image
    prepare_image = StableDiffusionXLControlNetPipeline.prepare_image

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        controlnet: ControlNetModel
        | list[ControlNetModel]
        | tuple[ControlNetModel, ...]
        | MultiControlNetModel,
        scheduler,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
        feature_extractor=None,
        image_encoder=None,
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
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(controlnet)
        self.register_modules(controlnet=controlnet)
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )

    @property
    def _controlnet(self) -> ControlNetModel | MultiControlNetModel:
        return self.controlnet._orig_mod if is_compiled_module(self.controlnet) else self.controlnet

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image: PipelineImageInput | list[PipelineImageInput] | None = None,
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
        # ControlNet
        controlnet_conditioning_scale: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        control_inputs = None
        if image is not None:
            num_prompts = prompt_batch_size(prompt, prompt_embeds, prompt_embeds_text_only)
            control_inputs = self.check_control_inputs(
                image, height, width, controlnet_conditioning_scale, guess_mode,
                control_guidance_start, control_guidance_end, num_prompts=num_prompts,
            )
            height, width = control_inputs.height, control_inputs.width
        arguments = {**call_arguments(locals()), "height": height, "width": width}
        return self._generate(**arguments, control_inputs=control_inputs)

    __call__.__doc__ = call_docstring(
        "Generate images of the person in ``input_id_images``, structured by ``image``.\n\n"
        "ControlNet's arguments are named and mean as in diffusers'\n"
        "``StableDiffusionXLControlNetPipeline``.",
        CONTROLNET_ARGS_DOC,
    )

    def check_control_inputs(
        self,
        image: PipelineImageInput | list[PipelineImageInput],
        height: int | None,
        width: int | None,
        controlnet_conditioning_scale: float | list[float],
        guess_mode: bool,
        control_guidance_start: float | list[float],
        control_guidance_end: float | list[float],
        num_prompts: int = 1,
    ) -> ControlNetInputs:
        """The ControlNet part of a call, checked by diffusers' own ``check_inputs``, and the
        output size (default: the control image's). ``num_prompts``: the prompt batch, which
        one control image per prompt must match, as in diffusers."""
        controlnet = self._controlnet
        num_nets = len(controlnet.nets) if isinstance(controlnet, MultiControlNetModel) else 1
        # Align the per-net lists as diffusers does.
        if not isinstance(control_guidance_start, list) and isinstance(control_guidance_end, list):
            control_guidance_start = len(control_guidance_end) * [control_guidance_start]
        elif not isinstance(control_guidance_end, list) and isinstance(
            control_guidance_start, list
        ):
            control_guidance_end = len(control_guidance_start) * [control_guidance_end]
        elif not isinstance(control_guidance_start, list):
            control_guidance_start = num_nets * [control_guidance_start]
            control_guidance_end = num_nets * [control_guidance_end]
        if isinstance(controlnet_conditioning_scale, (int, float)):
            controlnet_conditioning_scale = float(controlnet_conditioning_scale)
        # diffusers' checks of the control inputs. The prompt and the rest are the parent's to
        # check (in _generate); placeholder prompts, as many as the call's, stand in here.
        StableDiffusionXLControlNetPipeline.check_inputs(
            self,
            [""] * num_prompts if num_prompts > 1 else "",
            None,
            image,
            None,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
        )
        scales = (
            list(controlnet_conditioning_scale)
            if isinstance(controlnet_conditioning_scale, (list, tuple))
            else [controlnet_conditioning_scale] * num_nets
        )
        first = image[0] if isinstance(controlnet, MultiControlNetModel) else image
        while isinstance(first, list):
            first = first[0]
        height, width = self.control_image_processor.get_default_height_width(first, height, width)
        global_pool = (
            controlnet.config.global_pool_conditions
            if isinstance(controlnet, ControlNetModel)
            else controlnet.nets[0].config.global_pool_conditions
        )
        return ControlNetInputs(
            images=image,
            scales=[float(s) for s in scales],
            starts=list(control_guidance_start),
            ends=list(control_guidance_end),
            guess_mode=bool(guess_mode or global_pool),
            height=height,
            width=width,
        )

    def prepare_control(
        self,
        control_inputs: ControlNetInputs | None,
        conditioning: PhotoMakerConditioning,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        num_inference_steps: int,
    ) -> ControlNetControl | None:
        """The control images prepared for this batch, and the keep list (over all scheduler
        timesteps, as diffusers counts them)."""
        if control_inputs is None:
            return None
        controlnet = self._controlnet
        batch = latents.shape[0]

        def prepare(image: PipelineImageInput) -> torch.Tensor:
            # One image serves the whole batch; one per prompt is repeated for that prompt's
            # images (diffusers' prepare_image reads its num_images_per_prompt so).
            return self.prepare_image(
                image=image,
                width=control_inputs.width,
                height=control_inputs.height,
                batch_size=batch,
                num_images_per_prompt=max(1, batch // _image_count(image)),
                device=latents.device,
                dtype=controlnet.dtype,
                do_classifier_free_guidance=self.do_classifier_free_guidance,
                guess_mode=control_inputs.guess_mode,
            )

        if isinstance(controlnet, MultiControlNetModel):
            prepared: torch.Tensor | list[torch.Tensor] = [prepare(i) for i in control_inputs.images]
        else:
            prepared = prepare(control_inputs.images)
        return ControlNetControl(
            prepared=prepared,
            scales=control_inputs.scales,
            keep=control_keep(len(self.scheduler.timesteps), control_inputs.starts, control_inputs.ends),
            text_embeds=conditioning.text[0],
            guess_mode=control_inputs.guess_mode,
        )

    def photomaker_unet_kwargs(
        self,
        i: int,
        t: torch.Tensor,
        latent_model_input: torch.Tensor,
        prompt_embeds: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor],
        control: ControlNetControl | None = None,
    ) -> dict[str, Any]:
        """Run the ControlNet(s) for step ``i``; their residuals go to the UNet's down and mid
        blocks. Skipped (the plain PhotoMaker step) when every net's scale is 0 at this step."""
        unet_kwargs = super().photomaker_unet_kwargs(
            i, t, latent_model_input, prompt_embeds, added_cond_kwargs, control
        )
        if control is None:
            return unet_kwargs
        scales = [s * k for s, k in zip(control.scales, control.keep[i], strict=True)]
        if not any(scales):
            return unet_kwargs
        rows = latent_model_input.shape[0]
        text_embeds = control.text_embeds[-rows:]
        cond = {
            "text_embeds": added_cond_kwargs["text_embeds"],
            "time_ids": added_cond_kwargs["time_ids"],
        }
        control_input = latent_model_input
        cfg = self.do_classifier_free_guidance  # read each step, as the loop does
        if control.guess_mode and cfg:
            # The ControlNet sees only the conditional half; the unconditional half gets zeros.
            control_input = latent_model_input.chunk(2)[1]
            text_embeds = text_embeds.chunk(2)[1]
            cond = {k: v.chunk(2)[1] for k, v in cond.items()}
        control_rows = control_input.shape[0]
        if isinstance(control.prepared, list):
            control_image: torch.Tensor | list[torch.Tensor] = [
                p[-control_rows:] for p in control.prepared
            ]
            conditioning_scale: float | list[float] = scales
        else:
            control_image = control.prepared[-control_rows:]
            conditioning_scale = scales[0]
        down, mid = self.controlnet(
            control_input,
            t,
            encoder_hidden_states=text_embeds,
            controlnet_cond=control_image,
            conditioning_scale=conditioning_scale,
            guess_mode=control.guess_mode,
            added_cond_kwargs=cond,
            return_dict=False,
        )
        if control.guess_mode and cfg:
            down = [torch.cat([torch.zeros_like(d), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        unet_kwargs["down_block_additional_residuals"] = down
        unet_kwargs["mid_block_additional_residual"] = mid
        return unet_kwargs
