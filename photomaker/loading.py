"""Build the pipeline, the face analyzer and the service from :class:`Settings`.

Real mode: the SDXL base (hub id, diffusers folder or one ``.safetensors`` file), the
PhotoMaker adapter (the official hub checkpoints by default), an optional style LoRA,
the Euler scheduler the official demos use, and the device / dtype / low-VRAM choice.
Tiny mode: random-weight components built offline (:mod:`photomaker.tiny`).

Weights come from the Hugging Face cache (``HF_HOME``); with ``HF_HUB_OFFLINE=1`` nothing
is downloaded.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch

from .errors import PhotoMakerInputError
from .library_notices import quiet_library_notices, without_transformers_progress_bars
from .settings import CUDA_GRAPH_COMPILE_MODES, FIELDS_BY_NAME, Settings, on_zerogpu

logger = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


#: What a model that cannot be had raises: not found, offline, no access (huggingface_hub's
#: errors are OSErrors), not a repo id or a path (ValueError), a download cut off (httpx).
_UNAVAILABLE = (OSError, ValueError, httpx.HTTPError)


def _root_cause(error: BaseException) -> BaseException:
    """The innermost cause: diffusers' own message only says to look at the stack trace."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or id(inner) in seen:  # a chain can loop back on itself
            return error
        seen.add(id(inner))
        error = inner


def _offline(error: BaseException) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx.TransportError))


@contextmanager
def model_errors(what: str, location: str, setting: str, hint: str = "") -> Iterator[None]:
    """A model that cannot be loaded is a :class:`PhotoMakerInputError` that names it, the
    setting to change (``setting``: its name in :data:`FIELDS`, given as its flag and
    variable) and the cause (the root one), not a library's traceback; ``hint`` is the
    model's own last word (what its setting's ``none`` does, where its parts go)."""
    try:
        yield
    except PhotoMakerInputError:
        raise
    except _UNAVAILABLE as error:
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        cause = _root_cause(error)
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        reason = f"{type(cause).__name__}: {reason}"[:300]
        field = FIELDS_BY_NAME[setting]
        setting = f"{field.flag} (or {field.env})"
        if isinstance(cause, (GatedRepoError, RepositoryNotFoundError)):
            advice = (
                "The repo is gated, private or misspelt: accept its licence on the Hub and give "
                "a token with access (HF_TOKEN; on a Space, a secret), or check the name"
            )
        elif _offline(cause):
            advice = (
                "It is not in the local Hugging Face cache and cannot be downloaded here "
                "(offline, or HF_HUB_OFFLINE is set): download it once with network access, or "
                f"give {setting} a local folder or file"
            )
        else:
            advice = f"Give {setting} a hub id, a diffusers folder or a file that holds one"
        hint = f" {hint}." if hint else ""
        raise PhotoMakerInputError(
            f"Could not load the {what} {location!r} ({reason}). {advice}.{hint}"
        ) from error


def load_base_pipeline(settings: Settings) -> Any:
    """The SDXL base as a :class:`PhotoMakerStableDiffusionXLPipeline`, not yet on a device."""
    from .pipeline import PhotoMakerStableDiffusionXLPipeline

    dtype = settings.resolved_dtype()
    location = os.path.expanduser(settings.base_model)
    logger.info("loading the SDXL base %s (%s)", settings.base_model, dtype)
    if location.lower().endswith(SINGLE_FILE_SUFFIXES):
        if not os.path.isfile(location):
            raise PhotoMakerInputError(
                f"Base model file {settings.base_model} does not exist. Give a hub id "
                "(e.g. SG161222/RealVisXL_V4.0), a diffusers folder or an SDXL .safetensors file."
            )
        with model_errors("SDXL base model", settings.base_model, "base_model"):
            return PhotoMakerStableDiffusionXLPipeline.from_single_file(location, dtype=dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    if os.path.isdir(location):
        if not os.path.isfile(os.path.join(location, "model_index.json")):
            raise PhotoMakerInputError(
                f"Base model folder {settings.base_model} has no model_index.json: "
                "it must be a diffusers SDXL folder (save_pretrained), or give a .safetensors file."
            )
    else:
        location = settings.base_model
    with model_errors("SDXL base model", settings.base_model, "base_model"):
        if dtype == torch.float16 or dtype == torch.bfloat16:
            # Half the download and no fp32 → fp16 cast at load, where the repo has the variant.
            try:
                return PhotoMakerStableDiffusionXLPipeline.from_pretrained(
                    location, variant="fp16", **kwargs
                )
            except (ValueError, OSError) as error:
                if "variant" not in str(error).lower() and "fp16" not in str(error):
                    raise
                logger.info(
                    "no fp16 variant of %s; loading the default weights", settings.base_model
                )
        return PhotoMakerStableDiffusionXLPipeline.from_pretrained(location, **kwargs)


def load_adapter(pipe: Any, settings: Settings) -> Any:
    """Load the PhotoMaker checkpoint named by the settings into ``pipe``."""
    location, weight_name = settings.checkpoint_location
    if weight_name is None:  # a single file
        location, weight_name = os.path.dirname(location) or ".", os.path.basename(location)
    logger.info("loading PhotoMaker %s from %s (%s)", settings.pm_version, location, weight_name)
    pipe.load_photomaker_adapter(
        location,
        weight_name=weight_name,
        subfolder="",
        trigger_word=settings.trigger_word,
        pm_version=settings.pm_version,
    )
    return pipe


def load_style_lora(pipe: Any, settings: Settings) -> Any:
    """Add the style LoRA as adapter ``style`` next to ``photomaker``."""
    if not settings.style_lora:
        return pipe
    location = os.path.expanduser(settings.style_lora)
    kwargs: dict[str, Any] = {}
    if os.path.isfile(location):
        kwargs["weight_name"] = os.path.basename(location)
        location = os.path.dirname(location) or "."
    logger.info(
        "loading the style LoRA %s (weight %s)", settings.style_lora, settings.style_lora_weight
    )
    with model_errors("style LoRA", settings.style_lora, "style_lora"), warnings.catch_warnings():
        # A second adapter beside PhotoMaker's is what this means (PEFT warns of one), and
        # PhotoMaker's fused LoRA comes out of the weights first (PEFT would unfuse it itself,
        # with a warning); fuse_adapters puts both back in below.
        warnings.filterwarnings("ignore", r"Already found a `peft_config`", UserWarning)
        if pipe.lora_fused_in_unet():
            pipe.unfuse_lora(components=["unet"])
        pipe.load_lora_weights(location, adapter_name="style", **kwargs)
    # Fused at its weight next to PhotoMaker's: no per-step cost (pipe.fuse_adapters to change).
    pipe.fuse_adapters(["photomaker", "style"], [1.0, settings.style_lora_weight])
    return pipe


def load_fp16_vae(pipe: Any, settings: Settings) -> Any:
    """Swap in an fp16-safe VAE, so fp16 cards decode without SDXL's fp32 upcast."""
    if not settings.vae_fp16_fix:
        return pipe
    from diffusers import AutoencoderKL

    logger.info("loading the fp16-safe VAE %s", settings.vae_fp16_fix)
    with model_errors("fp16-safe VAE", settings.vae_fp16_fix, "vae_fp16_fix"):
        vae = AutoencoderKL.from_pretrained(
            os.path.expanduser(settings.vae_fp16_fix), dtype=settings.resolved_dtype()
        )
    vae.register_to_config(force_upcast=False)
    pipe.vae = vae
    pipe.register_modules(vae=vae)
    return pipe


#: Tile size in pixels for VAE decoding in the offload modes: SDXL's default tile is 1024
#: px, so at 1024² enable_tiling() alone would decode in one piece.
OFFLOAD_VAE_TILE = 512


#: The memory modes that store the UNet's weights in float8 (compute stays in the run dtype).
FP8_MODES = ("fp8", "group-offload-fp8")
#: The memory modes that use diffusers' group offloading.
GROUP_OFFLOAD_MODES = ("group-offload", "group-offload-fp8")


def place(pipe: Any, settings: Settings) -> Any:
    """Put the pipeline on its device in the chosen memory mode (``auto``: the one
    :meth:`Settings.resolved_memory` picks for this GPU's free memory).

    * ``full``: every model on the GPU.
    * ``model-offload``: each model visits the GPU while it runs (diffusers'
      ``enable_model_cpu_offload``); VAE decoded in 512-px tiles, one image at a time.
    * ``sequential-offload``: layer by layer (``enable_sequential_cpu_offload``); same VAE.
    * ``fp8``: full, with the UNet's weights stored in ``float8_e4m3fn`` and cast to the run
      dtype layer by layer as it computes (:func:`enable_fp8_storage`).
    * ``encoder-offload``: the UNet (and a ControlNet, which runs every step) and the VAE stay
      on the GPU; the text encoders, the ID encoder and the rest are group-offloaded and visit
      it a layer at a time, once per call (:func:`enable_encoder_offload`); VAE decoded in
      tiles, one image at a time.
    * ``group-offload``: diffusers' group offloading, block by block, the next block's
      transfer overlapped with compute on a CUDA stream (:func:`enable_group_offload`); same
      VAE as the offload modes. ``group-offload-fp8``: both.

    On the CPU every mode is ``full`` (nothing to offload to), except that the fp8 modes
    still store the UNet in float8 (so the numerical effect can be seen anywhere).
    """
    device = settings.resolved_device()
    peaks = None
    if settings.auto_asks_the_gpu():  # from what this pipeline loaded
        from .memory_estimate import estimate_peaks_gb

        peaks = estimate_peaks_gb(pipe)
    mode = settings.resolved_memory(peaks)
    if peaks is not None:
        note = f"an estimated {peaks[mode]:.1f} GB peak; {settings.gpu_memory_note()}"
        logger.info("memory auto: %s (%s)", mode, note)
        _say_what_the_style_image_costs(pipe, settings, mode)
    elif settings.memory == "auto":
        logger.info("memory auto: %s", mode)
    if device == "cpu" and mode not in RESIDENT_MODES:
        mode = "fp8" if mode in FP8_MODES else "full"
    return apply_memory_mode(pipe, mode, device, settings.resolved_dtype())


def _say_what_the_style_image_costs(pipe: Any, settings: Settings, mode: str) -> None:
    """Where the style image's models alone push ``memory auto`` to a slower mode (an 8 GB
    card: group-offload rather than encoder-offload), the log names the faster one and the
    setting that reaches it."""
    from .memory_estimate import MODES, peaks_without_style_image

    lean = peaks_without_style_image(pipe)
    if lean is None:
        return
    lean_mode = settings.resolved_memory(lean)
    if MODES.index(lean_mode) < MODES.index(mode):
        logger.info(
            "memory auto: without the style image (--style-adapter none), %s would fit "
            "(an estimated %.1f GB peak)",
            lean_mode,
            lean[lean_mode],
        )


#: The memory modes that keep every model on the device (``pipe.to``), no offload hooks.
RESIDENT_MODES = ("full", "fp8")


def apply_memory_mode(pipe: Any, mode: str, device: str | torch.device, dtype: torch.dtype) -> Any:
    """Put ``pipe`` on ``device`` in ``mode`` (a concrete one, not ``auto``): fp8 storage where
    the mode has it, then every model on the device (:data:`RESIDENT_MODES`) or the offload
    hooks (:func:`apply_offload`). The one placement that :func:`place` and bench/gpu.py share.

    The resident modes decode one image at a time too (VAE slicing): decoding a batch at once
    needs about 2 GB per 1024² image on top of the weights (full mode's peak was 17.00 GB with
    four images, 10.96 with one, on an H100), and one at a time costs no measurable speed."""
    if mode in FP8_MODES:
        enable_fp8_storage(pipe.unet, dtype)
    if mode in RESIDENT_MODES:
        pipe.to(device)
        pipe.vae.enable_slicing()
        return pipe
    return apply_offload(pipe, mode, device)


def apply_offload(pipe: Any, mode: str, device: str | torch.device) -> Any:
    """The offload hooks of ``mode`` (any but :data:`RESIDENT_MODES`) and the offload modes'
    VAE (:func:`configure_offload_vae`); the one dispatch that :func:`place` and
    bench/gpu.py share, so the benchmark measures the app's modes."""
    if mode == "model-offload":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "encoder-offload":
        enable_encoder_offload(pipe, device)
    elif mode in GROUP_OFFLOAD_MODES:
        enable_group_offload(pipe, device)
    elif mode == "sequential-offload":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        raise ValueError(f"{mode!r} is not an offload mode")
    configure_offload_vae(pipe.vae)
    return pipe


#: Parts of the UNet whose weights stay in the run dtype under fp8 storage: diffusers' own
#: list for UNet2DConditionModel (norms, embeddings, conv_in/out), plus LoRA side matrices
#: (the fast adapter's: rank-64 factors are small and their precision matters).
FP8_SKIP_EXTRA = ("lora_",)


def fp8_storage_settings(unet: Any, compute_dtype: torch.dtype) -> dict[str, Any]:
    """The arguments :func:`enable_fp8_storage` passes to diffusers'
    ``enable_layerwise_casting`` (tests check what the mode claims from this)."""
    default = tuple(getattr(unet, "_skip_layerwise_casting_patterns", None) or ())
    return {
        "storage_dtype": torch.float8_e4m3fn,
        "compute_dtype": compute_dtype,
        "skip_modules_pattern": default + FP8_SKIP_EXTRA,
    }


def enable_fp8_storage(unet: Any, compute_dtype: torch.dtype) -> Any:
    """Store the UNet's weights in float8 (e4m3) and compute in ``compute_dtype``: about
    half the UNet's bytes in bf16 (SDXL: 5.13 GB → ≈ 2.6 GB, an estimate from the parameter
    count; the measured figure is bench/gpu.py's), one cast per layer per call."""
    logger.info("UNet weights stored in float8_e4m3fn, computed in %s", compute_dtype)
    unet.enable_layerwise_casting(**fp8_storage_settings(unet, compute_dtype))
    return unet


def group_offload_settings(device: str | torch.device) -> dict[str, Any]:
    """The arguments :func:`enable_group_offload` passes to diffusers'
    ``enable_group_offload``: one block per group, the next one prefetched on a CUDA stream
    (streams exist only on CUDA; elsewhere transfers are synchronous)."""
    device = torch.device(device)
    stream = device.type == "cuda"
    return {
        "onload_device": device,
        "offload_device": torch.device("cpu"),
        "offload_type": "block_level",
        "num_blocks_per_group": 1,
        "use_stream": stream,
        "non_blocking": stream,
        "record_stream": stream,
    }


def enable_group_offload(pipe: Any, device: str | torch.device) -> Any:
    """Group offloading for every model of the pipeline (the UNet, the text encoders, the
    VAE, the ID encoder): weights live in CPU memory and visit the GPU a block at a time;
    with ``use_stream`` the next block is copied while the current one computes."""
    return group_offload_models(pipe, device, resident=())


#: What encoder-offload keeps on the GPU: the models that run at every step (the UNet, a
#: ControlNet) and the VAE (0.17 GB; tiling already bounds its decode). Everything else —
#: text encoders, ID encoder, a style image's CLIP, a doodle's T2I-Adapter — runs once per
#: call and is group-offloaded.
ENCODER_OFFLOAD_RESIDENT = ("unet", "controlnet", "vae")


def enable_encoder_offload(pipe: Any, device: str | torch.device) -> Any:
    """Everything but the step-by-step models and the VAE group-offloaded: the text encoders
    (1.64 GB in bf16) and the ID encoder (1.09 GB for V2) visit the GPU a layer at a time,
    once per call, so the resident weights are the UNet's 5.13 GB plus the VAE's. The UNet
    never moves, so its steps run at full mode's speed, and a fused fast call or the AOT graph
    can use it."""
    return group_offload_models(pipe, device, resident=ENCODER_OFFLOAD_RESIDENT)


def group_offload_models(pipe: Any, device: str | torch.device, resident: Sequence[str]) -> Any:
    """diffusers' ``pipe.enable_group_offload(exclude_modules=resident)`` (the
    :func:`group_offload_settings`) but for one argument: each model is split where
    :func:`photomaker.offload_groups.plan_block_modules` says (``block_modules``), down to its
    layers. Left to itself, diffusers' block level splits only the top level: each transformers
    encoder would come in whole (text encoder 2: 1.39 GB), and the UNet's largest group would
    be its first up block (2.4 GB) beside its mid block (0.83 GB). A diffusers model that
    declares its own blocks (the VAE) keeps them (:func:`~.offload_groups.block_modules_for`)."""
    from diffusers.hooks import apply_group_offloading

    from .offload_groups import block_modules_for

    settings = group_offload_settings(device)
    present = [name for name in resident if name in pipe.components]
    logger.info("group offloading all but %s (%s)", present, settings)
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        if name in present:
            component.to(device)
        else:
            apply_group_offloading(
                component, **settings, block_modules=block_modules_for(component)
            )
    return pipe


def configure_offload_vae(vae: Any, tile: int = OFFLOAD_VAE_TILE) -> None:
    """Decode one image at a time, in ``tile``-pixel tiles: the decode's activations (about
    2.1 GB per 1024² image) are what would otherwise set the VRAM floor in offload modes."""
    vae.enable_slicing()
    vae.enable_tiling()
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // scale


def compile_unet(pipe: Any, settings: Settings) -> Any:
    """``torch.compile`` the UNet in place (module type kept, so diffusers still sees a UNet)."""
    if not settings.compile:
        return pipe
    if on_zerogpu():
        raise PhotoMakerInputError(
            "--compile is not supported on ZeroGPU (torch.compile cannot run in its GPU "
            "workers); unset PHOTOMAKER_COMPILE on this Space (PHOTOMAKER_AOT=1 compiles the "
            "UNet ahead of time instead)."
        )
    import torch._inductor.config as inductor_config

    mode = settings.compile_mode
    logger.info("compiling the UNet, mode %s (the first generation will be slow)", mode)
    inductor_config.conv_1x1_as_mm = True
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.unet.compile(fullgraph=False, dynamic=False, mode=None if mode == "default" else mode)
    if mode in CUDA_GRAPH_COMPILE_MODES:
        from .service.runtime import use_one_gpu_thread

        use_one_gpu_thread(pipe)
    return pipe


def aot_example_call(pipe: Any, settings: Settings) -> dict[str, Any]:
    """The pipeline call whose first UNet call :func:`compile_ahead_of_time` captures: a
    typical request, from the parameter table's defaults (the default aspect ratio, prompt
    example, negative prompt, steps, style strength and guidance, so CFG is on) with one
    image. The graph's batch and latent sides are dynamic, so other sizes and image counts
    use it too; what must match is the call's structure, which this shares with every
    request without a doodle, style image or fast mode. The ID photo is blank (and V2's face
    embedding zero): its values do not matter, only its shapes."""
    from PIL import Image

    from .params import BY_NAME, default
    from .service.validation import merge_step, size_for

    width, height = size_for(default("aspect_ratio"), tiny=settings.tiny)
    steps = default("steps")
    trigger = getattr(pipe, "trigger_word", settings.trigger_word)
    prompt = re.sub(rf"\b{re.escape(Settings.trigger_word)}\b", trigger, BY_NAME["prompt"].example)
    config = pipe.id_encoder.id_config
    side = config.vision_image_size
    call: dict[str, Any] = dict(
        prompt=prompt,
        negative_prompt=default("negative_prompt"),
        input_id_images=[Image.new("RGB", (side, side))],
        start_merge_step=merge_step(default("style_strength"), steps),
        num_inference_steps=steps,
        guidance_scale=default("guidance_scale"),
        num_images_per_prompt=BY_NAME["num_outputs"].low,
        height=height,
        width=width,
    )
    if getattr(pipe, "pm_version", None) == "v2":
        call["id_embeds"] = torch.zeros(1, config.id_embedding_dim)
    return call


def compile_ahead_of_time(pipe: Any, settings: Settings) -> Any:
    """With ``--aot``, compile the UNet ahead of time (:mod:`photomaker.aot`) on the call of
    :func:`aot_example_call` and put the compiled forward in place; ``pipe`` is returned
    either way. On ZeroGPU the compile runs in a long ``spaces.GPU`` call at start-up and the
    main process applies its result (:func:`photomaker.zerogpu.compile_unet_on_gpu`);
    elsewhere here. Any failure leaves the UNet eager, with a warning saying why."""
    if not settings.aot:
        return pipe
    from . import aot

    shapes = aot.ShapeRange.for_tiny() if settings.tiny else aot.ShapeRange()
    example = aot_example_call(pipe, settings)
    logger.info(
        "compiling the UNet ahead of time (%s; on a %dx%d call), or loading it from an "
        "earlier start's cache: compiling takes minutes on a GPU",
        shapes,
        example["width"],
        example["height"],
    )
    start = time.perf_counter()
    if on_zerogpu():
        from .zerogpu import compile_unet_on_gpu

        forward = compile_unet_on_gpu(pipe, example, shapes)
    else:
        cache = settings.aot_cache_folder()
        forward = aot.compile_unet_ahead_of_time(pipe, example, shapes, cache=cache)
    seconds = time.perf_counter() - start
    if forward is None:  # the warning with the reason is logged already
        logger.info("ahead-of-time compilation gave up after %.0f s", seconds)
    else:
        logger.info("ahead-of-time compilation done in %.0f s", seconds)
    return pipe


def load_model(
    model_class: Any, location: str, dtype: torch.dtype, what: str, setting: str, hint: str = ""
) -> Any:
    """A diffusers model (``T2IAdapter``, ``ControlNetModel``) from a hub id, a folder or
    (where the class reads one) a single ``.safetensors`` file, in ``dtype``.

    Half-precision dtypes try the repo's ``fp16`` variant first (half the download), then
    the default weights, as :func:`load_base_pipeline` does. A model that cannot be found is
    a :class:`PhotoMakerInputError` naming the setting to change (:func:`model_errors`)."""
    path = os.path.expanduser(location)
    with model_errors(what, location, setting, hint):
        if path.lower().endswith(SINGLE_FILE_SUFFIXES):
            if not os.path.isfile(path) or not hasattr(model_class, "from_single_file"):
                raise OSError(f"{location} is not a file {model_class.__name__} can read")
            return model_class.from_single_file(path, dtype=dtype)
        location = path if os.path.isdir(path) else location
        if dtype in (torch.float16, torch.bfloat16):
            try:
                return model_class.from_pretrained(location, dtype=dtype, variant="fp16")
            except (ValueError, OSError) as error:
                if "variant" not in str(error).lower() and "fp16" not in str(error):
                    raise
                logger.info("no fp16 variant of %s; loading the default weights", location)
        return model_class.from_pretrained(location, dtype=dtype)


def load_doodle_adapter(settings: Settings) -> Any | None:
    """The doodle's T2I-Adapter, or ``None`` when the doodle is off; a tiny random one in
    tiny mode (whatever adapter is named, unless it is ``none``).

    An adapter named in the settings must load (else :class:`PhotoMakerInputError`). The
    default one is optional: where it is neither in the Hugging Face cache nor downloadable
    (offline, ``HF_HUB_OFFLINE=1``, no access), the doodle is off, with a warning in the
    log, and everything else starts as usual."""
    location = settings.doodle_adapter_location
    if location is None:
        return None
    if settings.tiny:
        from .tiny import build_tiny_t2i_adapter

        return build_tiny_t2i_adapter(seed=0)
    from diffusers import T2IAdapter

    logger.info("loading the doodle adapter %s", location)
    args = (T2IAdapter, location, settings.resolved_dtype(), "doodle adapter", "doodle_adapter")
    hint = "--doodle-adapter none turns the doodle off"
    if settings.doodle_adapter_required:
        return load_model(*args, hint=hint)
    try:
        return load_model(*args, hint=hint)
    except Exception as error:  # optional: any failure (offline, no access) turns it off
        logger.warning(
            "the doodle is off: the default doodle adapter %s could not be loaded (%s). "
            "Download it (hf download %s), name one with --doodle-adapter, or give "
            "--doodle-adapter none to silence this.",
            location,
            error,
            location,
        )
        return None


def load_controlnet(settings: Settings) -> Any | None:
    """The ControlNet named by the settings, or ``None``; a tiny random one in tiny mode."""
    if not settings.controlnet:
        return None
    if settings.tiny:
        from .tiny import build_tiny_controlnet

        return build_tiny_controlnet(seed=0)
    from diffusers import ControlNetModel

    logger.info("loading the ControlNet %s", settings.controlnet)
    dtype = settings.resolved_dtype()
    return load_model(ControlNetModel, settings.controlnet, dtype, "ControlNet", "controlnet")


def tiny_fast_lora_file(settings: Settings) -> Path:
    """The tiny distillation LoRA (released layout) on disk, written once per folder."""
    from .tiny import write_tiny_fast_lora

    folder = Path(os.environ.get("PHOTOMAKER_TINY_CACHE") or tempfile.gettempdir())
    path = folder / "photomaker-tiny" / "tiny-fast-lora-seed0.safetensors"
    if not path.is_file():  # the same bytes in every process (seeded); written atomically
        write_tiny_fast_lora(path)
    return path


def load_fast_lora(pipe: Any, settings: Settings) -> Any | None:
    """Attach the fast mode's distillation LoRA (:mod:`photomaker.fast`); returns its
    :class:`~photomaker.fast.FastMode`, or ``None`` when the mode is hidden.

    Tiny mode loads a tiny LoRA in the released layout (whatever LoRA is named, unless it is
    ``none``), from a file, through the same path. A LoRA named in the settings must load
    (else :class:`PhotoMakerInputError`); the default one is optional: where it is neither in
    the Hugging Face cache nor downloadable, the fast mode is off, with a warning."""
    from . import fast

    location = settings.fast_lora_location
    if location is None:
        return None
    mode = fast.mode_for(location)
    if settings.tiny:
        return fast.attach_fast_lora(
            pipe, str(tiny_fast_lora_file(settings)), mode=mode, fuse=settings.fast_fuse
        )
    if settings.fast_lora_required:
        hint = "It may also be owner/repo/file.safetensors; --fast-lora none hides the mode"
        with model_errors("fast LoRA", location, "fast_lora", hint):
            return fast.attach_fast_lora(pipe, location, mode=mode, fuse=settings.fast_fuse)
    try:
        return fast.attach_fast_lora(pipe, location, mode=mode, fuse=settings.fast_fuse)
    except Exception as error:  # optional: any failure (offline, no access) hides the mode
        if fast.FAST_ADAPTER in pipe.get_list_adapters().get("unet", []):
            pipe.delete_adapters(fast.FAST_ADAPTER)
        logger.warning(
            "fast mode is off: the default fast LoRA %s could not be loaded (%s). Download it, "
            "name one with --fast-lora, or give --fast-lora none to silence this.",
            location,
            error,
        )
        return None


def tiny_style_adapter_file(settings: Settings) -> Path:
    """The tiny IP-Adapter and image encoder (released layout) on disk, once per process."""
    from .tiny import write_tiny_style_adapter

    folder = Path(os.environ.get("PHOTOMAKER_TINY_CACHE") or tempfile.gettempdir())
    folder = folder / "photomaker-tiny" / f"tiny-ip-adapter-{os.getpid()}" / "sdxl_models"
    path = folder / "ip-adapter_sdxl.safetensors"
    if not path.is_file():
        write_tiny_style_adapter(folder)
    return path


def load_style_adapter(pipe: Any, settings: Settings) -> Any | None:
    """Attach the style image's IP-Adapter (:mod:`photomaker.style_image`); returns it, or
    ``None`` when the style image is off. Tiny mode loads a tiny one in the released layout
    (unless ``none``). A named adapter must load; the default one is optional (off, with a
    warning, where it cannot be had)."""
    from . import style_image

    location = settings.style_adapter_location
    if location is None:
        return None
    if settings.tiny:
        with without_transformers_progress_bars():
            return style_image.attach_style_adapter(pipe, str(tiny_style_adapter_file(settings)))
    if settings.style_adapter_required:
        hint = (
            "A hub location is owner/repo/subfolder/file, with its image encoder in "
            "image_encoder/ beside the file; --style-adapter none turns the style image off"
        )
        with model_errors("style image's IP-Adapter", location, "style_adapter", hint):
            return style_image.attach_style_adapter(pipe, location)
    try:
        return style_image.attach_style_adapter(pipe, location)
    except Exception as error:  # optional: any failure (offline, no access) turns it off
        if getattr(pipe.unet, "encoder_hid_proj", None) is not None:
            pipe.unload_ip_adapter()
        logger.warning(
            "the style image is off: the default IP-Adapter %s could not be loaded (%s). "
            "Download it, name one with --style-adapter, or give --style-adapter none to "
            "silence this.",
            location,
            error,
        )
        return None


def add_structure_control(pipe: Any, settings: Settings) -> Any:
    """The pipeline that takes a layout as well, on the same models: with ``--controlnet``
    the ControlNet pipeline, else (unless the doodle is off) the T2I-Adapter one.

    Both give exactly the plain pipeline's images when called without their ``image``, so
    the service and the app use whichever comes back the same way. One structure control at a
    time: a ControlNet replaces the doodle adapter."""
    controlnet = load_controlnet(settings)
    if controlnet is not None:
        from .pipeline_controlnet import PhotoMakerStableDiffusionXLControlNetPipeline

        if settings.doodle_adapter_location:
            logger.info("a ControlNet is loaded, so the doodle adapter is not")
        return PhotoMakerStableDiffusionXLControlNetPipeline.from_photomaker_pipe(
            pipe, controlnet=controlnet
        )
    adapter = load_doodle_adapter(settings)
    if adapter is None:
        return pipe
    from .pipeline_adapter import PhotoMakerStableDiffusionXLAdapterPipeline

    return PhotoMakerStableDiffusionXLAdapterPipeline.from_photomaker_pipe(pipe, adapter=adapter)


def check_device(settings: Settings) -> None:
    """``--device cuda`` (or ``mps``) where PyTorch has none is said before any model loads,
    not as torch's ``AssertionError: Torch not compiled with CUDA enabled`` after."""
    device = settings.resolved_device()
    if device == "cuda" and not (on_zerogpu() or torch.cuda.is_available()):
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise PhotoMakerInputError(
            f"--device cuda, but PyTorch sees no CUDA GPU (torch {torch.__version__}, {build}). "
            "Use --device auto (or cpu), or install PyTorch's CUDA build and the GPU's driver."
        )
    mps = getattr(torch.backends, "mps", None)
    if device == "mps" and not (mps is not None and mps.is_available()):
        raise PhotoMakerInputError(
            "--device mps, but PyTorch sees no Apple GPU (MPS needs macOS 12.3+ on Apple "
            "silicon). Use --device auto (or cpu)."
        )


def build_pipeline(settings: Settings) -> Any:
    """The ready pipeline for these settings."""
    check_device(settings)
    quiet_library_notices()  # before diffusers' pipelines import (photomaker/library_notices.py)
    if settings.tiny:
        from .tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(pm_version=settings.pm_version, seed=0)
        load_style_lora(pipe, settings)
        pipe = add_structure_control(pipe, settings)
        load_fast_lora(pipe, settings)
        load_style_adapter(pipe, settings)
        if settings.device != "auto" or settings.memory in FP8_MODES:
            place(pipe, settings)
        return compile_ahead_of_time(compile_unet(pipe, settings), settings)
    from diffusers import EulerDiscreteScheduler

    pipe = load_base_pipeline(settings)
    load_adapter(pipe, settings)
    load_style_lora(pipe, settings)
    load_fp16_vae(pipe, settings)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = add_structure_control(pipe, settings)
    load_fast_lora(pipe, settings)
    load_style_adapter(pipe, settings)
    place(pipe, settings)
    return compile_ahead_of_time(compile_unet(pipe, settings), settings)


def tiny_face_pack_folder() -> Path:
    """A folder of this process's own for the tiny face pack.

    InsightFace reads the detector file again whenever it runs at a new detection size, so
    the folder must live as long as the process and nobody else may rewrite it."""
    parent = os.environ.get("PHOTOMAKER_TINY_CACHE") or None
    if parent:
        os.makedirs(parent, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="photomaker-tiny-faces-", dir=parent)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)


def build_analyzer(settings: Settings) -> Any:
    """The face analyzer, or ``None`` when nothing needs faces (V1 without cropping)."""
    if settings.pm_version != "v2" and not settings.crop_faces:
        return None
    from .faces import FaceAnalyzer

    if settings.tiny:
        from .tiny_faces import build_face_pack

        pack = build_face_pack(tiny_face_pack_folder())
        return FaceAnalyzer(pack=str(pack), force_cpu=True)
    return FaceAnalyzer(
        pack=settings.face_pack,
        root=settings.face_root,
        force_cpu=settings.resolved_faces_on_cpu(),
    )


def build_likeness_analyzer(settings: Settings, analyzer: Any = None) -> Any:
    """The face analyzer that scores each result's likeness (:func:`faces.likeness`).

    The service's own when it has one (V2, or cropping). V1 needs no faces, so it gets the
    face pack only if it is already on this machine (the tiny one in tiny mode): a missing
    pack gives ``None`` — "likeness n/a" — never a download or an error for an optional
    score."""
    if analyzer is not None:
        return analyzer
    from .faces import FaceAnalyzer

    if settings.tiny:
        from .tiny_faces import build_face_pack

        return FaceAnalyzer(pack=str(build_face_pack(tiny_face_pack_folder())), force_cpu=True)
    try:
        return FaceAnalyzer(
            pack=settings.face_pack,
            root=settings.face_root,
            force_cpu=settings.resolved_faces_on_cpu(),
            allow_download=False,
        )
    except PhotoMakerInputError as error:
        logger.info("no face pack for the likeness score, so likeness n/a: %s", error)
        return None


def build_service(settings: Settings) -> Any:
    """Pipeline + analyzer + styles, ready to generate."""
    from .service import PhotoMakerService
    from .styles import StyleBook

    logger.info("building: %s", settings.describe())
    styles = StyleBook.load(trigger_word=settings.trigger_word)
    analyzer = build_analyzer(settings)
    pipe = build_pipeline(settings)
    likeness_analyzer = build_likeness_analyzer(settings, analyzer)
    return PhotoMakerService(
        pipe,
        analyzer,
        styles,
        crop_faces=settings.crop_faces,
        skip_faceless_photos=settings.skip_faceless_photos,
        max_photos=settings.max_photos,
        max_photo_megapixels=settings.max_photo_megapixels,
        tiny=settings.tiny,
        likeness_analyzer=likeness_analyzer,
    )
