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

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    rescale_noise_cfg,
    retrieve_timesteps,
)
from huggingface_hub.utils import validate_hf_hub_args

from photomaker import checkpoints, prompting
from photomaker.encoders import IDEncoderConfig, PhotoMakerIDEncoder

try:  # transformers >= 5 names the PIL-based processor explicitly (no torchvision needed)
    from transformers import CLIPImageProcessorPil as _CLIPImageProcessor
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import CLIPImageProcessor as _CLIPImageProcessor

logger = logging.getLogger(__name__)

PipelineImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | Sequence[PIL.Image.Image] | Sequence[torch.Tensor]

__all__ = ["PhotoMakerStableDiffusionXLPipeline"]


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    target = logging.getLogger(logger_name)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


class PhotoMakerStableDiffusionXLPipeline(StableDiffusionXLPipeline):
    """Stable Diffusion XL with PhotoMaker (V1 or V2) identity conditioning."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]

    # Set by load_photomaker_adapter.
    id_encoder: PhotoMakerIDEncoder | None = None
    pm_version: str | None = None
    trigger_word: str = prompting.DEFAULT_TRIGGER_WORD
    num_tokens_per_image: int = 1

    # ------------------------------------------------------------------ loading

    @validate_hf_hub_args
    def load_photomaker_adapter(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, Any],
        weight_name: str | None = None,
        subfolder: str = "",
        trigger_word: str = prompting.DEFAULT_TRIGGER_WORD,
        pm_version: str = "v2",
        id_encoder_config: IDEncoderConfig | None = None,
        **kwargs,
    ) -> None:
        """Load a PhotoMaker checkpoint: the ID encoder, the UNet LoRA and the trigger word.

        Args:
            pretrained_model_name_or_path_or_dict: a Hub repo id (``"TencentARC/PhotoMaker-V2"``),
                a local folder, a ``.bin``/``.safetensors`` file, or a state dict with the
                entries ``id_encoder`` and ``lora_weights``.
            weight_name: the file inside the repo or folder (default ``photomaker-v1.bin`` /
                ``photomaker-v2.bin`` by version).
            subfolder: a folder inside the repo or folder.
            trigger_word: the word that follows the class word in prompts.
            pm_version: ``"v1"`` or ``"v2"``.
            id_encoder_config: sizes of the ID encoder; the official ones by default.
            kwargs: passed to ``huggingface_hub.hf_hub_download`` (``cache_dir``, ``token``,
                ``revision``, ``local_files_only``, ...).
        """
        if pm_version not in ("v1", "v2"):
            raise ValueError(f"pm_version must be 'v1' or 'v2', not {pm_version!r}")
        state = checkpoints.load_photomaker_state_dict(
            pretrained_model_name_or_path_or_dict, weight_name, subfolder, pm_version, **kwargs
        )

        encoder = checkpoints.load_id_encoder(state["id_encoder"], pm_version, id_encoder_config)
        self.id_encoder = encoder.to(device=self.device, dtype=self.unet.dtype)
        self.id_image_processor = _CLIPImageProcessor()
        self.pm_version = pm_version
        self.num_tokens_per_image = encoder.tokens_per_image

        # The LoRA, as a named PEFT adapter so users can add, weigh and fuse their own.
        if "photomaker" in self._adapter_names():
            self.delete_adapters("photomaker")
        lora = checkpoints.convert_lora_to_peft(state["lora_weights"], dtype=self.unet.dtype)
        with _quiet("diffusers.loaders"):  # it notes, harmlessly, that no text-encoder keys exist
            self.load_lora_weights(lora, adapter_name="photomaker")

        # The trigger word, as one token in both tokenizers.
        self.trigger_word = trigger_word
        for tokenizer in (self.tokenizer, self.tokenizer_2):
            if tokenizer is not None and trigger_word not in tokenizer.get_vocab():
                tokenizer.add_tokens([trigger_word], special_tokens=True)
        logger.info("PhotoMaker %s adapter loaded (trigger word %r)", pm_version, trigger_word)

    def to(self, *args, **kwargs):
        """Move and cast like any pipeline, taking the ID encoder (not a component) along."""
        pipe = super().to(*args, **kwargs)
        if self.id_encoder is not None:
            self.id_encoder.to(device=self.device, dtype=self.unet.dtype)
        return pipe

    def _adapter_names(self) -> set[str]:
        try:
            return {name for names in self.get_list_adapters().values() for name in names}
        except (ValueError, AttributeError):
            return set()

    def _require_adapter(self) -> PhotoMakerIDEncoder:
        if self.id_encoder is None:
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

    def text_only_prompt(self, prompt: str) -> str:
        """The prompt without its trigger word, as encoded for the first, text-only steps."""
        tokenizer = self.tokenizer if self.tokenizer is not None else self.tokenizer_2
        return prompting.text_only_prompt(tokenizer, prompt, self.trigger_word)

    # ------------------------------------------------------------------ ID images

    @contextlib.contextmanager
    def _id_encoder_on(self, device: torch.device) -> Iterator[PhotoMakerIDEncoder]:
        """The ID encoder on ``device``; with model CPU offload it goes back afterwards."""
        encoder = self._require_adapter()
        home = next(encoder.parameters()).device
        if home == torch.device(device):
            yield encoder
            return
        offloading = bool(getattr(self, "_all_hooks", None))
        encoder.to(device)
        try:
            yield encoder
        finally:
            if offloading:  # keep VRAM free between calls, like the other offloaded models
                encoder.to(home)

    @torch.no_grad()
    def encode_id_images(
        self,
        input_id_images: PipelineImageInput,
        id_embeds: torch.Tensor | np.ndarray | None = None,
    ) -> torch.Tensor:
        """Encode ID photos once; pass the result back as ``id_image_embeds=`` to reuse it.

        Returns the prompt-independent ID embeddings ``[num_photos, tokens_per_image,
        2048]``. ``id_embeds`` (V2 only) are the photos' ArcFace embeddings ``[num_photos, 512]``.
        """
        encoder = self._require_adapter()
        images = list(input_id_images) if isinstance(input_id_images, (list, tuple)) else [input_id_images]
        if not images:
            raise ValueError("`input_id_images` is empty: pass at least one photo of the person")
        if isinstance(images[0], torch.Tensor):
            pixel_values = torch.stack([img.reshape(img.shape[-3:]) for img in images])
        else:
            pixel_values = self.id_image_processor(images, return_tensors="pt").pixel_values
        device = self._execution_device
        dtype = next(encoder.parameters()).dtype
        pixel_values = pixel_values.unsqueeze(0).to(device=device, dtype=dtype)
        if self.pm_version == "v2":
            if id_embeds is None:
                raise ValueError(
                    "PhotoMaker V2 needs `id_embeds`: one ArcFace face embedding [N, 512] per ID photo"
                )
            id_embeds = torch.as_tensor(id_embeds)
            if id_embeds.ndim != 2 or id_embeds.shape[0] != len(images):
                raise ValueError(
                    f"`id_embeds` must be [{len(images)}, 512], one row per ID photo, "
                    f"not {list(id_embeds.shape)}"
                )
            id_embeds = id_embeds.unsqueeze(0).to(device=device, dtype=dtype)
        with self._id_encoder_on(device) as encoder:
            return encoder.encode_id_images(pixel_values, id_embeds)[0]

    def fuse_id_embeddings(
        self,
        prompt_embeds: torch.Tensor,
        id_image_embeds: torch.Tensor,
        class_tokens_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Replace the class-word positions of ``prompt_embeds`` with the stacked ID embedding."""
        device = prompt_embeds.device
        with self._id_encoder_on(device) as encoder:
            fused = encoder.fuse_module(prompt_embeds, id_image_embeds.to(device).unsqueeze(0), class_tokens_mask)
        return fused

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
        start_merge_step: int = 0,
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
        batch_size = 1
        device = self._execution_device
        lora_scale = (cross_attention_kwargs or {}).get("scale")

        # 2. The photos → ID image embeddings (prompt-independent; reusable).
        if id_image_embeds is None:
            id_image_embeds = self.encode_id_images(input_id_images, id_embeds)
        num_id_images = id_image_embeds.shape[0]

        # 3. The prompt with its class word expanded, and the stacked ID embedding fused in.
        prompt_embeds, pooled_prompt_embeds, class_tokens_mask = self.encode_prompt_with_trigger_word(
            prompt=prompt, prompt_2=prompt_2, num_id_images=num_id_images, device=device,
            prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            class_tokens_mask=class_tokens_mask, clip_skip=clip_skip,
        )
        prompt_embeds = self.fuse_id_embeddings(prompt_embeds, id_image_embeds, class_tokens_mask)

        # 4. The prompt without the trigger word (first steps), and the negative prompt (CFG).
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
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds_text_only,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds_text_only,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )

        # 5. One copy of the ID prompt per image.
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        pooled_prompt_embeds = pooled_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)

        # 6. Timesteps and the initial latents (one draw of the generator for all images).
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )
        latents = self.prepare_latents(
            batch_size * num_images_per_prompt, self.unet.config.in_channels, height, width,
            prompt_embeds.dtype, device, generator, latents,
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 7. Micro-conditioning time ids; IP-Adapter image embeddings if any.
        text_encoder_projection_dim = (
            int(pooled_prompt_embeds.shape[-1])
            if self.text_encoder_2 is None
            else self.text_encoder_2.config.projection_dim
        )
        add_time_ids = self._get_add_time_ids(
            original_size, crops_coords_top_left, target_size, dtype=prompt_embeds.dtype,
            text_encoder_projection_dim=text_encoder_projection_dim,
        )
        negative_add_time_ids = add_time_ids
        if negative_original_size is not None and negative_target_size is not None:
            negative_add_time_ids = self._get_add_time_ids(
                negative_original_size, negative_crops_coords_top_left, negative_target_size,
                dtype=prompt_embeds.dtype, text_encoder_projection_dim=text_encoder_projection_dim,
            )
        cfg = self.do_classifier_free_guidance
        conditions = {  # (prompt embedding, pooled embedding) before and after the merge step
            "text": (prompt_embeds_text_only, pooled_prompt_embeds_text_only),
            "id": (prompt_embeds, pooled_prompt_embeds),
        }
        if cfg:
            conditions = {
                name: (
                    torch.cat([negative_prompt_embeds, embeds], dim=0).to(device),
                    torch.cat([negative_pooled_prompt_embeds, pooled], dim=0).to(device),
                )
                for name, (embeds, pooled) in conditions.items()
            }
            add_time_ids = torch.cat([negative_add_time_ids, add_time_ids], dim=0)
        add_time_ids = add_time_ids.to(device).repeat(batch_size * num_images_per_prompt, 1)
        added_image_embeds = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            added_image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, device,
                batch_size * num_images_per_prompt, cfg,
            )

        # 8. Optional early end of denoising (ensemble of experts), as in SDXL.
        if denoising_end is not None and 0 < denoising_end < 1:
            cutoff = int(round(self.scheduler.config.num_train_timesteps * (1 - denoising_end)))
            num_inference_steps = len([t for t in timesteps if t >= cutoff])
            timesteps = timesteps[:num_inference_steps]
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(self.guidance_scale - 1).repeat(batch_size * num_images_per_prompt)
            timestep_cond = self.get_guidance_scale_embedding(
                scale, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)

        # 9. Denoising loop: text-only conditioning while i <= start_merge_step, then the ID.
        self._num_timesteps = len(timesteps)
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                current_embeds, add_text_embeds = conditions["text" if i <= start_merge_step else "id"]
                latent_model_input = torch.cat([latents] * 2) if cfg else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                added_cond_kwargs = {"text_embeds": add_text_embeds, "time_ids": add_time_ids}
                if added_image_embeds is not None:
                    added_cond_kwargs["image_embeds"] = added_image_embeds
                noise_pred = self.unet(
                    latent_model_input,
                    t,
                    encoder_hidden_states=current_embeds,
                    timestep_cond=timestep_cond,
                    cross_attention_kwargs=cross_attention_kwargs,
                    added_cond_kwargs=added_cond_kwargs,
                    return_dict=False,
                )[0]
                if cfg:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
                    if guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=guidance_rescale)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    available = {
                        "latents": latents,
                        "prompt_embeds": current_embeds,
                        "add_text_embeds": add_text_embeds,
                        "add_time_ids": add_time_ids,
                    }
                    outputs = callback_on_step_end(
                        self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    latents = outputs.pop("latents", latents)
                    add_time_ids = outputs.pop("add_time_ids", add_time_ids)
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()
                    if callback is not None and i % (callback_steps or 1) == 0:
                        callback(i // getattr(self.scheduler, "order", 1), t, latents)

        # 10. Decode.
        if output_type == "latent":
            image = latents
        else:
            image = self._decode_latents(latents)
            image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return StableDiffusionXLPipelineOutput(images=image)

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
