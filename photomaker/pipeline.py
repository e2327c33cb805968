"""``PhotoMakerStableDiffusionXLPipeline``: SDXL conditioned on a stacked ID embedding.

Drop-in compatible with the official pipeline: built like any SDXL pipeline
(``from_pretrained``, ``from_single_file``, or from components), then
``load_photomaker_adapter(...)``, then called with the usual SDXL arguments plus
``input_id_images`` and ``start_merge_step`` (and ``id_embeds`` for V2).

What PhotoMaker changes in SDXL's loop is one thing: for the first ``start_merge_step + 1``
steps the UNet sees the prompt *without* the trigger word; after that it sees the prompt whose
class-word positions carry the fused ID embedding (and the pooled embedding of those expanded
ids). Everything else — schedulers, CFG, LoRA, offloading — is diffusers' own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    rescale_noise_cfg,
    retrieve_timesteps,
)

from photomaker import prompting
from photomaker.encoders import FuseModule, PhotoMakerIDEncoder
from photomaker.loaders import PhotoMakerLoaderMixin

logger = logging.getLogger(__name__)

PipelineImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | Sequence[PIL.Image.Image] | Sequence[torch.Tensor]

__all__ = ["PhotoMakerStableDiffusionXLPipeline"]


@dataclass
class PhotoMakerConditioning:
    """The prompt embeddings of one PhotoMaker call, already CFG-concatenated when CFG is on.

    ``text`` conditions the steps ``i <= start_merge_step`` (the prompt without the trigger
    word), ``id`` the steps after (the class-word positions carry the fused ID embedding).
    Each is ``(prompt_embeds, pooled_prompt_embeds)``; with CFG the negative half comes first.
    """

    text: tuple[torch.Tensor, torch.Tensor]
    id: tuple[torch.Tensor, torch.Tensor]
    negative: tuple[torch.Tensor, torch.Tensor] | None

    def at_step(self, i: int, start_merge_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text if i <= start_merge_step else self.id


class PhotoMakerStableDiffusionXLPipeline(PhotoMakerLoaderMixin, StableDiffusionXLPipeline):
    """Stable Diffusion XL with PhotoMaker (V1 or V2) identity conditioning.

    Loading lives in :class:`~photomaker.loaders.PhotoMakerLoaderMixin`; this class holds
    only what changes in generation, each step a named method that the Adapter and ControlNet
    variants reuse: :meth:`prepare_id_image_embeds`, :meth:`encode_photomaker_prompt`,
    :meth:`photomaker_unet_kwargs` (extra UNet inputs per step) and the loop in
    :meth:`denoise`.
    """

    # The ID encoder runs first (new photos only), then the text encoders, then the fuse.
    model_cpu_offload_seq = (
        "id_encoder->text_encoder->text_encoder_2->image_encoder->id_fuse_module->unet->vae"
    )
    _optional_components = [
        *StableDiffusionXLPipeline._optional_components,
        "id_encoder",
        "id_fuse_module",
    ]
    _callback_tensor_inputs = [
        "latents",
        "prompt_embeds",
        "add_text_embeds",
        "add_time_ids",
        "prompt_embeds_text_only",
        "add_text_embeds_text_only",
        "negative_prompt_embeds",
        "negative_pooled_prompt_embeds",
    ]

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        scheduler,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt: bool = True,
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
        )
        self.register_modules(id_encoder=id_encoder, id_fuse_module=id_fuse_module)

    def _require_adapter(self) -> PhotoMakerIDEncoder:
        if getattr(self, "id_fuse_module", None) is None:
            raise RuntimeError("Load a PhotoMaker checkpoint first: pipe.load_photomaker_adapter(...)")
        return self.id_encoder

    # ------------------------------------------------------------------ prompts

    def check_prompt(self, prompt: str, num_id_images: int) -> prompting.PromptCheck:
        """Validate a prompt for ``num_id_images`` photos using the tokenizer only (no model).

        Raises :class:`~photomaker.errors.PhotoMakerInputError` with a message for the user.
        """
        self._require_adapter()
        tokenizer = self.tokenizer if self.tokenizer is not None else self.tokenizer_2
        return prompting.check_prompt(
            tokenizer, prompt, num_id_images, self.num_tokens_per_image, self.trigger_word
        )

    def encode_prompt_with_trigger_word(
        self,
        prompt: str,
        prompt_2: str | None = None,
        num_id_images: int = 1,
        device: torch.device | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        class_tokens_mask: torch.Tensor | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt embedding with the class word repeated once per ID vector, and its mask.

        Returns ``(prompt_embeds [1, 77, 2048], pooled_prompt_embeds [1, 1280],
        class_tokens_mask [1, 77])``. The pooled embedding is text encoder 2's projection over
        the expanded ids, so it depends on the number of photos, as in the reference.
        """
        device = device or self._execution_device
        if prompt_embeds is not None:
            if class_tokens_mask is None or pooled_prompt_embeds is None:
                raise ValueError(
                    "With `prompt_embeds`, also pass `pooled_prompt_embeds` and `class_tokens_mask`"
                    " made with the same tokenizer."
                )
            return (
                prompt_embeds.to(device=device, dtype=self.text_encoder_2.dtype),
                pooled_prompt_embeds.to(device),
                class_tokens_mask.to(device),
            )

        num_class_tokens = num_id_images * self.num_tokens_per_image
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        pairs = [(t, e) for t, e in pairs if t is not None and e is not None]
        prompts = [prompt, prompt_2 or prompt][-len(pairs):]
        hidden_layer = -(clip_skip + 2) if clip_skip is not None else -2
        embeds_list = []
        for text, (tokenizer, text_encoder) in zip(prompts, pairs, strict=True):
            expanded = prompting.expand_prompt(tokenizer, text, self.trigger_word, num_class_tokens)
            ids = torch.tensor([expanded.input_ids], dtype=torch.long, device=device)
            output = text_encoder(ids, output_hidden_states=True)
            pooled_prompt_embeds = output[0]  # only the last encoder's (projected) output is kept
            embeds_list.append(output.hidden_states[hidden_layer])
            class_tokens_mask = torch.tensor([expanded.class_tokens_mask], device=device)
        prompt_embeds = torch.cat(embeds_list, dim=-1).to(dtype=self.text_encoder_2.dtype)
        return prompt_embeds, pooled_prompt_embeds, class_tokens_mask

    def ordinary_text(self, text: str | list[str] | None, tokenizer: Any) -> str | list[str] | None:
        """``text`` as ``tokenizer`` must read it where the trigger word means nothing (the
        negative prompt): a trigger word there is encoded as the ordinary word, since its added
        token has no embedding in the text encoders (an index error, a device-side assert on
        CUDA)."""
        if text is None or tokenizer is None:
            return text
        if isinstance(text, list):
            return [prompting.ordinary_text(tokenizer, t, self.trigger_word) for t in text]
        return prompting.ordinary_text(tokenizer, text, self.trigger_word)

    def text_only_prompt(self, prompt: str) -> str:
        """The prompt without its trigger word, as encoded for the first, text-only steps."""
        tokenizer = self.tokenizer if self.tokenizer is not None else self.tokenizer_2
        return prompting.text_only_prompt(tokenizer, prompt, self.trigger_word)

    # ------------------------------------------------------------------ ID images

    def preprocess_id_images(self, input_id_images: PipelineImageInput) -> torch.Tensor:
        """Photos → CLIP pixel values ``[num_photos, 3, 224, 224]`` (float32, on the CPU).

        Runs on the CPU, so a caller (the app on ZeroGPU) can do it before the GPU part and
        send the small tensor instead of the photos."""
        images = list(input_id_images) if isinstance(input_id_images, (list, tuple)) else [input_id_images]
        if not images:
            raise ValueError("`input_id_images` is empty: pass at least one photo of the person")
        if isinstance(images[0], torch.Tensor):
            return torch.stack([img.reshape(img.shape[-3:]) for img in images])
        return self.id_image_processor(images, return_tensors="pt").pixel_values

    @torch.no_grad()
    def encode_id_images(
        self,
        input_id_images: PipelineImageInput,
        id_embeds: torch.Tensor | np.ndarray | None = None,
    ) -> torch.Tensor:
        """Encode ID photos once; pass the result back as ``id_image_embeds=`` to reuse it.

        Returns the prompt-independent ID embeddings ``[num_photos, tokens_per_image,
        2048]``. ``input_id_images`` are photos or the output of :meth:`preprocess_id_images`;
        ``id_embeds`` (V2 only) are the photos' ArcFace embeddings ``[num_photos, 512]``.
        """
        encoder = self._require_adapter()
        pixel_values = self.preprocess_id_images(input_id_images)
        device = self._execution_device
        dtype = encoder.dtype
        pixel_values = pixel_values.unsqueeze(0).to(device=device, dtype=dtype)
        if self.pm_version == "v2":
            if id_embeds is None:
                raise ValueError(
                    "PhotoMaker V2 needs `id_embeds`: one ArcFace face embedding [N, 512] per ID photo"
                )
            id_embeds = torch.as_tensor(id_embeds)
            if id_embeds.ndim != 2 or id_embeds.shape[0] != pixel_values.shape[1]:
                raise ValueError(
                    f"`id_embeds` must be [{pixel_values.shape[1]}, 512], one row per ID photo, "
                    f"not {list(id_embeds.shape)}"
                )
            id_embeds = id_embeds.unsqueeze(0).to(device=device, dtype=dtype)
        # Through the module's own call (not a bare method) so offload hooks place it.
        return encoder(id_pixel_values=pixel_values, id_embeds=id_embeds)[0]

    def prepare_id_image_embeds(
        self,
        input_id_images: PipelineImageInput | None,
        id_embeds: torch.Tensor | np.ndarray | None,
        id_image_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        """The ID image embeddings: given, or encoded from the photos."""
        if id_image_embeds is not None:
            return id_image_embeds
        if input_id_images is None:
            raise ValueError("Pass the person's photos as `input_id_images` (or `id_image_embeds`)")
        return self.encode_id_images(input_id_images, id_embeds)

    def fuse_id_embeddings(
        self,
        prompt_embeds: torch.Tensor,
        id_image_embeds: torch.Tensor,
        class_tokens_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Replace the class-word positions of ``prompt_embeds`` with the stacked ID embedding."""
        self._require_adapter()
        device = prompt_embeds.device
        id_image_embeds = id_image_embeds.to(device=device, dtype=prompt_embeds.dtype).unsqueeze(0)
        return self.id_fuse_module(prompt_embeds, id_image_embeds, class_tokens_mask)

    def encode_photomaker_prompt(
        self,
        prompt: str | None,
        prompt_2: str | None,
        id_image_embeds: torch.Tensor,
        num_images_per_prompt: int,
        device: torch.device,
        do_classifier_free_guidance: bool,
        negative_prompt: str | None = None,
        negative_prompt_2: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        class_tokens_mask: torch.Tensor | None = None,
        prompt_embeds_text_only: torch.Tensor | None = None,
        pooled_prompt_embeds_text_only: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> PhotoMakerConditioning:
        """Both conditionings of a PhotoMaker call, one copy per image, CFG halves joined.

        Text encoding happens before the fuse so that, under model offload, every text
        encoder has finished before the fuse module and then the UNet take the GPU. Passes
        per call: 2 for the prompt with the class word expanded, 4 for the text-only and
        negative prompts (the reference makes 8)."""
        num_id_images = id_image_embeds.shape[0]
        negative_prompt = self.ordinary_text(negative_prompt, self.tokenizer or self.tokenizer_2)
        negative_prompt_2 = self.ordinary_text(negative_prompt_2, self.tokenizer_2)
        prompt_embeds, pooled_prompt_embeds, class_tokens_mask = self.encode_prompt_with_trigger_word(
            prompt=prompt, prompt_2=prompt_2, num_id_images=num_id_images, device=device,
            prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            class_tokens_mask=class_tokens_mask, clip_skip=clip_skip,
        )
        (
            prompt_embeds_text_only,
            negative_prompt_embeds,
            pooled_prompt_embeds_text_only,
            negative_pooled_prompt_embeds,
        ) = self.encode_prompt(
            prompt=self.text_only_prompt(prompt) if prompt_embeds_text_only is None else None,
            prompt_2=prompt_2,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds_text_only,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds_text_only,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )
        prompt_embeds = self.fuse_id_embeddings(prompt_embeds, id_image_embeds, class_tokens_mask)
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        pooled_prompt_embeds = pooled_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        conditions = {
            "text": (prompt_embeds_text_only, pooled_prompt_embeds_text_only),
            "id": (prompt_embeds, pooled_prompt_embeds),
        }
        negative = None
        if do_classifier_free_guidance:
            negative = (negative_prompt_embeds.to(device), negative_pooled_prompt_embeds.to(device))
            conditions = {
                name: (
                    torch.cat([negative[0], embeds.to(device)], dim=0),
                    torch.cat([negative[1], pooled.to(device)], dim=0),
                )
                for name, (embeds, pooled) in conditions.items()
            }
        return PhotoMakerConditioning(text=conditions["text"], id=conditions["id"], negative=negative)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
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
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        # PhotoMaker
        input_id_images: PipelineImageInput | None = None,
        start_merge_step: int = 10,
        class_tokens_mask: torch.Tensor | None = None,
        id_embeds: torch.Tensor | None = None,
        prompt_embeds_text_only: torch.Tensor | None = None,
        pooled_prompt_embeds_text_only: torch.Tensor | None = None,
        id_image_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        r"""Generate images of the person in ``input_id_images``.

        Every argument of ``StableDiffusionXLPipeline.__call__`` works as there (one prompt per
        call; ``num_images_per_prompt`` for several images). PhotoMaker adds:

        Args:
            input_id_images: photos of the person (PIL images, or CLIP-preprocessed tensors).
            start_merge_step: the last step that sees the text-only prompt; the ID embedding
                conditions the steps after it (``i > start_merge_step``). Larger values give
                the text and style more say; the demo uses ``min(int(ratio / 100 * steps), 30)``.
                Default 10, as in the official pipeline.
            id_embeds: V2 only, ArcFace embeddings of the photos, ``[num_photos, 512]``.
            class_tokens_mask: with ``prompt_embeds``, the positions of the class-word copies.
            prompt_embeds_text_only, pooled_prompt_embeds_text_only: precomputed embeddings of
                the prompt without the trigger word.
            id_image_embeds: the output of :meth:`encode_id_images`, to skip encoding the
                photos again; ``input_id_images`` and ``id_embeds`` are then not needed.
        """
        callback = kwargs.pop("callback", None)
        callback_steps = kwargs.pop("callback_steps", None)
        if kwargs:
            raise TypeError(f"Unexpected arguments: {', '.join(kwargs)}")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError("PhotoMaker takes one prompt per call; use num_images_per_prompt")
            prompt = prompt[0]
        self._require_adapter()

        # 0. Default height and width to the UNet's.
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)

        # 1. Check inputs.
        self.check_inputs(
            prompt, prompt_2, height, width, callback_steps, negative_prompt, negative_prompt_2,
            prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
            negative_pooled_prompt_embeds, ip_adapter_image, ip_adapter_image_embeds,
            callback_on_step_end_tensor_inputs,
        )
        if id_image_embeds is None and input_id_images is None:
            raise ValueError("Pass the person's photos as `input_id_images` (or `id_image_embeds`)")
        if prompt_embeds_text_only is None and prompt is None:
            raise ValueError("Pass `prompt`, or `prompt_embeds_text_only` with `prompt_embeds`")
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._denoising_end = denoising_end
        self._interrupt = False
        device = self._execution_device
        batch = num_images_per_prompt

        # 2. The photos → ID image embeddings (prompt-independent; reusable).
        id_image_embeds = self.prepare_id_image_embeds(input_id_images, id_embeds, id_image_embeds)

        # 3. Text-only, ID-fused and negative prompt embeddings.
        conditioning = self.encode_photomaker_prompt(
            prompt, prompt_2, id_image_embeds, batch, device, self.do_classifier_free_guidance,
            negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            class_tokens_mask=class_tokens_mask, prompt_embeds_text_only=prompt_embeds_text_only,
            pooled_prompt_embeds_text_only=pooled_prompt_embeds_text_only,
            negative_prompt_embeds=negative_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=(cross_attention_kwargs or {}).get("scale"), clip_skip=clip_skip,
        )

        # 4. Timesteps and the initial latents (one draw of the generator for all images).
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )
        dtype = conditioning.id[0].dtype
        latents = self.prepare_latents(
            batch, self.unet.config.in_channels, height, width, dtype, device, generator, latents
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 5. Micro-conditioning time ids; IP-Adapter image embeddings if any.
        text_encoder_projection_dim = (
            int(conditioning.id[1].shape[-1])
            if self.text_encoder_2 is None
            else self.text_encoder_2.config.projection_dim
        )
        add_time_ids = self._get_add_time_ids(
            original_size, crops_coords_top_left, target_size, dtype=dtype,
            text_encoder_projection_dim=text_encoder_projection_dim,
        )
        negative_add_time_ids = add_time_ids
        if negative_original_size is not None and negative_target_size is not None:
            negative_add_time_ids = self._get_add_time_ids(
                negative_original_size, negative_crops_coords_top_left, negative_target_size,
                dtype=dtype, text_encoder_projection_dim=text_encoder_projection_dim,
            )
        if self.do_classifier_free_guidance:
            add_time_ids = torch.cat([negative_add_time_ids, add_time_ids], dim=0)
        add_time_ids = add_time_ids.to(device).repeat(batch, 1)
        added_image_embeds = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            added_image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, device, batch,
                self.do_classifier_free_guidance,
            )

        # 6. Optional early end of denoising (ensemble of experts), as in SDXL.
        if denoising_end is not None and 0 < denoising_end < 1:
            cutoff = int(round(self.scheduler.config.num_train_timesteps * (1 - denoising_end)))
            num_inference_steps = len([t for t in timesteps if t >= cutoff])
            timesteps = timesteps[:num_inference_steps]
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(self.guidance_scale - 1).repeat(batch)
            timestep_cond = self.get_guidance_scale_embedding(
                scale, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)

        # 7. Denoise: text-only conditioning while i <= start_merge_step, then the ID.
        latents = self.denoise(
            latents, timesteps, num_inference_steps, conditioning, start_merge_step,
            add_time_ids, extra_step_kwargs, timestep_cond=timestep_cond,
            added_image_embeds=added_image_embeds, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            callback=callback, callback_steps=callback_steps,
        )

        # 8. Decode (not when interrupted: a cancelled call returns its latents as they are).
        if output_type == "latent" or self.interrupt:
            image = latents
        else:
            image = self._decode_latents(latents)
            image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return StableDiffusionXLPipelineOutput(images=image)

    def photomaker_unet_kwargs(
        self, i: int, t: torch.Tensor, latent_model_input: torch.Tensor,
        prompt_embeds: torch.Tensor, added_cond_kwargs: dict[str, torch.Tensor],
    ) -> dict[str, Any]:
        """Extra UNet inputs for step ``i``: none here; the T2I-Adapter and ControlNet
        variants return their residuals."""
        return {}

    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        num_inference_steps: int,
        conditioning: PhotoMakerConditioning,
        start_merge_step: int,
        add_time_ids: torch.Tensor,
        extra_step_kwargs: dict[str, Any],
        timestep_cond: torch.Tensor | None = None,
        added_image_embeds: Any = None,
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: Callable | None = None,
        callback_steps: int | None = None,
    ) -> torch.Tensor:
        """The sampling loop with PhotoMaker's merge switch.

        Step callbacks (``callback_on_step_end``, diffusers' ``PipelineCallback``s) see and
        may replace ``prompt_embeds``/``add_text_embeds`` (the ID conditioning),
        ``prompt_embeds_text_only``/``add_text_embeds_text_only`` (the first steps'),
        ``add_time_ids`` and ``latents``. Guidance is read each step, so a callback may turn
        CFG off (``SDXLCFGCutoffCallback``); a conditioning still holding both halves then
        uses its conditional half.
        """
        state = {
            "prompt_embeds": conditioning.id[0],
            "add_text_embeds": conditioning.id[1],
            "prompt_embeds_text_only": conditioning.text[0],
            "add_text_embeds_text_only": conditioning.text[1],
            "add_time_ids": add_time_ids,
        }
        negative = conditioning.negative or (None, None)
        self._num_timesteps = len(timesteps)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                suffix = "" if i > start_merge_step else "_text_only"
                cfg = self.do_classifier_free_guidance
                rows = latents.shape[0] * (2 if cfg else 1)
                # The conditional half is the last one: what is left once CFG is switched off.
                embeds = state["prompt_embeds" + suffix][-rows:]
                pooled = state["add_text_embeds" + suffix][-rows:]
                time_ids = state["add_time_ids"][-rows:]
                latent_model_input = torch.cat([latents] * 2) if cfg else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                added_cond_kwargs = {"text_embeds": pooled, "time_ids": time_ids}
                if added_image_embeds is not None:
                    added_cond_kwargs["image_embeds"] = added_image_embeds
                noise_pred = self.unet(
                    latent_model_input,
                    t,
                    encoder_hidden_states=embeds,
                    timestep_cond=timestep_cond,
                    cross_attention_kwargs=self.cross_attention_kwargs,
                    added_cond_kwargs=added_cond_kwargs,
                    return_dict=False,
                    **self.photomaker_unet_kwargs(i, t, latent_model_input, embeds, added_cond_kwargs),
                )[0]
                if cfg:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                    if self.guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(
                            noise_pred, noise_pred_text, guidance_rescale=self.guidance_rescale
                        )
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    available = {
                        **state,
                        "latents": latents,
                        "negative_prompt_embeds": negative[0],
                        "negative_pooled_prompt_embeds": negative[1],
                    }
                    outputs = callback_on_step_end(
                        self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    latents = outputs.pop("latents", latents)
                    for key in state:
                        state[key] = outputs.pop(key, state[key])
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()
                    if callback is not None and i % (callback_steps or 1) == 0:
                        callback(i // getattr(self.scheduler, "order", 1), t, latents)
        return latents

    def _decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode, upcasting an fp16 VAE that would overflow, as SDXL does."""
        needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcasting:
            self.upcast_vae()
            latents = latents.to(next(iter(self.vae.post_quant_conv.parameters())).dtype)
        elif latents.dtype != self.vae.dtype:
            latents = latents.to(self.vae.dtype)
        config = self.vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        image = self.vae.decode(latents, return_dict=False)[0]
        if needs_upcasting:
            self.vae.to(dtype=torch.float16)
        return image
