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
ControlNet residuals reach the UNet through its ``photomaker_unet_kwargs`` hook.

As in the reference, the ControlNet is conditioned on the *text-only* prompt embedding at
every step, also after the merge step: ControlNets are trained on plain SDXL prompts, and the
fused ID vectors in the class-word positions are not text they have seen. (The pooled
embedding and time ids are those of the step, as the reference passes them.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from diffusers.utils.torch_utils import is_compiled_module

from photomaker.encoders import FuseModule, PhotoMakerIDEncoder
from photomaker.pipeline import PhotoMakerConditioning, PhotoMakerStableDiffusionXLPipeline

logger = logging.getLogger(__name__)

__all__ = ["PhotoMakerStableDiffusionXLControlNetPipeline"]


@dataclass
class _ControlRequest:
    """What one call asked of the ControlNet(s), and what the loop needs from it per step."""

    images: PipelineImageInput | list[PipelineImageInput]
    scales: list[float]
    starts: list[float]
    ends: list[float]
    guess_mode: bool
    height: int
    width: int
    prepared: torch.Tensor | list[torch.Tensor] | None = None  # CFG halves joined unless guess mode
    keep: list[list[float]] = field(default_factory=list)  # per step, per ControlNet: 1.0 or 0.0
    text_embeds: torch.Tensor | None = None  # the text-only prompt embedding, CFG halves joined


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
        self._control_request: _ControlRequest | None = None

    @property
    def _controlnet(self) -> ControlNetModel | MultiControlNetModel:
        return self.controlnet._orig_mod if is_compiled_module(self.controlnet) else self.controlnet

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image: PipelineImageInput | list[PipelineImageInput] = None,
        height: int | None = None,
        width: int | None = None,
        *,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        **kwargs: Any,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        r"""Generate images of the person in ``input_id_images``, structured by ``image``.

        Every argument of :meth:`PhotoMakerStableDiffusionXLPipeline.__call__` works as there.
        ControlNet adds (names and meaning as in diffusers' ``StableDiffusionXLControlNetPipeline``):

        Args:
            image: the control image (one per ControlNet for a ``MultiControlNetModel``): PIL,
                numpy or a tensor in [0, 1]. The output size defaults to its size, rounded down
                to a multiple of the VAE factor. ``None`` (unlike diffusers, which requires
                one): no control, the plain PhotoMaker images, so one loaded pipeline serves
                requests with and without a control image.
            controlnet_conditioning_scale: multiplies the ControlNet residuals (one per net).
            guess_mode: run the ControlNet on the conditional half only (no prompt needed).
            control_guidance_start, control_guidance_end: the fraction of the steps in which
                each ControlNet acts.
        """
        if image is None:  # no structure control: the plain PhotoMaker images
            return super().__call__(prompt, prompt_2, height=height, width=width, **kwargs)
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
        # check; a placeholder prompt of one stands for PhotoMaker's one prompt per call.
        StableDiffusionXLControlNetPipeline.check_inputs(
            self,
            "",
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
        self._control_request = _ControlRequest(
            images=image,
            scales=[float(s) for s in scales],
            starts=list(control_guidance_start),
            ends=list(control_guidance_end),
            guess_mode=bool(guess_mode or global_pool),
            height=height,
            width=width,
        )
        try:
            return super().__call__(prompt, prompt_2, height=height, width=width, **kwargs)
        finally:
            self._control_request = None

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
        """The parent's loop, once the control images are prepared for this batch and the
        keep list is known (over all scheduler timesteps, as diffusers counts them)."""
        request = self._control_request
        if request is not None:
            controlnet = self._controlnet
            batch = latents.shape[0]

            def prepare(image: PipelineImageInput) -> torch.Tensor:
                return self.prepare_image(
                    image=image,
                    width=request.width,
                    height=request.height,
                    batch_size=batch,
                    num_images_per_prompt=batch,
                    device=latents.device,
                    dtype=controlnet.dtype,
                    do_classifier_free_guidance=self.do_classifier_free_guidance,
                    guess_mode=request.guess_mode,
                )

            if isinstance(controlnet, MultiControlNetModel):
                request.prepared = [prepare(image) for image in request.images]
            else:
                request.prepared = prepare(request.images)
            request.keep = control_keep(len(self.scheduler.timesteps), request.starts, request.ends)
            request.text_embeds = conditioning.text[0]
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
        """Run the ControlNet(s) for step ``i``; their residuals go to the UNet's down and mid
        blocks. Skipped (the plain PhotoMaker step) when every net's scale is 0 at this step."""
        unet_kwargs = super().photomaker_unet_kwargs(
            i, t, latent_model_input, prompt_embeds, added_cond_kwargs
        )
        request = self._control_request
        if request is None:
            return unet_kwargs
        scales = [s * k for s, k in zip(request.scales, request.keep[i], strict=True)]
        if not any(scales):
            return unet_kwargs
        rows = latent_model_input.shape[0]
        text_embeds = request.text_embeds[-rows:]
        cond = {
            "text_embeds": added_cond_kwargs["text_embeds"],
            "time_ids": added_cond_kwargs["time_ids"],
        }
        control_input = latent_model_input
        cfg = self.do_classifier_free_guidance  # read each step, as the loop does
        if request.guess_mode and cfg:
            # The ControlNet sees only the conditional half; the unconditional half gets zeros.
            control_input = latent_model_input.chunk(2)[1]
            text_embeds = text_embeds.chunk(2)[1]
            cond = {k: v.chunk(2)[1] for k, v in cond.items()}
        control_rows = control_input.shape[0]
        if isinstance(request.prepared, list):
            control_image: torch.Tensor | list[torch.Tensor] = [
                p[-control_rows:] for p in request.prepared
            ]
            conditioning_scale: float | list[float] = scales
        else:
            control_image = request.prepared[-control_rows:]
            conditioning_scale = scales[0]
        down, mid = self.controlnet(
            control_input,
            t,
            encoder_hidden_states=text_embeds,
            controlnet_cond=control_image,
            conditioning_scale=conditioning_scale,
            guess_mode=request.guess_mode,
            added_cond_kwargs=cond,
            return_dict=False,
        )
        if request.guess_mode and cfg:
            down = [torch.cat([torch.zeros_like(d), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        unet_kwargs["down_block_additional_residuals"] = down
        unet_kwargs["mid_block_additional_residual"] = mid
        return unet_kwargs
