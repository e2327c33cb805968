"""``PhotoMakerLoaderMixin``: what ``load_photomaker_adapter`` adds to an SDXL pipeline.

Loading works the way diffusers' own adapter loaders do (``IPAdapterMixin`` registers its
``image_encoder``): the ID encoder becomes a *registered component*, so ``.to()``,
``enable_model_cpu_offload()``, ``enable_sequential_cpu_offload()`` and ``components`` treat
it like the UNet, with no hand-moving. It is registered as two components because the two
halves are used differently:

* ``id_encoder`` — the CLIP vision tower, its projections and (V2) the perceiver, ~543M
  parameters. It runs only when new photos must be encoded; a cached encoding skips it.
* ``id_fuse_module`` — the 21M-parameter MLP that writes the ID embedding into the prompt
  embedding. It runs on every call. Kept apart so that under model offload a cached request
  moves 42 MB to the GPU instead of the whole 1.1 GB encoder.

The LoRA goes through diffusers' ``load_lora_weights`` as the PEFT adapter ``photomaker``,
in the layout TencentARC released (diffusers converts the old attention-processor keys
itself), and is then fused into the UNet so no denoising step pays for the rank-64 side
matmuls. To change adapters at run time: ``pipe.unfuse_lora()``, ``pipe.set_adapters(...)``,
``pipe.fuse_lora(adapter_names=[...])``.

What the pipeline knows of the loaded adapter lives on the registered components, not on the
pipeline object: the version and the ID tokens per photo come from ``id_encoder``'s class,
the trigger word from ``id_fuse_module.trigger_word``. So a pipeline built from another's
``components`` (diffusers' way to share models) is the same PhotoMaker pipeline.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from huggingface_hub.utils import validate_hf_hub_args

from photomaker import checkpoints, prompting
from photomaker.encoders import IDEncoderConfig, PhotoMakerIDEncoderV2
from photomaker.errors import PhotoMakerInputError

try:  # transformers >= 5 names the PIL-based processor explicitly (no torchvision needed)
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import CLIPImageProcessor

logger = logging.getLogger(__name__)

__all__ = ["PhotoMakerLoaderMixin", "PHOTOMAKER_ADAPTER", "CLIPImageProcessor"]

#: The PEFT adapter name of PhotoMaker's UNet LoRA.
PHOTOMAKER_ADAPTER = "photomaker"
#: The pipeline components that load_photomaker_adapter registers.
PHOTOMAKER_COMPONENTS = ("id_encoder", "id_fuse_module")
#: What diffusers' fuse_lora records on the pipeline object itself (not on a component).
PHOTOMAKER_ATTRIBUTES = ("_merged_adapters",)


@functools.lru_cache(maxsize=4)
def _id_image_processor(image_size: int) -> CLIPImageProcessor:
    """CLIP's preprocessing at the ID encoder's input size (224 for the released ones)."""
    if image_size == 224:
        return CLIPImageProcessor()
    return CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def _base_weights_only(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, local_metadata: Any
) -> None:
    """A ``state_dict`` post-hook: the module's weights without its PEFT LoRA layers.

    Fused adapters are subtracted back out of their base weights, the ``lora_*`` entries are
    dropped and ``….base_layer.weight`` is named ``….weight`` again: the plain model's layout."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in module.named_modules():
        if isinstance(layer, BaseTunerLayer) and layer.merged_adapters:
            key = f"{prefix}{name}.base_layer.weight"
            delta = sum(layer.get_delta_weight(adapter) for adapter in layer.merged_adapters)
            state_dict[key] = state_dict[key] - delta.to(state_dict[key].dtype)
    for key in list(state_dict):
        parts = key[len(prefix) :].split(".")
        if any(part.startswith("lora_") for part in parts):
            del state_dict[key]
        elif "base_layer" in parts:
            plain = prefix + ".".join(part for part in parts if part != "base_layer")
            state_dict[plain] = state_dict.pop(key)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    target = logging.getLogger(logger_name)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


class PhotoMakerLoaderMixin:
    """Adds ``load_photomaker_adapter`` to a diffusers SDXL pipeline (with LoRA support)."""

    @property
    def pm_version(self) -> str | None:
        """``"v1"`` or ``"v2"``: the registered ``id_encoder``'s version (``None`` without one)."""
        encoder = getattr(self, "id_encoder", None)
        if encoder is None:
            return None
        return "v2" if isinstance(encoder, PhotoMakerIDEncoderV2) else "v1"

    @property
    def num_tokens_per_image(self) -> int:
        """ID tokens per photo: 1 (V1) or 2 (V2), from the registered ``id_encoder``. Without
        one (ID embeddings passed precomputed) the count is read off the embeddings."""
        encoder = getattr(self, "id_encoder", None)
        return 1 if encoder is None else int(encoder.tokens_per_image)

    @property
    def trigger_word(self) -> str:
        """The word after the class word in prompts, as loaded into ``id_fuse_module``."""
        fuse = getattr(self, "id_fuse_module", None)
        return getattr(fuse, "trigger_word", prompting.DEFAULT_TRIGGER_WORD)

    @property
    def id_image_processor(self) -> CLIPImageProcessor:
        """The photos' preprocessing, at the registered ``id_encoder``'s input size."""
        encoder = getattr(self, "id_encoder", None)
        return _id_image_processor(224 if encoder is None else int(encoder.config.image_size))

    @validate_hf_hub_args
    def load_photomaker_adapter(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, Any],
        weight_name: str | None = None,
        subfolder: str = "",
        trigger_word: str = prompting.DEFAULT_TRIGGER_WORD,
        pm_version: str = "v2",
        id_encoder_config: IDEncoderConfig | None = None,
        fuse_lora: bool = True,
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
            fuse_lora: fuse the LoRA into the UNet's weights (default). Pass ``False`` to keep
                it as a live adapter, e.g. to mix it with others before fusing yourself.
            kwargs: passed to ``huggingface_hub.hf_hub_download`` (``cache_dir``, ``token``,
                ``revision``, ``local_files_only``, ...).
        """
        if pm_version not in ("v1", "v2"):
            raise ValueError(f"pm_version must be 'v1' or 'v2', not {pm_version!r}")
        state = checkpoints.load_photomaker_state_dict(
            pretrained_model_name_or_path_or_dict, weight_name, subfolder, pm_version, **kwargs
        )

        # The ID encoder, as two registered components (see the module docstring).
        encoder = checkpoints.load_id_encoder(state["id_encoder"], pm_version, id_encoder_config)
        encoder = encoder.to(device=self.unet.device, dtype=self.unet.dtype)
        fuse_module = encoder.detach_fuse_module()
        fuse_module.trigger_word = trigger_word
        self.register_modules(id_encoder=encoder, id_fuse_module=fuse_module)

        # The LoRA, in the released layout, through diffusers' own loader and converter.
        checkpoints.check_lora_keys(state["lora_weights"])
        self.unload_photomaker_lora()
        lora = {k: v.to(self.unet.dtype) for k, v in state["lora_weights"].items()}
        no_match = PhotoMakerInputError(
            "The checkpoint's LoRA matches no layer of this UNet: is the base model SDXL?"
        )
        try:
            with _quiet("diffusers.loaders"):  # it notes, harmlessly: no text-encoder keys
                self.load_lora_weights(lora, adapter_name=PHOTOMAKER_ADAPTER)
        except ValueError as error:  # peft: "Target modules ... not found in the base model"
            raise no_match from error
        if PHOTOMAKER_ADAPTER not in self.adapter_names():
            raise no_match
        if fuse_lora:
            self.fuse_lora(components=["unet"], adapter_names=[PHOTOMAKER_ADAPTER])

        # The trigger word, as one token in both tokenizers.
        for tokenizer in (self.tokenizer, self.tokenizer_2):
            if tokenizer is not None and trigger_word not in tokenizer.get_vocab():
                tokenizer.add_tokens([trigger_word], special_tokens=True)
        logger.info("PhotoMaker %s adapter loaded (trigger word %r)", pm_version, trigger_word)

    @classmethod
    def from_photomaker_pipe(cls, pipe: Any, **components: Any) -> Any:
        """This pipeline class on ``pipe``'s models — the same objects, no copy — with its
        PhotoMaker adapter (ID encoder, fused LoRA, trigger word) as loaded, plus the
        ``components`` given (``adapter=``, ``controlnet=``).

        The way to add a T2I-Adapter or a ControlNet to a loaded pipeline without loading SDXL
        twice. (diffusers' ``from_pipe`` matches components by their annotated types and
        cannot map a ``ControlNetModel`` onto ``adapter=``.) Use the new
        pipeline from then on: both share the UNet, so a LoRA change made through the old one
        would not be recorded in the new one.
        """
        modules, options = cls._get_signature_keys(cls)
        kwargs = {name: c for name, c in pipe.components.items() if name in modules}
        kwargs.update(components)
        zeros = "force_zeros_for_empty_prompt"
        if zeros in options and zeros in pipe.config:
            kwargs[zeros] = pipe.config[zeros]
        if "add_watermarker" in options and hasattr(pipe, "watermark"):
            kwargs["add_watermarker"] = pipe.watermark is not None
        new = cls(**kwargs)
        for name in PHOTOMAKER_ATTRIBUTES:
            if name in vars(pipe):
                value = vars(pipe)[name]
                setattr(new, name, set(value) if isinstance(value, set) else value)
        if hasattr(pipe, "_progress_bar_config"):
            new.set_progress_bar_config(**pipe._progress_bar_config)
        return new

    def save_pretrained(self, *args, **kwargs) -> None:
        """Save the SDXL base the adapters were loaded onto, as a plain diffusers folder.

        Adapters are not part of it. LoRAs fused into the UNet (PhotoMaker's, a style's) are
        taken back out of the saved weights and live ones are left out, so the UNet is saved
        under its plain names (no PEFT ``base_layer``/``lora_*`` entries) and loads into any
        SDXL pipeline; the PhotoMaker ID encoder is not saved (diffusers could not rebuild our
        encoder classes from a pipeline folder). The pipeline comes back as it was with::

            pipe = PhotoMakerStableDiffusionXLPipeline.from_pretrained(folder)
            pipe.load_photomaker_adapter(checkpoint, pm_version=...)  # as first loaded

        giving the same images, to the float rounding of taking the fused LoRA out and back in.
        Text-encoder LoRAs are saved as transformers saves them.
        """
        adapter = {name: getattr(self, name, None) for name in PHOTOMAKER_COMPONENTS}
        self.register_modules(**dict.fromkeys(PHOTOMAKER_COMPONENTS))
        hook = self.unet.register_state_dict_post_hook(_base_weights_only)
        try:
            super().save_pretrained(*args, **kwargs)
        finally:
            hook.remove()
            self.register_modules(**adapter)

    def unload_photomaker_lora(self) -> None:
        """Remove a previously loaded PhotoMaker LoRA (unfusing it first if it was fused)."""
        if PHOTOMAKER_ADAPTER not in self.adapter_names():
            return
        if self.lora_fused_in_unet():
            self.unfuse_lora(components=["unet"])
        self.delete_adapters(PHOTOMAKER_ADAPTER)

    def fuse_adapters(self, adapter_names: list[str], adapter_weights: list[float]) -> None:
        """Set the adapters' weights and fuse them into the UNet, unfusing what was fused.

        The run-time way to change the mix: ``pipe.fuse_adapters(["photomaker", "style"],
        [1.0, 0.6])``. Fused adapters cost no extra work per denoising step.
        """
        if self.lora_fused_in_unet():
            self.unfuse_lora(components=["unet"])
        self.set_adapters(adapter_names, adapter_weights=adapter_weights)
        self.fuse_lora(components=["unet"], adapter_names=adapter_names)

    def lora_fused_in_unet(self) -> bool:
        """Whether a LoRA is merged into the UNet's weights, read off its PEFT layers.

        Not diffusers' ``num_fused_loras``: that counts on the pipeline object, so a pipeline
        built from another's components (``cls(**pipe.components)``) shares the fused UNet but
        counts 0, and loading the adapter there would fuse PhotoMaker's LoRA a second time."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        return any(
            isinstance(module, BaseTunerLayer) and module.merged_adapters
            for module in self.unet.modules()
        )

    def adapter_names(self) -> set[str]:
        """Names of the LoRA adapters loaded into the UNet."""
        try:
            return {name for names in self.get_list_adapters().values() for name in names}
        except (ValueError, AttributeError):
            return set()
