"""``PhotoMakerStableDiffusionXLPipeline``: SDXL conditioned on a stacked ID embedding.

Drop-in compatible with the official pipeline: built like any SDXL pipeline
(``from_pretrained``, ``from_single_file``, or from components), then
``load_photomaker_adapter(...)``, then called with the usual SDXL arguments plus
``input_id_images`` and ``start_merge_step`` (and ``id_embeds`` for V2).

What PhotoMaker changes in SDXL's loop is one thing: for the first ``start_merge_step + 1``
steps the UNet sees the prompt *without* the trigger word; after that it sees the prompt whose
class-word positions carry the fused ID embedding (and the pooled embedding of those expanded
ids). Everything else — schedulers, CFG, LoRA, offloading — is diffusers' own.

Everything the pipeline needs to know about the loaded adapter is read off its registered
components (the version and token count from ``id_encoder``, the trigger word from
``id_fuse_module``), so ``PhotoMakerStableDiffusionXLPipeline(**pipe.components)`` — diffusers'
way to share models between pipelines — is the same pipeline.

The Adapter and ControlNet variants (:mod:`photomaker.pipeline_adapter`,
:mod:`photomaker.pipeline_controlnet`) share :meth:`~PhotoMakerStableDiffusionXLPipeline._generate`
with it: their structure control enters as an explicit per-call value (``control_inputs`` →
:meth:`prepare_control` → ``denoise(control=...)`` → :meth:`photomaker_unet_kwargs`), never as
state on the pipeline object.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Callable, Iterator, Sequence
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
from diffusers.utils import (
    USE_PEFT_BACKEND,
    is_invisible_watermark_available,
    scale_lora_layers,
    unscale_lora_layers,
)

from photomaker import prompting
from photomaker.encoders import FuseModule, PhotoMakerIDEncoder
from photomaker.loaders import PhotoMakerLoaderMixin

logger = logging.getLogger(__name__)

PipelineImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | Sequence[PIL.Image.Image] | Sequence[torch.Tensor]

__all__ = ["PhotoMakerStableDiffusionXLPipeline", "call_arguments", "call_docstring"]

# --------------------------------------------------------------------------- documentation

#: The arguments every PhotoMaker pipeline's ``__call__`` shares, documented once; the
#: Adapter and ControlNet pipelines compose their docstrings from these (:func:`call_docstring`).
SDXL_ARGS_DOC = """\
    prompt: the prompt, or a list of prompts for one batch, each with the trigger word right
        after the class word ("a photo of a woman img"). The person is the same for all of
        them: one ID embedding is shared, and every step is one UNet call for the batch.
    prompt_2: the prompt(s) for ``tokenizer_2``/``text_encoder_2`` (default: ``prompt``). With
        the trigger word it is expanded like ``prompt``; without it, read as plain text. The ID
        goes where ``prompt``'s class word stands.
    height, width: the output size in pixels (default: the UNet's sample size × VAE factor).
    num_inference_steps: the number of denoising steps.
    timesteps, sigmas: a custom schedule, for schedulers that accept one.
    denoising_end: stop at this fraction (0–1) of the schedule, to hand over to a refiner.
    guidance_scale: classifier-free guidance weight; ``<= 1`` turns CFG off.
    negative_prompt, negative_prompt_2: what to steer away from: one, or one per prompt. A
        trigger word there is read as the ordinary word.
    num_images_per_prompt: images per prompt. A call makes ``len(prompt) ×
        num_images_per_prompt`` images, those of one prompt next to each other.
    eta: DDIM's η (other schedulers ignore it).
    generator: a ``torch.Generator``, or a list with one per image, for reproducible noise.
    latents: initial noise ``[images, 4, height / 8, width / 8]`` instead of drawing it.
    prompt_embeds, pooled_prompt_embeds: precomputed embeddings of the prompt with its class
        word expanded (:meth:`encode_prompt_with_trigger_word`); need ``class_tokens_mask``.
    negative_prompt_embeds, negative_pooled_prompt_embeds: precomputed negative embeddings.
    ip_adapter_image, ip_adapter_image_embeds: an IP-Adapter's input, after diffusers'
        ``load_ip_adapter``; the image embeddings reach the UNet at every step.
    output_type: ``"pil"`` (default), ``"np"`` (``[images, H, W, 3]`` floats in [0, 1]),
        ``"pt"`` (``[images, 3, H, W]``) or ``"latent"`` (the latents, not decoded).
    return_dict: return a ``StableDiffusionXLPipelineOutput`` (default) or the tuple
        ``(images,)``.
    cross_attention_kwargs: passed to the UNet's attention processors. Its ``"scale"`` is
        also the LoRA scale of the text encoders, for every prompt encoding alike: the ID
        prompt, the text-only prompt and the negative prompt.
    guidance_rescale: rescale of the guided noise against over-exposure (0 = off).
    original_size, crops_coords_top_left, target_size: SDXL's micro-conditioning (default:
        the output size and ``(0, 0)``).
    negative_original_size, negative_crops_coords_top_left, negative_target_size: the same
        for the negative half.
    clip_skip: the number of final CLIP layers to skip for the prompt embeddings.
    callback_on_step_end: called after each step as ``f(pipe, i, t, tensors)``; the tensors
        of the dict it returns replace the loop's. A ``PipelineCallback`` brings its own
        tensor inputs. Setting ``pipe._interrupt = True`` (diffusers' interrupt) skips the
        remaining steps; the latents as they stand are then decoded, so an interrupted call
        still returns what ``output_type`` promises.
    callback_on_step_end_tensor_inputs: the names the callback sees, out of
        ``_callback_tensor_inputs`` (default ``["latents"]``).
"""

PHOTOMAKER_ARGS_DOC = """\
    input_id_images: photos of the person (PIL images, or tensors from
        :meth:`preprocess_id_images`).
    start_merge_step: the last step that sees the text-only prompt; the ID embedding
        conditions the steps after it (``i > start_merge_step``). Larger values give the text
        and style more say; the demo uses ``min(int(ratio / 100 * steps), 30)``. Default 10,
        as in the official pipeline.
    class_tokens_mask: with ``prompt_embeds``, the positions of the class-word copies
        ``[batch, 77]``.
    id_embeds: V2 only, ArcFace embeddings of the photos, ``[num_photos, 512]``.
    prompt_embeds_text_only, pooled_prompt_embeds_text_only: precomputed embeddings of the
        prompt without the trigger word (:meth:`encode_prompt`).
    id_image_embeds: the output of :meth:`encode_id_images`, to skip encoding the photos
        again; ``input_id_images`` and ``id_embeds`` are then not needed.
    callback, callback_steps: deprecated, diffusers' old ``callback(step, t, latents)``,
        called every ``callback_steps`` steps; use ``callback_on_step_end``.
"""

CALL_RETURNS_DOC = """
Returns:
    ``StableDiffusionXLPipelineOutput`` with ``images`` in the ``output_type`` asked for, or
    ``(images,)`` with ``return_dict=False``.
"""


def call_docstring(summary: str, *extra_args: str) -> str:
    """A ``__call__`` docstring: ``summary``, then the shared arguments and ``extra_args``
    (sections written like :data:`SDXL_ARGS_DOC`)."""
    args = "".join([SDXL_ARGS_DOC, PHOTOMAKER_ARGS_DOC, *extra_args])
    return f"{summary}\n\nArgs:\n{args}{CALL_RETURNS_DOC}"


def prompt_batch_size(
    prompt: str | Sequence[str] | None,
    prompt_embeds: torch.Tensor | None = None,
    prompt_embeds_text_only: torch.Tensor | None = None,
) -> int:
    """How many prompts a call has: the prompts', else the given embeddings' rows (the
    Adapter and ControlNet variants match one control image per prompt against it)."""
    if isinstance(prompt, str):
        return 1
    if prompt is not None:
        return len(prompt)
    embeds = prompt_embeds if prompt_embeds is not None else prompt_embeds_text_only
    return embeds.shape[0] if embeds is not None else 1


def _as_batch(text: str | list[str] | None, batch_size: int, name: str) -> list[str] | None:
    """``text`` as one entry per prompt of the batch (a single string serves them all)."""
    if text is None:
        return None
    texts = [text] * batch_size if isinstance(text, str) else list(text)
    if len(texts) != batch_size:
        raise ValueError(f"`{name}` has {len(texts)} entries for {batch_size} prompt(s)")
    return texts


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


class PhotoMakerStableDiffusionXLPipeline(PhotoMakerLoaderMixin, StableDiffusionXLPipeline):
    """Stable Diffusion XL with PhotoMaker (V1 or V2) identity conditioning.

    Loading lives in :class:`~photomaker.loaders.PhotoMakerLoaderMixin`; this class holds
    only what changes in generation, each step a named method that the Adapter and ControlNet
    variants reuse: :meth:`prepare_id_image_embeds`, :meth:`encode_photomaker_prompt`,
    :meth:`prepare_control` and :meth:`photomaker_unet_kwargs` (their per-call structure
    control) and the loop in :meth:`denoise`.

    ``add_watermarker``: ``True`` applies diffusers' ``StableDiffusionXLWatermarker`` to the
    decoded images (it needs the ``invisible-watermark`` package; without it the pipeline
    refuses to build). Unlike diffusers' SDXL default (on whenever the package is installed),
    ``None`` means off, as in the official PhotoMaker pipeline, so the same seed gives the same
    images whatever is installed.
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
        if add_watermarker and not is_invisible_watermark_available():
            raise ImportError(
                "add_watermarker=True needs the invisible-watermark package "
                "(pip install invisible-watermark)"
            )
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
            add_watermarker=bool(add_watermarker),
        )
        self.register_modules(id_encoder=id_encoder, id_fuse_module=id_fuse_module)

    def _require_adapter(self) -> PhotoMakerIDEncoder | None:
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

    @contextlib.contextmanager
    def text_encoder_lora_scale(self, lora_scale: float | None) -> Iterator[None]:
        """The text encoders' LoRA layers scaled by ``lora_scale`` inside the block, as
        diffusers' ``encode_prompt`` does for its own encoding (PEFT backend)."""
        encoders = [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]
        if lora_scale is None or not USE_PEFT_BACKEND:
            yield
            return
        self._lora_scale = lora_scale
        for encoder in encoders:
            scale_lora_layers(encoder, lora_scale)
        try:
            yield
        finally:
            for encoder in encoders:
                unscale_lora_layers(encoder, lora_scale)

    def encode_prompt_with_trigger_word(
        self,
        prompt: str | list[str],
        prompt_2: str | list[str] | None = None,
        num_id_images: int = 1,
        device: torch.device | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        class_tokens_mask: torch.Tensor | None = None,
        clip_skip: int | None = None,
        lora_scale: float | None = None,
        num_tokens_per_image: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt embedding with the class word repeated once per ID vector, and its mask.

        Returns ``(prompt_embeds [B, 77, 2048], pooled_prompt_embeds [B, 1280],
        class_tokens_mask [B, 77])``, one row per prompt. The pooled embedding is text encoder
        2's projection over the expanded ids, so it depends on the number of photos, as in the
        reference. The mask is that of the first prompt holding the trigger word (``prompt``'s
        when both do); a ``prompt_2`` without it is encoded as plain text.
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
                class_tokens_mask.to(device).reshape(prompt_embeds.shape[:2]),
            )

        num_tokens_per_image = num_tokens_per_image or self.num_tokens_per_image
        num_class_tokens = num_id_images * num_tokens_per_image
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts_2 = _as_batch(prompt_2, len(prompts), "prompt_2") or prompts
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        pairs = [(t, e) for t, e in pairs if t is not None and e is not None]
        hidden_layer = -(clip_skip + 2) if clip_skip is not None else -2
        embeds_list = []
        masks: list[list[bool]] = []
        with self.text_encoder_lora_scale(lora_scale):
            texts_per_encoder = [prompts, prompts_2][-len(pairs):]
            for k, (texts, (tokenizer, text_encoder)) in enumerate(zip(texts_per_encoder, pairs, strict=True)):
                rows = []
                for text in texts:
                    # The first encoder's prompt places the ID (it must hold the trigger word);
                    # the second's is expanded alike if it holds the word, else plain text.
                    if k == 0 or prompting.trigger_spans(text, self.trigger_word):
                        expanded = prompting.expand_prompt(tokenizer, text, self.trigger_word, num_class_tokens)
                        rows.append(expanded.input_ids)
                        if k == 0:
                            masks.append(expanded.class_tokens_mask)
                    else:
                        rows.append(self.plain_token_ids(tokenizer, text))
                ids = torch.tensor(rows, dtype=torch.long, device=device)
                output = text_encoder(ids, output_hidden_states=True)
                pooled_prompt_embeds = output[0]  # only the last encoder's (projected) output is kept
                embeds_list.append(output.hidden_states[hidden_layer])
        prompt_embeds = torch.cat(embeds_list, dim=-1).to(dtype=self.text_encoder_2.dtype)
        class_tokens_mask = torch.tensor(masks, device=device)
        return prompt_embeds, pooled_prompt_embeds, class_tokens_mask

    def plain_token_ids(self, tokenizer: Any, text: str) -> list[int]:
        """``text`` as diffusers tokenizes a prompt (padded, cut at the limit), any trigger word
        in it read as the ordinary word."""
        text = prompting.ordinary_text(tokenizer, text, self.trigger_word)
        return tokenizer(
            text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True
        ).input_ids

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

    def text_only_prompt(self, prompt: str | list[str] | None, tokenizer: Any = None) -> str | list[str] | None:
        """The prompt without its trigger word, as encoded for the first, text-only steps.

        A prompt without the trigger word is returned as plain text (any word that merely
        contains it read as the ordinary word)."""
        tokenizer = tokenizer or (self.tokenizer if self.tokenizer is not None else self.tokenizer_2)
        if prompt is None or tokenizer is None:
            return prompt
        if isinstance(prompt, list):
            return [self.text_only_prompt(p, tokenizer) for p in prompt]
        if prompting.trigger_spans(prompt, self.trigger_word):
            return prompting.text_only_prompt(tokenizer, prompt, self.trigger_word)
        return prompting.ordinary_text(tokenizer, prompt, self.trigger_word)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        prompt_2: str | list[str] | None = None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """diffusers' SDXL ``encode_prompt``, on PhotoMaker prompts: the *text-only* encoding.

        A prompt holding the trigger word is encoded without it — the conditioning of the steps
        before the merge (the ID-fused one is :meth:`encode_prompt_with_trigger_word`). In the
        negative prompts the trigger word is read as the ordinary word. So the method can be
        called on its own with any prompt the pipeline takes: the trigger token, which has no
        embedding in the text encoders, never reaches them. Returns diffusers' four tensors
        ``(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
        negative_pooled_prompt_embeds)``.
        """
        if getattr(self, "id_fuse_module", None) is not None:  # the trigger word is known
            prompt = self.text_only_prompt(prompt)
            prompt_2 = self.text_only_prompt(prompt_2, self.tokenizer_2)
            negative_prompt = self.ordinary_text(negative_prompt, self.tokenizer or self.tokenizer_2)
            negative_prompt_2 = self.ordinary_text(negative_prompt_2, self.tokenizer_2)
        return super().encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )

    # ------------------------------------------------------------------ ID images

    def preprocess_id_images(self, input_id_images: PipelineImageInput) -> torch.Tensor:
        """Photos → CLIP pixel values ``[num_photos, 3, 224, 224]`` (float32, on the CPU).

        Runs on the CPU, so a caller (the app on ZeroGPU) can do it before the GPU part and
        send the small tensor instead of the photos."""
        if isinstance(input_id_images, torch.Tensor) and input_id_images.ndim == 4:
            input_id_images = list(input_id_images)  # preprocess_id_images' own [N, 3, H, W]
        images = list(input_id_images) if isinstance(input_id_images, (list, tuple)) else [input_id_images]
        if not images:
            raise ValueError("`input_id_images` is empty: pass at least one photo of the person")
        if isinstance(images[0], torch.Tensor):
            return torch.stack([img.reshape(img.shape[-3:]) for img in images])
        if any(isinstance(img, os.PathLike) for img in images):  # pathlib.Path, like a str path
            images = [os.fspath(img) if isinstance(img, os.PathLike) else img for img in images]
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
            if isinstance(id_embeds, (list, tuple)):  # one row per photo
                rows = [torch.as_tensor(row).reshape(-1) for row in id_embeds]
                id_embeds = torch.stack(rows) if rows else torch.zeros(0)
            id_embeds = torch.as_tensor(id_embeds)
            width = encoder.id_config.id_embedding_dim
            if id_embeds.ndim != 2 or tuple(id_embeds.shape) != (pixel_values.shape[1], width):
                raise ValueError(
                    f"`id_embeds` must be [{pixel_values.shape[1]}, {width}], one ArcFace "
                    f"embedding per ID photo, not {list(id_embeds.shape)}"
                )
            id_embeds = id_embeds.unsqueeze(0).to(device=device, dtype=dtype)
        elif id_embeds is not None:
            logger.warning("`id_embeds` are for PhotoMaker V2; this V1 adapter does not use them")
        # Through the module's own call (not a bare method) so offload hooks place it.
        return encoder(id_pixel_values=pixel_values, id_embeds=id_embeds)[0]

    def prepare_id_image_embeds(
        self,
        input_id_images: PipelineImageInput | None,
        id_embeds: torch.Tensor | np.ndarray | None,
        id_image_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        """The ID image embeddings: given (checked: ``[num_photos, tokens, width]`` as
        :meth:`encode_id_images` returns them), or encoded from the photos."""
        if id_image_embeds is not None:
            embeds = torch.as_tensor(id_image_embeds)
            width = self.id_fuse_module.layer_norm.normalized_shape[0]
            shape = (self.num_tokens_per_image, width)
            if embeds.ndim != 3 or tuple(embeds.shape[1:]) != shape or not len(embeds):
                raise ValueError(
                    f"`id_image_embeds` must be [num_photos, {shape[0]}, {shape[1]}], what "
                    f"encode_id_images returns for this adapter, not {list(embeds.shape)}"
                )
            return embeds
        if input_id_images is None:
            raise ValueError("Pass the person's photos as `input_id_images` (or `id_image_embeds`)")
        return self.encode_id_images(input_id_images, id_embeds)

    def fuse_id_embeddings(
        self,
        prompt_embeds: torch.Tensor,
        id_image_embeds: torch.Tensor,
        class_tokens_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Replace the class-word positions of ``prompt_embeds`` with the stacked ID embedding.

        One ID embedding ``[num_photos, tokens, 2048]`` serves every row (prompt) of
        ``prompt_embeds``; each row is fused on its own, so its result does not depend on the
        other prompts of the batch (a prompt cut at the token limit fuses fewer ID vectors)."""
        self._require_adapter()
        vectors = id_image_embeds.shape[0] * id_image_embeds.shape[1]
        for row in class_tokens_mask.reshape(prompt_embeds.shape[0], -1).to(torch.bool):
            marked = int(row.sum())
            # Fewer positions than ID vectors only where the prompt was cut at the token
            # limit (the class block then runs to the last position); else the prompt was made
            # for another number of photos, and photos would be dropped without a word.
            if marked < vectors and (not marked or not bool(row[-1])):
                raise ValueError(
                    f"The prompt marks {marked} class-token positions, but the ID embedding has "
                    f"{vectors} vectors ({id_image_embeds.shape[0]} photos × "
                    f"{id_image_embeds.shape[1]}): make `prompt_embeds` and `class_tokens_mask` "
                    f"for {id_image_embeds.shape[0]} photos (encode_prompt_with_trigger_word("
                    f"num_id_images={id_image_embeds.shape[0]}))"
                )
        device = prompt_embeds.device
        id_image_embeds = id_image_embeds.to(device=device, dtype=prompt_embeds.dtype).unsqueeze(0)
        rows = [
            self.id_fuse_module(prompt_embeds[i : i + 1], id_image_embeds, class_tokens_mask[i : i + 1])
            for i in range(prompt_embeds.shape[0])
        ]
        return torch.cat(rows)

    def encode_photomaker_prompt(
        self,
        prompt: str | list[str] | None,
        prompt_2: str | list[str] | None,
        id_image_embeds: torch.Tensor,
        num_images_per_prompt: int,
        device: torch.device,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
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
        per prompt: 2 for the prompt with the class word expanded, 4 for the text-only and
        negative prompts (the reference makes 8). ``lora_scale`` applies to all of them."""
        num_id_images, tokens_per_image = id_image_embeds.shape[:2]
        prompt_embeds, pooled_prompt_embeds, class_tokens_mask = self.encode_prompt_with_trigger_word(
            prompt=prompt, prompt_2=prompt_2, num_id_images=num_id_images, device=device,
            prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            class_tokens_mask=class_tokens_mask, clip_skip=clip_skip, lora_scale=lora_scale,
            num_tokens_per_image=tokens_per_image,
        )
        (
            prompt_embeds_text_only,
            negative_prompt_embeds,
            pooled_prompt_embeds_text_only,
            negative_pooled_prompt_embeds,
        ) = self.encode_prompt(  # the text-only encoding: the trigger word is dropped there
            prompt=prompt if prompt_embeds_text_only is None else None,
            prompt_2=prompt_2 if prompt_embeds_text_only is None else None,
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
        # One copy per image, those of one prompt next to each other (as encode_prompt does).
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
    ) -> StableDiffusionXLPipelineOutput | tuple:
        # The steps are in _generate, which the Adapter and ControlNet pipelines share.
        return self._generate(**call_arguments(locals()), control_inputs=None)

    __call__.__doc__ = call_docstring("Generate images of the person in ``input_id_images``.")

    def _generate(
        self,
        *,
        prompt, prompt_2, height, width, num_inference_steps, timesteps, sigmas, denoising_end,
        guidance_scale, negative_prompt, negative_prompt_2, num_images_per_prompt, eta,
        generator, latents, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
        negative_pooled_prompt_embeds, ip_adapter_image, ip_adapter_image_embeds, output_type,
        return_dict, cross_attention_kwargs, guidance_rescale, original_size,
        crops_coords_top_left, target_size, negative_original_size,
        negative_crops_coords_top_left, negative_target_size, clip_skip, callback_on_step_end,
        callback_on_step_end_tensor_inputs, input_id_images, start_merge_step, class_tokens_mask,
        id_embeds, prompt_embeds_text_only, pooled_prompt_embeds_text_only, id_image_embeds,
        callback, callback_steps, control_inputs,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        """The body of every PhotoMaker pipeline's ``__call__``, in named steps: the base
        ``__call__``'s arguments (documented there), plus the structure control a subclass's
        ``__call__`` checked (``control_inputs``; ``None``: none), which
        :meth:`prepare_control` readies for the loop."""
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
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
        batch_size = prompt_batch_size(prompt, prompt_embeds, prompt_embeds_text_only)
        if num_images_per_prompt is not None and num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be at least 1, not {num_images_per_prompt}")
        num_images = batch_size * (num_images_per_prompt or 1)

        # 2. The photos → ID image embeddings (prompt-independent, shared by the batch).
        id_image_embeds = self.prepare_id_image_embeds(input_id_images, id_embeds, id_image_embeds)

        # 3. Text-only, ID-fused and negative prompt embeddings.
        conditioning = self.encode_photomaker_prompt(
            prompt, prompt_2, id_image_embeds, num_images_per_prompt or 1, device,
            self.do_classifier_free_guidance,
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
            num_images, self.unet.config.in_channels, height, width, dtype, device, generator, latents
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 5. Micro-conditioning time ids; IP-Adapter image embeddings if any.
        add_time_ids = self.prepare_add_time_ids(
            conditioning, num_images, original_size, crops_coords_top_left, target_size,
            negative_original_size, negative_crops_coords_top_left, negative_target_size,
        ).to(device)
        added_image_embeds = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            added_image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, device, num_images,
                self.do_classifier_free_guidance,
            )

        # 6. Optional early end of denoising (ensemble of experts), as in SDXL.
        if denoising_end is not None and 0 < denoising_end < 1:
            cutoff = int(round(self.scheduler.config.num_train_timesteps * (1 - denoising_end)))
            num_inference_steps = len([t for t in timesteps if t >= cutoff])
            timesteps = timesteps[:num_inference_steps]
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(self.guidance_scale - 1).repeat(num_images)
            timestep_cond = self.get_guidance_scale_embedding(
                scale, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)

        # 7. The structure control of this call (T2I-Adapter, ControlNet), ready for the loop.
        control = self.prepare_control(
            control_inputs, conditioning, latents, timesteps, num_inference_steps
        )

        # 8. Denoise: text-only conditioning while i <= start_merge_step, then the ID.
        latents = self.denoise(
            latents, timesteps, num_inference_steps, conditioning, start_merge_step,
            add_time_ids, extra_step_kwargs, timestep_cond=timestep_cond,
            added_image_embeds=added_image_embeds, control=control,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            callback=callback, callback_steps=callback_steps,
        )

        # 9. Decode (also when interrupted: the latents as they stand), watermark, convert.
        image = self.postprocess_latents(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return StableDiffusionXLPipelineOutput(images=image)

    def prepare_add_time_ids(
        self,
        conditioning: PhotoMakerConditioning,
        num_images: int,
        original_size: tuple[int, int],
        crops_coords_top_left: tuple[int, int],
        target_size: tuple[int, int],
        negative_original_size: tuple[int, int] | None,
        negative_crops_coords_top_left: tuple[int, int],
        negative_target_size: tuple[int, int] | None,
    ) -> torch.Tensor:
        """SDXL's micro-conditioning time ids, one row per image (CFG halves joined as diffusers
        joins them)."""
        dtype = conditioning.id[0].dtype
        projection_dim = (
            int(conditioning.id[1].shape[-1])
            if self.text_encoder_2 is None
            else self.text_encoder_2.config.projection_dim
        )
        add_time_ids = self._get_add_time_ids(
            original_size, crops_coords_top_left, target_size, dtype=dtype,
            text_encoder_projection_dim=projection_dim,
        )
        negative_add_time_ids = add_time_ids
        if negative_original_size is not None and negative_target_size is not None:
            negative_add_time_ids = self._get_add_time_ids(
                negative_original_size, negative_crops_coords_top_left, negative_target_size,
                dtype=dtype, text_encoder_projection_dim=projection_dim,
            )
        if self.do_classifier_free_guidance:
            add_time_ids = torch.cat([negative_add_time_ids, add_time_ids], dim=0)
        return add_time_ids.repeat(num_images, 1)

    def prepare_control(
        self,
        control_inputs: Any,
        conditioning: PhotoMakerConditioning,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        num_inference_steps: int,
    ) -> Any:
        """The call's structure control, ready for the loop, passed to every
        :meth:`photomaker_unet_kwargs` call. None here; the T2I-Adapter and ControlNet
        pipelines prepare theirs (at this point the prompt encoders are done and the step count
        is final)."""
        return None

    def photomaker_unet_kwargs(
        self,
        i: int,
        t: torch.Tensor,
        latent_model_input: torch.Tensor,
        prompt_embeds: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor],
        control: Any = None,
    ) -> dict[str, Any]:
        """Extra UNet inputs for step ``i`` from ``control`` (:meth:`prepare_control`'s): none
        here; the T2I-Adapter and ControlNet variants return their residuals."""
        return {}

    def postprocess_latents(self, latents: torch.Tensor, output_type: str | None) -> Any:
        """The final latents → ``output_type``: decoded by the VAE, watermarked if the pipeline
        was built with ``add_watermarker=True``, converted ("pil", "np", "pt"); "latent" returns
        them as they are."""
        if output_type == "latent":
            return latents
        image = self._decode_latents(latents)
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return self.image_processor.postprocess(image, output_type=output_type)

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
        control: Any = None,
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
        uses its conditional half. ``control`` is :meth:`prepare_control`'s, handed to
        :meth:`photomaker_unet_kwargs` at every step.
        """
        state = {
            "prompt_embeds": conditioning.id[0],
            "add_text_embeds": conditioning.id[1],
            "prompt_embeds_text_only": conditioning.text[0],
            "add_text_embeds_text_only": conditioning.text[1],
            "add_time_ids": add_time_ids,
        }
        negative = conditioning.negative or (None, None)
        if start_merge_step >= len(timesteps) - 1:  # as the official pipeline, but said
            logger.warning(
                "start_merge_step=%d with %d steps: steps 0..%d see the text only, so the ID "
                "embedding is never used; lower start_merge_step or add steps",
                start_merge_step, len(timesteps), start_merge_step,
            )  # fmt: skip
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
                    **self.photomaker_unet_kwargs(
                        i, t, latent_model_input, embeds, added_cond_kwargs, control
                    ),
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


def call_arguments(values: dict[str, Any]) -> dict[str, Any]:
    """The base ``__call__``'s arguments, by name, out of a ``__call__``'s ``locals()``: how
    the three pipelines' ``__call__`` hand their shared arguments to ``_generate``."""
    return {name: values[name] for name in CALL_PARAMETERS}


#: The names of the base ``__call__``'s parameters, in order.
CALL_PARAMETERS: tuple[str, ...] = tuple(
    inspect.signature(PhotoMakerStableDiffusionXLPipeline.__call__).parameters
)[1:]
