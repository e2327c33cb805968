"""One settings object for the app and the CLI, from command-line flags and environment.

Every setting has a flag (``--base-model``) and an environment variable
(``PHOTOMAKER_BASE_MODEL``); a flag given on the command line wins over the environment,
which wins over the default. Spaces set environment variables in the Space settings, a
workstation usually passes flags. :data:`FIELDS` is the single table both come from (the
README's settings table is written from it).

``device`` and ``dtype`` may be ``auto``; :meth:`Settings.resolved_device` and
:meth:`Settings.resolved_dtype` turn them into what the machine supports.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PhotoMakerInputError

DEFAULT_BASE_MODEL = "SG161222/RealVisXL_V4.0"
#: The SDXL sketch T2I-Adapter the reference V2 demo uses for the doodle.
DEFAULT_DOODLE_ADAPTER = "TencentARC/t2i-adapter-sketch-sdxl-1.0"
#: Values of ``doodle_adapter`` that turn the doodle off.
DOODLE_OFF = ("none", "off", "")

#: Official checkpoints: version -> (hub repo id, file name in the repo).
OFFICIAL_CHECKPOINTS = {
    "v1": ("TencentARC/PhotoMaker", "photomaker-v1.bin"),
    "v2": ("TencentARC/PhotoMaker-V2", "photomaker-v2.bin"),
}

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "bfloat16", "float16", "float32")
MEMORY_MODES = (
    "auto",
    "full",
    "model-offload",
    "encoder-offload",
    "sequential-offload",
    "fp8",
    "group-offload",
    "group-offload-fp8",
)
#: The memory modes in which the UNet's weights stay on the GPU in the run dtype, where they
#: are: the ahead-of-time graph and a fused fast call may rely on them.
UNET_RESIDENT_MODES = ("full", "encoder-offload")
#: What ``memory auto`` picks from, fastest first, each with its peak VRAM for one 1024²
#: image in GB (1e9 bytes). Only modes that compute exactly as full does (no fp8).
AUTO_MEMORY_PEAKS_GB = (
    ("full", 10.96),  # measured on an H100: bench/results-gpu-h100.md
    ("encoder-offload", 6.0),  # an estimate: model-offload's 5.81 plus the resident VAE's 0.17
    ("model-offload", 5.81),  # measured on an H100 (1.8x full's time)
    # measured 5.28 on an H200 (3.7x) before its models were split by layer; now at most
    # 0.51 GB of weights at once (bench/results-memory.md) plus about 0.5 GB of activations
    ("group-offload", 1.5),  # an estimate
    ("sequential-offload", 0.68),  # measured on an H100 (about 15x)
)
#: Room ``memory auto`` leaves beside a mode's peak in the GPU's free memory: cuBLAS's
#: workspaces, the allocator's fragmentation and other programs growing (an estimate; none
#: of them is in the measured peaks). The CUDA context is already out of the free memory.
AUTO_MEMORY_MARGIN_GB = 1.0
#: torch.compile's modes; the ones with CUDA graphs run every job on one thread.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")
#: The fast mode's default distillation LoRA (hub repo/file; see photomaker/fast.py).
DEFAULT_FAST_LORA = "ByteDance/SDXL-Lightning/sdxl_lightning_8step_lora.safetensors"
#: Values of ``fast_lora`` that hide the fast mode.
FAST_LORA_OFF = ("none", "off", "")
#: How fast calls use the distillation LoRA: merged into the weights per call or not.
FAST_FUSE_CHOICES = ("auto", "on", "off")
#: The style image's IP-Adapter: the one the official V2 example loads (hub repo/subfolder/file;
#: its image encoder is the ``image_encoder`` folder beside it).
DEFAULT_STYLE_ADAPTER = "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.bin"
#: Values of ``style_adapter`` that turn the style image off.
STYLE_ADAPTER_OFF = ("none", "off", "")
VERSIONS = ("v1", "v2")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Field:
    """One setting: its attribute name, type, default, choices and help text."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    env_aliases: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "PHOTOMAKER_" + self.name.upper()


FIELDS: tuple[Field, ...] = (
    Field(
        "tiny",
        bool,
        False,
        "Run on tiny random-weight models built offline (outputs are noise); for trying the "
        "app and for tests on a machine without a GPU or weights.",
    ),
    Field(
        "base_model",
        str,
        DEFAULT_BASE_MODEL,
        "SDXL base model: a Hugging Face hub id, a local diffusers folder, or a single "
        ".safetensors file.",
    ),
    Field(
        "pm_version",
        str,
        "v2",
        "PhotoMaker version.",
        choices=VERSIONS,
        env_aliases=("PHOTOMAKER_VERSION",),
    ),
    Field(
        "checkpoint",
        str,
        None,
        "PhotoMaker checkpoint: hub repo id, local folder or file. Default: "
        "TencentARC/PhotoMaker (v1) or TencentARC/PhotoMaker-V2 (v2).",
    ),
    Field(
        "checkpoint_file",
        str,
        None,
        "File name of the checkpoint inside the repo or folder. Default: photomaker-v1.bin "
        "or photomaker-v2.bin.",
    ),
    Field("trigger_word", str, "img", "The trigger word that follows the class word."),
    Field(
        "face_pack",
        str,
        "buffalo_l",
        "InsightFace model pack: a name under FACE_ROOT/models/ or a folder path.",
    ),
    Field("face_root", str, "~/.insightface", "InsightFace root folder (packs in models/)."),
    Field(
        "faces_on_cpu",
        bool,
        None,
        "Run face analysis on the CPU (default: yes on ZeroGPU and CPU machines).",
    ),
    Field(
        "crop_faces",
        bool,
        False,
        "Crop each ID photo around its face before the ID encoder (helps when faces are small).",
    ),
    Field(
        "skip_faceless_photos",
        bool,
        False,
        "Drop photos without a face (with a warning) instead of refusing the request.",
    ),
    Field("device", str, "auto", "Device for the pipeline.", choices=DEVICES),
    Field(
        "dtype",
        str,
        "auto",
        "Weights dtype: auto = bfloat16 on GPUs with native bf16 (Ampere and newer), float16 "
        "on older ones (T4, V100); float32 on CPU.",
        choices=DTYPES,
    ),
    Field(
        "memory",
        str,
        "auto",
        "GPU memory mode: auto (the fastest exact mode whose peak, estimated from the models "
        "loaded, fits the GPU's free memory at start-up with 1 GB to spare: with the default "
        "style image, doodle and fast mode, full from about 17 GB free, encoder-offload from "
        "about 8 GB, then model-offload, group-offload, sequential-offload; full on the CPU "
        "and on ZeroGPU; the choice, its estimate and the free memory are in the log), full "
        "(every model on the GPU, fastest; 10.96 GB peak for SDXL and PhotoMaker alone, an "
        "estimated 15.7 GB with the default optional models), model-offload "
        "(each model visits the GPU only while it runs: 5.81 GB peak at 1.8x full's time on an "
        "H100, the fastest measured mode under 8 GB), encoder-offload (the UNet and VAE stay on "
        "the GPU, the text and ID encoders visit it a layer at a time, once per call: an "
        "estimated 6.0 GB peak at close to full speed, not yet measured on a GPU), "
        "sequential-offload (layer by layer: 0.68 "
        "GB, about 15x slower), fp8 (full, the UNet's weights stored in float8: 8.38 GB at "
        "1.66x on an H200, and a relative error of 0.2 per UNet call on random weights), "
        "group-offload (diffusers' group offloading with CUDA streams, every model split down "
        "to its layers: 3.7x, the UNet crosses PCIe every step; 5.28 GB before the split, an "
        "estimated 1-1.5 GB now) or group-offload-fp8 (both: 2.87 GB at 4.8x before the "
        "split). Figures: bench/results-gpu-h100.md, bench/results-gpu.md.",
        choices=MEMORY_MODES,
    ),
    Field(
        "low_vram",
        bool,
        False,
        "Alias of --memory model-offload (kept for old scripts).",
    ),
    Field(
        "compile",
        bool,
        False,
        "torch.compile the UNet (slow first call, faster steps after; channels-last and "
        "inductor's conv_1x1_as_mm, as diffusers recommends for SDXL). Not on ZeroGPU.",
    ),
    Field(
        "compile_mode",
        str,
        "default",
        "torch.compile's mode for --compile. reduce-overhead adds CUDA graphs (the benchmark's "
        "fastest: 1.78 s per 1024x1024 image and 0.35 s in fused fast mode on an H200, "
        "bench/results-gpu-h200-second.md); each size and image count records its own graphs, "
        "and every job then runs on one GPU thread, since PyTorch keeps CUDA graphs per thread. "
        "max-autotune also tunes the kernels (much longer compiles).",
        choices=COMPILE_MODES,
    ),
    Field(
        "aot",
        bool,
        False,
        "Compile the UNet ahead of time at start-up (torch.export + AOTInductor, one graph for "
        "1-4 images and every aspect-ratio preset): minutes once per start, faster steps "
        "after; the way to compile on ZeroGPU, where --compile cannot run. Fast mode, the "
        "doodle, the style image and other sizes run the uncompiled UNet; a failed compile "
        "leaves it uncompiled, with a warning. Needs --memory full or encoder-offload; not "
        "with --compile.",
    ),
    Field(
        "aot_cache",
        str,
        "auto",
        "Where --aot keeps the compiled UNets it builds, so that the next start with the same "
        "torch, GPU, models and settings loads one in seconds instead of compiling for "
        "minutes: auto (photomaker/aot in the Hugging Face cache folder, HF_HOME: it "
        "persists at home, and on a Space with persistent storage), a folder, or none. Not "
        "used on ZeroGPU, where the compile runs in a GPU worker at every start.",
    ),
    Field(
        "vae_fp16_fix",
        str,
        None,
        "An fp16-safe SDXL VAE (hub id or folder, e.g. madebyollin/sdxl-vae-fp16-fix) so fp16 "
        "cards decode without the fp32 upcast.",
    ),
    Field(
        "style_lora",
        str,
        None,
        "Optional style LoRA (hub id, folder or .safetensors file) for a stylized look.",
    ),
    Field("style_lora_weight", float, 0.8, "Weight of the style LoRA."),
    Field(
        "doodle_adapter",
        str,
        None,
        "SDXL T2I-Adapter (hub id or folder) that turns a doodle into the picture's layout, "
        f"loaded at start-up; 'none' turns the doodle off. Default: {DEFAULT_DOODLE_ADAPTER} "
        "when it is in the Hugging Face cache or can be downloaded, else the doodle is off "
        "(with a warning); an adapter named here must load.",
    ),
    Field(
        "fast_lora",
        str,
        None,
        "Few-step distillation LoRA for the Fast mode (hub id, owner/repo/file.safetensors, "
        f"folder or file), loaded at start-up; 'none' hides the mode. Default: "
        f"{DEFAULT_FAST_LORA} (openrail++) when it is in the Hugging Face cache or can be "
        "downloaded, else the mode is off (with a warning); a LoRA named here must load.",
    ),
    Field(
        "fast_fuse",
        str,
        "auto",
        "How a Fast request uses the distillation LoRA. on: merged into the UNet's weights "
        "for that request (PEFT merge) after cloning the weights it touches, which are put "
        "back bit for bit afterwards: plain SDXL's cost per step, but the clone takes VRAM "
        "during fast requests (5.12 GB in bf16 at full size) and a few copies per request. "
        "off: the unfused adapter (no extra memory; thousands of small extra kernels per "
        "step, slow on a GPU). auto: on when the UNet is on a CUDA device with room for the "
        "clone plus 4 GiB, else off (so off on the CPU and in the offload and fp8 modes). "
        "Quality images are the same in all three. on needs --memory full or "
        "encoder-offload.",
        choices=FAST_FUSE_CHOICES,
    ),
    Field(
        "style_adapter",
        str,
        None,
        "IP-Adapter for the style image (owner/repo/subfolder/file, folder or file; its image "
        "encoder is the image_encoder folder beside it), loaded at start-up; 'none' turns the "
        f"style image off. Default: {DEFAULT_STYLE_ADAPTER} (the official V2 example's) when it "
        "is in the Hugging Face cache or can be downloaded, else the style image is off (with a "
        "warning); an adapter named here must load.",
    ),
    Field(
        "controlnet",
        str,
        None,
        "Optional SDXL ControlNet (hub id, folder or .safetensors file) for control images "
        "(library and CLI; replaces the doodle adapter).",
    ),
    Field("max_photos", int, 10, "Most ID photos accepted per request."),
    Field(
        "max_photo_megapixels",
        float,
        40.0,
        "Most pixels a photo may need decoded, in megapixels, checked from the file header "
        "before decoding (a large JPEG counts at the reduced scale it is decoded at).",
    ),
    Field(
        "host",
        str,
        "127.0.0.1",
        "Address the app listens on (0.0.0.0 for all).",
        env_aliases=("GRADIO_SERVER_NAME",),
    ),
    Field("port", int, 7860, "Port the app listens on.", env_aliases=("GRADIO_SERVER_PORT",)),
    Field("share", bool, False, "Create a public gradio.live link."),
    Field("queue_size", int, 20, "Most requests waiting in the queue."),
)

#: Each setting's :class:`Field` by its attribute name.
FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


def on_zerogpu(env: Mapping[str, str] | None = None) -> bool:
    """True on a Hugging Face Space with ZeroGPU hardware."""
    env = os.environ if env is None else env
    return env.get("SPACES_ZERO_GPU", "").lower() in _TRUE


@functools.cache
def gpu_memory_at_start(index: int) -> tuple[int, int]:
    """``(free, total)`` bytes of CUDA GPU ``index`` the first time this process asks, before
    it loads anything there; later calls give the same answer, so the log and the placement
    agree. Free, not total: on a home machine the desktop and the browser hold part of the
    card (often 0.5-1.5 GB of an 8 GB one), and this process's CUDA context is already out."""
    import torch

    return torch.cuda.mem_get_info(index)


def pick_memory_mode(
    free_gb: float, unet_resident: bool = False, peaks: Mapping[str, float] | None = None
) -> str:
    """The first mode whose peak plus :data:`AUTO_MEMORY_MARGIN_GB` fits in ``free_gb``, in
    :data:`AUTO_MEMORY_PEAKS_GB`'s order (fastest first); ``peaks`` (mode → GB, the loaded
    pipeline's estimates, :mod:`photomaker.memory_estimate`) replace the table's figures,
    which are SDXL and PhotoMaker's alone. With ``unet_resident`` only the modes that keep
    the UNet in place (the smallest of them when none fits: it may still run)."""
    table = dict(AUTO_MEMORY_PEAKS_GB)
    if peaks is not None:
        table.update(peaks)
    for mode, _ in AUTO_MEMORY_PEAKS_GB:
        if unet_resident and mode not in UNET_RESIDENT_MODES:
            continue
        if table[mode] + AUTO_MEMORY_MARGIN_GB <= free_gb:
            return mode
    return UNET_RESIDENT_MODES[-1] if unet_resident else AUTO_MEMORY_PEAKS_GB[-1][0]


def native_bf16() -> bool:
    """True when the CUDA GPU computes bfloat16 in hardware (compute capability 8.0+:
    Ampere and newer). ``torch.cuda.is_bf16_supported()`` also counts emulation, which makes
    T4s and V100s several times slower than in float16."""
    import torch

    try:
        major, _minor = torch.cuda.get_device_capability()
    except (RuntimeError, AssertionError, AttributeError):
        return False
    return major >= 8


def _convert(field: Field, raw: Any, source: str) -> Any:
    if raw is None:
        return None
    if field.type is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise PhotoMakerInputError(f"{source}: expected true/false (or 1/0), got {raw!r}.")
    try:
        value = field.type(raw)
    except (TypeError, ValueError):
        raise PhotoMakerInputError(
            f"{source}: expected {_KIND_NAMES.get(field.type, field.type.__name__)}, got {raw!r}."
        ) from None
    if field.choices and value not in field.choices:
        raise PhotoMakerInputError(f"{source}: {value!r} is not one of {', '.join(field.choices)}.")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the app, the service and the CLI are configured with."""

    tiny: bool = False
    base_model: str = DEFAULT_BASE_MODEL
    pm_version: str = "v2"
    checkpoint: str | None = None
    checkpoint_file: str | None = None
    trigger_word: str = "img"
    face_pack: str = "buffalo_l"
    face_root: str = "~/.insightface"
    faces_on_cpu: bool | None = None
    crop_faces: bool = False
    skip_faceless_photos: bool = False
    device: str = "auto"
    dtype: str = "auto"
    memory: str = "auto"
    low_vram: bool = False
    compile: bool = False
    compile_mode: str = "default"
    aot: bool = False
    aot_cache: str = "auto"
    vae_fp16_fix: str | None = None
    style_lora: str | None = None
    style_lora_weight: float = 0.8
    doodle_adapter: str | None = None  # None: the default adapter, if it can be had
    fast_lora: str | None = None  # None: the default distillation LoRA, if it can be had
    fast_fuse: str = "auto"
    style_adapter: str | None = None  # None: the default IP-Adapter, if it can be had
    controlnet: str | None = None
    max_photos: int = 10
    max_photo_megapixels: float = 40.0
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    queue_size: int = 20

    def __post_init__(self) -> None:
        for field in FIELDS:
            value = getattr(self, field.name)
            if field.choices and value not in field.choices:
                raise PhotoMakerInputError(
                    f"Setting {field.name}: {value!r} is not one of {', '.join(field.choices)}."
                )
        if self.low_vram and self.memory in ("auto", "full"):  # the old flag is an alias
            object.__setattr__(self, "memory", "model-offload")
        if self.aot and self.compile:
            raise PhotoMakerInputError(
                "Settings aot and compile both compile the UNet: choose one (aot also works "
                "on ZeroGPU, compile does not)."
            )
        if self.compile_mode != "default" and not self.compile:
            raise PhotoMakerInputError(
                f"Setting compile_mode {self.compile_mode} is torch.compile's mode: it needs "
                "compile on (--compile, PHOTOMAKER_COMPILE=1)."
            )
        if self.aot and self.memory not in ("auto", *UNET_RESIDENT_MODES):
            raise PhotoMakerInputError(
                f"Setting aot needs memory full or encoder-offload, not {self.memory}: the "
                "compiled UNet reads its weights on the GPU where they were at compile time "
                "(on ZeroGPU, a copy of them), which the other offload modes move, and fp8 "
                "storage is not verified with it. Unset one of them."
            )
        if self.fast_fuse == "on" and self.memory not in ("auto", *UNET_RESIDENT_MODES):
            raise PhotoMakerInputError(
                f"Setting fast_fuse on needs memory full or encoder-offload, not {self.memory}: "
                "the other offload modes move the UNet's weights between CPU and GPU behind "
                "its back and fp8 stores them in float8, so the fast LoRA cannot be merged "
                "into them for a request. Use fast_fuse auto (it stays off there) or memory "
                "full."
            )
        if not self.max_photo_megapixels > 0:
            raise PhotoMakerInputError("Setting max_photo_megapixels must be above 0.")
        if not 1 <= self.max_photos <= 64:
            raise PhotoMakerInputError("Setting max_photos must be between 1 and 64.")
        if not 0 < self.port < 65536:
            raise PhotoMakerInputError(f"Setting port: {self.port} is not a valid port.")
        if self.queue_size < 1:
            raise PhotoMakerInputError("Setting queue_size must be at least 1.")
        if not self.trigger_word or " " in self.trigger_word:
            raise PhotoMakerInputError("Setting trigger_word must be one word.")

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``PHOTOMAKER_*`` variables (and the Gradio server ones)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in FIELDS:
            for key in (field.env, *field.env_aliases):
                if key in env:
                    values[field.name] = _convert(field, env[key], key)
                    break
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_args(
        cls,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        parser: argparse.ArgumentParser | None = None,
    ) -> Settings:
        """Settings from flags (``argv``, default ``sys.argv[1:]``) over the environment."""
        parser = parser or build_parser()
        return cls.from_namespace(parser.parse_args(argv), env)  # a mistyped flag is an error

    @classmethod
    def from_namespace(
        cls, namespace: argparse.Namespace, env: Mapping[str, str] | None = None
    ) -> Settings:
        overrides = {f.name: getattr(namespace, f.name, None) for f in FIELDS}
        return cls.from_env(env, **overrides)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    # -- derived ------------------------------------------------------------------------

    @property
    def checkpoint_location(self) -> tuple[str, str | None]:
        """(repo id / folder / file, file name or None) of the PhotoMaker checkpoint."""
        repo, weight = OFFICIAL_CHECKPOINTS[self.pm_version]
        if self.checkpoint is None:
            return repo, self.checkpoint_file or weight
        if os.path.isfile(os.path.expanduser(self.checkpoint)):
            return os.path.expanduser(self.checkpoint), None
        return self.checkpoint, self.checkpoint_file or weight

    @property
    def doodle_adapter_location(self) -> str | None:
        """The doodle adapter to load (hub id or folder), or ``None`` when the doodle is off."""
        if self.doodle_adapter is None:
            return DEFAULT_DOODLE_ADAPTER
        if self.doodle_adapter.strip().lower() in DOODLE_OFF:
            return None
        return self.doodle_adapter

    @property
    def doodle_adapter_required(self) -> bool:
        """True when the adapter was named (flag or environment): then it must load. The
        default one is optional: where it cannot be had, the app starts with the doodle off."""
        return self.doodle_adapter_location is not None and self.doodle_adapter is not None

    @property
    def fast_lora_location(self) -> str | None:
        """The fast mode's LoRA (hub id, repo/file, folder or file), or ``None`` when the mode
        is hidden."""
        if self.fast_lora is None:
            return DEFAULT_FAST_LORA
        if self.fast_lora.strip().lower() in FAST_LORA_OFF:
            return None
        return self.fast_lora

    @property
    def fast_lora_required(self) -> bool:
        """True when the LoRA was named (flag or environment): then it must load. The default
        one is optional: where it cannot be had, the app starts without the fast mode."""
        return self.fast_lora_location is not None and self.fast_lora is not None

    @property
    def style_adapter_location(self) -> str | None:
        """The style image's IP-Adapter, or ``None`` when the style image is off."""
        if self.style_adapter is None:
            return DEFAULT_STYLE_ADAPTER
        if self.style_adapter.strip().lower() in STYLE_ADAPTER_OFF:
            return None
        return self.style_adapter

    @property
    def style_adapter_required(self) -> bool:
        """True when the adapter was named: then it must load; the default one is optional."""
        return self.style_adapter_location is not None and self.style_adapter is not None

    def resolved_device(self) -> str:
        """``cuda``, ``mps`` or ``cpu``; ``auto`` picks the best available."""
        if self.device != "auto":
            return self.device
        if self.tiny:
            return "cpu"
        import torch

        if on_zerogpu() or torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"

    def aot_cache_folder(self) -> Path | None:
        """The folder of :attr:`aot_cache` (``auto``: ``<HF_HOME>/photomaker/aot``), or
        ``None`` when the cache is off."""
        if self.aot_cache.strip().lower() in ("none", "off", ""):
            return None
        if self.aot_cache == "auto":
            from huggingface_hub import constants

            return Path(constants.HF_HOME) / "photomaker" / "aot"
        return Path(self.aot_cache).expanduser()

    def auto_asks_the_gpu(self) -> bool:
        """True when ``memory auto`` chooses by the GPU's memory: on CUDA, off ZeroGPU (48 GB,
        and no GPU in this process to ask), with a GPU there."""
        if self.memory != "auto" or self.resolved_device() != "cuda" or on_zerogpu():
            return False
        import torch

        return torch.cuda.is_available()  # --device cuda without one: check_device says so

    def resolved_memory(self, peaks: Mapping[str, float] | None = None) -> str:
        """The memory mode; ``auto`` picks by the GPU's free memory when it is first asked
        (:func:`gpu_memory_at_start`, :func:`pick_memory_mode`), from ``peaks`` when given (the
        loaded pipeline's estimates, :func:`photomaker.memory_estimate.estimate_peaks_gb`),
        among the modes that keep the UNet in place when ``aot`` or ``fast_fuse on`` needs it.
        Off CUDA and on ZeroGPU it is ``full``."""
        if self.memory != "auto":
            return self.memory
        if not self.auto_asks_the_gpu():
            return "full"
        import torch

        free, _ = gpu_memory_at_start(torch.cuda.current_device())
        unet_resident = self.aot or self.fast_fuse == "on"
        return pick_memory_mode(free / 1e9, unet_resident=unet_resident, peaks=peaks)

    def resolved_dtype(self):
        """The torch dtype: ``auto`` = float32 on CPU (and in tiny mode), bfloat16 where the
        GPU supports it, float16 otherwise."""
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        device = self.resolved_device()
        if self.tiny or device == "cpu":
            return torch.float32
        if device == "cuda":
            if on_zerogpu():  # ZeroGPU hands out H200 slices: native bf16
                return torch.bfloat16
            return torch.bfloat16 if native_bf16() else torch.float16
        return torch.float16

    def resolved_faces_on_cpu(self) -> bool:
        if self.faces_on_cpu is not None:
            return self.faces_on_cpu
        return self.tiny or on_zerogpu() or self.resolved_device() != "cuda"

    def gpu_memory_note(self) -> str:
        """What ``memory auto`` saw, for the log: ``"7.6 of 8.6 GB free at start-up"``, or
        ``""`` where it asked no GPU (another mode chosen, the CPU, ZeroGPU)."""
        if not self.auto_asks_the_gpu():
            return ""
        import torch

        free, total = gpu_memory_at_start(torch.cuda.current_device())
        return f"{free / 1e9:.1f} of {total / 1e9:.1f} GB free at start-up"

    def memory_description(self) -> str:
        """``full``; ``auto: full`` where auto needs no choice (CPU, ZeroGPU); ``auto`` where
        it chooses when the models are placed (by what they hold; the log says)."""
        if self.auto_asks_the_gpu():
            return "auto"
        chosen = self.resolved_memory()
        return chosen if self.memory == chosen else f"{self.memory}: {chosen}"

    def describe(self) -> str:
        """One line for the log."""
        base = "tiny random-weight models" if self.tiny else self.base_model
        return (
            f"PhotoMaker {self.pm_version} on {base}, device={self.resolved_device()}, "
            f"dtype={str(self.resolved_dtype()).replace('torch.', '')}"
            + (f", memory {self.memory_description()}" if self.memory != "full" else "")
            + (", ahead-of-time compile on" if self.aot else "")
            + (
                f", style LoRA {self.style_lora} x{self.style_lora_weight}"
                if self.style_lora
                else ""
            )
        )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add one flag per setting. Defaults are ``None`` so the environment can fill them."""
    group = parser.add_argument_group("settings (flag or PHOTOMAKER_* environment variable)")
    for field in FIELDS:
        help_text = f"{field.help} [env {field.env}; default {field.default!r}]"
        if field.type is bool:
            group.add_argument(
                field.flag,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(
                field.flag,
                dest=field.name,
                type=field.type,
                default=None,
                choices=field.choices,
                help=help_text,
                metavar=None if field.choices else field.name.upper(),
            )
    return parser


#: How a setting's type reads in a message.
_KIND_NAMES = {int: "a whole number", float: "a number", str: "text"}


def build_parser(**kwargs: Any) -> argparse.ArgumentParser:
    kwargs.setdefault(
        "description",
        "The PhotoMaker web app (Gradio). Every setting is a flag here and a PHOTOMAKER_* "
        "environment variable; a flag wins over the variable, which wins over the default.",
    )
    return add_arguments(argparse.ArgumentParser(**kwargs))


def settings_table() -> str:
    """The settings as a Markdown table (for the README)."""
    rows = ["| Flag | Environment variable | Default | What it does |", "|---|---|---|---|"]
    for f in FIELDS:
        env = ", ".join(f"`{e}`" for e in (f.env, *f.env_aliases))
        default = "auto" if f.default is None and f.type is bool else f.default
        default = "—" if default is None else f"`{default}`"
        flag = f"`{f.flag}`" + (f" / `--no-{f.flag[2:]}`" if f.type is bool else "")
        choices = f" One of {', '.join(f.choices)}." if f.choices else ""
        rows.append(f"| {flag} | {env} | {default} | {f.help}{choices} |")
    return "\n".join(rows)
