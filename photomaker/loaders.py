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
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from huggingface_hub.utils import validate_hf_hub_args

from photomaker import checkpoints, prompting
from photomaker.encoders import IDEncoderConfig
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
#: What load_photomaker_adapter (and diffusers' fuse_lora) set on the pipeline object itself.
PHOTOMAKER_ATTRIBUTES = (
    "pm_version",
    "trigger_word",
    "num_tokens_per_image",
    "id_image_processor",
    "_merged_adapters",
)


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

    pm_version: str | None = None
    trigger_word: str = prompting.DEFAULT_TRIGGER_WORD
    num_tokens_per_image: int = 1

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
        self.register_modules(id_encoder=encoder, id_fuse_module=fuse_module)
        self.id_image_processor = CLIPImageProcessor()
        self.pm_version = pm_version
        self.num_tokens_per_image = encoder.tokens_per_image

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
        self.trigger_word = trigger_word
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
        knows nothing of the attributes ``load_photomaker_adapter`` sets.) Use the new
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
        """Save the SDXL base as diffusers does; the PhotoMaker checkpoint is not part of it.

        The ID encoder is an adapter, like the LoRA: load it again with
        :meth:`load_photomaker_adapter` after ``from_pretrained`` (diffusers could not rebuild
        our encoder classes from a pipeline folder)."""
        adapter = {name: getattr(self, name, None) for name in PHOTOMAKER_COMPONENTS}
        self.register_modules(**dict.fromkeys(PHOTOMAKER_COMPONENTS))
        try:
            super().save_pretrained(*args, **kwargs)
        finally:
            self.register_modules(**adapter)

    def unload_photomaker_lora(self) -> None:
        """Remove a previously loaded PhotoMaker LoRA (unfusing it first if it was fused)."""
        if PHOTOMAKER_ADAPTER not in self.adapter_names():
            return
        if self.num_fused_loras:
            self.unfuse_lora(components=["unet"])
        self.delete_adapters(PHOTOMAKER_ADAPTER)

    def fuse_adapters(self, adapter_names: list[str], adapter_weights: list[float]) -> None:
        """Set the adapters' weights and fuse them into the UNet, unfusing what was fused.

        The run-time way to change the mix: ``pipe.fuse_adapters(["photomaker", "style"],
        [1.0, 0.6])``. Fused adapters cost no extra work per denoising step.
        """
        if self.num_fused_loras:
            self.unfuse_lora(components=["unet"])
        self.set_adapters(adapter_names, adapter_weights=adapter_weights)
        self.fuse_lora(components=["unet"], adapter_names=adapter_names)

    def adapter_names(self) -> set[str]:
        """Names of the LoRA adapters loaded into the UNet."""
        try:
            return {name for names in self.get_list_adapters().values() for name in names}
        except (ValueError, AttributeError):
            return set()
