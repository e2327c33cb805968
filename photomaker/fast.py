"""Fast mode: a few-step distillation LoRA next to PhotoMaker's, switched per request.

*Quality* is the pipeline as it always was (50 Euler steps, guidance 5). *Fast* adds a
distillation LoRA — by default ByteDance's SDXL-Lightning 8-step LoRA (openrail++, the
licence of SDXL itself, so a public Space may serve it) — and runs the scheduler, step count
and guidance its authors recommend: Euler with ``timestep_spacing="trailing"``, 8 steps,
no classifier-free guidance (so the negative prompt has no effect in fast mode).

Design, and why (measured by ``bench/fast_mode.py``, see ``bench/results-fast.md``):

* The distillation LoRA stays a **PEFT adapter**, *disabled* in quality mode. A disabled
  PEFT layer runs only its base layer, so quality mode's UNet FLOPs per step are exactly
  plain SDXL's, and quality calls never touch the weights, so switching to fast and back
  gives bit-identical quality images. Switching is a flag per wrapped layer (milliseconds,
  no memory). A fast call runs the adapter either unfused (a side path in every wrapped
  layer) or, on a GPU with room, merged for that call only (below): that costs a clone of
  every weight it touches (nearly the whole UNet: ≈ 5 GB in bf16 at full size) and a merge
  and restore per fast call, since fused-then-unfused bf16 weights are not the same numbers.
* PEFT ignores unmerged adapters in a layer where another adapter is merged, and PhotoMaker's
  LoRA (and the style LoRA) are merged into the UNet at load. So :func:`attach_fast_lora`
  first *bakes* them: every loaded adapter must be fused, then diffusers'
  ``unload_lora_weights`` drops the PEFT wrappers and keeps the fused weights (bit for bit
  the same UNet). After that the PhotoMaker and style LoRAs can no longer be re-weighted at
  run time (``fuse_adapters``); reload the pipeline to change them.
* The scheduler swap uses ``SchedulerClass.from_config(pipe.scheduler.config, **overrides)``
  and the quality scheduler object is put back afterwards (:func:`generation_mode`).
* **Fused fast calls** (setting ``fast_fuse``; :func:`fused_fast_weights`). On a GPU the
  unfused adapter is what makes fast mode slow: its side path is 8.3 % of the FLOPs but
  thousands of small kernels per step (H200, full size: a fast step at batch 1 took longer
  than a quality step at batch 2, bench/results-gpu.md). So a fast call may instead, under
  the GPU lock, clone the weights the LoRA touches (on their own device: ≈ 5.1 GB in bf16 at
  full size, a device-to-device copy), merge the adapter with PEFT's own ``merge`` (a merged
  PEFT layer runs only its base layer), run, and then ``unmerge`` and copy the clone back
  bit for bit (``W + ΔW − ΔW`` in bf16 is not ``W``) — also after an error. Nothing
  persists between calls; quality images stay bit-identical. ``auto`` fuses where the
  weights sit on a CUDA device with room for the clone (:func:`fuse_decision`); offloaded
  or float8-stored weights are never fused.

The style strength keeps its meaning (share of the steps before the identity comes in):
with 8 steps, ``merge_step(20, 8)`` is 1, so steps 0 and 1 are text-only (the official
pipeline's ``i <= start_merge_step``) and steps 2–7 see the identity.

No real weights exist where this project is tested: the fast mode's pictures have not been
judged here. What the tests prove is the wiring, the step counts, the FLOPs and the exactness
of quality mode (tests/test_fast.py, on a tiny LoRA in the released layout).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import PhotoMakerInputError
from .library_notices import without_text_encoder_lora_notice
from .settings import DEFAULT_FAST_LORA, FAST_FUSE_CHOICES

logger = logging.getLogger(__name__)

#: The PEFT adapter name of the distillation LoRA.
FAST_ADAPTER = "fast"
#: The hub repo of the default distillation LoRA (settings.DEFAULT_FAST_LORA is repo/file).
DEFAULT_FAST_LORA_REPO = "ByteDance/SDXL-Lightning"


@dataclass(frozen=True)
class FastMode:
    """What fast mode runs: which LoRA, which scheduler with which settings, how many steps,
    which guidance. ``steps`` and ``guidance_scale`` replace the request's in fast mode."""

    name: str
    lora: str
    scheduler: str
    scheduler_overrides: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 8
    guidance_scale: float = 0.0
    lora_scale: float = 1.0
    licence: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "scheduler_overrides", MappingProxyType(dict(self.scheduler_overrides))
        )

    @property
    def uses_negative_prompt(self) -> bool:
        """Classifier-free guidance (and so the negative prompt) runs only above 1."""
        return self.guidance_scale > 1

    @property
    def unet_calls_per_image(self) -> int:
        return self.steps * (2 if self.uses_negative_prompt else 1)

    def trade(self) -> str:
        """One sentence for the UI: what fast mode gives up."""
        cfg = "" if self.uses_negative_prompt else "; the negative prompt has no effect"
        return (
            f"Fast: {self.steps} steps with {self.name} (guidance {self.guidance_scale:g}"
            f"{cfg}). Much quicker, usually less detail and a weaker likeness than Quality."
        )

    def call_overrides(self) -> dict[str, Any]:
        """The pipeline-call arguments fast mode sets."""
        return {"num_inference_steps": self.steps, "guidance_scale": self.guidance_scale}

    def record(self) -> dict[str, Any]:
        """What the PNG metadata should record about the mode (with the steps and guidance
        actually used)."""
        return {
            "mode": "fast",
            "fast_lora": self.lora,
            "scheduler": self.scheduler,
            **{f"scheduler_{k}": v for k, v in self.scheduler_overrides.items()},
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
        }


#: Known distillation LoRAs and their authors' settings, matched on the file or repo name.
#: SDXL-Lightning's are its model card's diffusers example (Euler, trailing, CFG 0, as many
#: steps as the file's name says); LCM-LoRA's are its documented range (LCMScheduler,
#: 2–8 steps, CFG 1–2). Hyper-SD is not listed: its licence is ByteDance's own since the
#: model card dropped ``openrail++`` (Aug 2024), so it is not offered by default.
PRESETS: dict[str, FastMode] = {
    "sdxl_lightning_8step": FastMode(
        "SDXL-Lightning 8-step",
        DEFAULT_FAST_LORA,
        "EulerDiscreteScheduler",
        {"timestep_spacing": "trailing"},
        steps=8,
        guidance_scale=0.0,
        licence="openrail++",
    ),
    "sdxl_lightning_4step": FastMode(
        "SDXL-Lightning 4-step",
        f"{DEFAULT_FAST_LORA_REPO}/sdxl_lightning_4step_lora.safetensors",
        "EulerDiscreteScheduler",
        {"timestep_spacing": "trailing"},
        steps=4,
        guidance_scale=0.0,
        licence="openrail++",
    ),
    "lcm-lora-sdxl": FastMode(
        "LCM-LoRA SDXL",
        "latent-consistency/lcm-lora-sdxl",
        "LCMScheduler",
        {},
        steps=6,
        guidance_scale=1.0,
        licence="",  # not checked here
    ),
}
DEFAULT_MODE = PRESETS["sdxl_lightning_8step"]


def mode_for(location: str) -> FastMode:
    """The preset whose key appears in ``location`` (case-insensitive), with ``lora`` set to
    ``location``; an unknown LoRA gets the default (SDXL-Lightning 8-step) settings."""
    lowered = location.lower().replace("\\", "/")
    for key, preset in PRESETS.items():
        if key in lowered:
            return _with_lora(preset, location)
    logger.info(
        "fast LoRA %s is not a known one; using %s's settings (%s, %d steps, guidance %g)",
        location, DEFAULT_MODE.name, DEFAULT_MODE.scheduler, DEFAULT_MODE.steps,
        DEFAULT_MODE.guidance_scale,
    )
    return _with_lora(DEFAULT_MODE, location)


def _with_lora(mode: FastMode, lora: str) -> FastMode:
    from dataclasses import replace

    return replace(mode, lora=lora, scheduler_overrides=dict(mode.scheduler_overrides))


def split_location(location: str) -> tuple[str, dict[str, Any]]:
    """``(repo id or folder, load_lora_weights kwargs)`` for a hub id, a folder, a local
    file, or ``owner/repo/file.safetensors`` (a file inside a hub repo)."""
    path = os.path.expanduser(location)
    if os.path.isfile(path):
        return os.path.dirname(path) or ".", {"weight_name": os.path.basename(path)}
    if os.path.isdir(path):
        return path, {}
    parts = location.split("/")
    if len(parts) > 2 and parts[-1].endswith((".safetensors", ".bin")):
        return "/".join(parts[:2]), {"weight_name": "/".join(parts[2:])}
    return location, {}


#: The file diffusers looks for in a LoRA repo or folder when none is named.
DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def read_lora(location: str) -> dict[str, Any]:
    """The LoRA's tensors, read (and, for a hub id, fetched) before the pipeline is touched,
    so a failure leaves the pipeline as it was. Safetensors only: nothing is unpickled."""
    from safetensors.torch import load_file

    source, kwargs = split_location(location)
    name = kwargs.get("weight_name", DEFAULT_WEIGHT_NAME)
    if os.path.isdir(source):
        path = os.path.join(source, name)
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source, name)
    if not str(path).endswith(".safetensors"):
        raise PhotoMakerInputError(f"The fast LoRA must be a .safetensors file, not {path}.")
    return load_file(path)


# --------------------------------------------------------------------------- random LoRA

#: The UNet parts a few-step distillation LoRA covers (SDXL-Lightning's LoRA covers the
#: attention, feed-forward and projection layers and the ResNets' convolutions and time
#: projections of every block).
FAST_LORA_BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")


def random_fast_lora_state_dict(unet: Any, rank: int = 4, seed: int = 0) -> dict[str, Any]:
    """A random distillation LoRA for ``unet`` in the layout of SDXL-Lightning's
    ``sdxl_lightning_*_lora.safetensors``: kohya keys on diffusers module paths,
    ``lora_unet_<path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, on every
    Linear and Conv2d inside the down, mid and up blocks (a convolution as a k×k down and a
    1×1 up). diffusers converts this layout itself when it loads it. For the tests (tiny
    UNet) and the benchmarks (full size, random weights): the values mean nothing."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for name, module in unet.named_modules():
        if not name.startswith(FAST_LORA_BLOCKS) or ".lora_" in name or ".base_layer" in name:
            continue
        if isinstance(module, nn.Linear):
            fan_in = module.in_features
            down = torch.randn(rank, fan_in, generator=generator)
            up = torch.randn(module.out_features, rank, generator=generator)
        elif isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=generator)
            up = torch.randn(module.out_channels, rank, 1, 1, generator=generator)
        else:
            continue
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = down / fan_in**0.5
        state[f"{key}.lora_up.weight"] = up * 0.1
        state[f"{key}.alpha"] = torch.tensor(float(rank))
    return state


# --------------------------------------------------------------------------- attach, switch

#: The fast mode attached to each UNet (pipelines built with from_photomaker_pipe share it).
_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fast_mode_of(pipe: Any) -> FastMode | None:
    """The fast mode attached to ``pipe``'s UNet, or ``None`` (the mode is hidden)."""
    return _ATTACHED.get(pipe.unet)


def _peft_layers(unet: Any) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


def bake_fused_adapters(pipe: Any) -> None:
    """Make the fused LoRAs (PhotoMaker's, the style one) plain weights: drop the PEFT
    wrappers, keep the fused weights. Refuses when an adapter is loaded but not fused
    (baking would lose it)."""
    unfused = [
        name
        for layer in _peft_layers(pipe.unet)
        for name in layer.lora_A
        if name not in layer.merged_adapters
    ]
    if unfused:
        raise ValueError(
            f"LoRA adapter(s) {sorted(set(unfused))} are loaded but not fused; fuse them "
            "(pipe.fuse_lora) before attaching the fast LoRA."
        )
    if _peft_layers(pipe.unet):
        pipe.unload_lora_weights()  # diffusers keeps the fused weights in the base layers


def attach_fast_lora(
    pipe: Any,
    location: str,
    mode: FastMode | None = None,
    state_dict: Mapping | None = None,
    fuse: str = "auto",
) -> FastMode:
    """Load the distillation LoRA as the disabled PEFT adapter ``fast`` and remember ``mode``
    and the ``fuse`` policy of its calls (``auto``/``on``/``off``, see :func:`fuse_decision`).

    ``location``: hub id, folder, file, or ``owner/repo/file.safetensors``; ``state_dict``
    (optional) is loaded instead of reading ``location`` (tests, tiny mode). Raises
    :class:`PhotoMakerInputError` when the file has no UNet LoRA keys diffusers can place."""
    mode = mode or mode_for(location)
    set_fuse_policy(pipe, fuse)  # checked (and kept) before anything is loaded
    state = dict(state_dict) if state_dict is not None else read_lora(location)
    bake_fused_adapters(pipe)
    logger.info("loading the fast-mode LoRA %s (%s)", location, mode.name)
    with without_text_encoder_lora_notice():  # distillation LoRAs train the UNet only
        pipe.load_lora_weights(state, adapter_name=FAST_ADAPTER)
    layers = [m for m in _peft_layers(pipe.unet) if FAST_ADAPTER in m.lora_A]
    if not layers:
        raise PhotoMakerInputError(
            f"The fast LoRA {location!r} has no UNet LoRA weights diffusers can place on this "
            "UNet; give an SDXL distillation LoRA (e.g. " + DEFAULT_FAST_LORA + ")."
        )
    if mode.lora_scale != 1.0:
        pipe.set_adapters([FAST_ADAPTER], [mode.lora_scale])
    pipe.unet.disable_lora()  # quality mode is the resting state
    _ATTACHED[pipe.unet] = mode
    logger.info("fast mode ready: %s on %d UNet layers", mode.name, len(layers))
    return mode


def fast_layers(pipe: Any) -> int:
    """How many UNet layers carry the fast LoRA (0 when none is attached)."""
    return sum(FAST_ADAPTER in m.lora_A for m in _peft_layers(pipe.unet))


def set_fast(pipe: Any, enabled: bool) -> None:
    """Turn the fast adapter on or off (PEFT's per-layer flag; weights untouched)."""
    if fast_mode_of(pipe) is None:
        raise PhotoMakerInputError("Fast mode is not available: no fast LoRA is loaded.")
    if enabled:
        pipe.unet.enable_lora()
    else:
        pipe.unet.disable_lora()


def fast_enabled(pipe: Any) -> bool:
    return any(not m.disable_adapters for m in _peft_layers(pipe.unet) if FAST_ADAPTER in m.lora_A)


def fast_scheduler(pipe: Any, mode: FastMode) -> Any:
    """The mode's scheduler, built from the pipeline's with ``from_config``."""
    import diffusers

    scheduler_class = getattr(diffusers, mode.scheduler)
    return scheduler_class.from_config(pipe.scheduler.config, **mode.scheduler_overrides)


# --------------------------------------------------------------------------- fused calls

#: How a fast call uses the LoRA, per UNet (the ``fast_fuse`` setting; ``auto`` if unset).
_FUSE_POLICY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: Room a fused call must leave on the GPU beside its clone of the weights, for the call's
#: own activations and the VAE decode: full mode peaks at 10.96 GB with ≈ 7 GB of weights
#: resident (bench/results-gpu-h100.md), so a call needs about 4 GB on top of the weights.
FUSE_MARGIN_BYTES = 4 * 1024**3
#: diffusers hooks under which the weights are not plain resident tensors.
_WEIGHT_MOVING_HOOKS = frozenset(
    {"group_offloading", "lazy_prefetch_group_offloading", "layerwise_casting"}
)


def set_fuse_policy(pipe: Any, policy: str) -> None:
    """How fast calls on ``pipe`` use the LoRA: ``auto``, ``on`` or ``off``."""
    if policy not in FAST_FUSE_CHOICES:
        raise PhotoMakerInputError(
            f"fast_fuse: {policy!r} is not one of {', '.join(FAST_FUSE_CHOICES)}."
        )
    _FUSE_POLICY[pipe.unet] = policy


def fuse_policy(pipe: Any) -> str:
    return _FUSE_POLICY.get(pipe.unet, "auto")


def _fast_peft_layers(unet: Any) -> list[Any]:
    return [m for m in _peft_layers(unet) if FAST_ADAPTER in m.lora_A]


def _saved_tensors(layer: Any) -> list[Any]:
    """The base-layer tensors PEFT's ``merge`` of the fast adapter writes to."""
    base = layer.get_base_layer()
    tensors = [base.weight]
    if layer.lora_bias.get(FAST_ADAPTER) and getattr(base, "bias", None) is not None:
        tensors.append(base.bias)
    return tensors


def fuse_backup_bytes(pipe: Any) -> int:
    """Bytes of the clone a fused fast call keeps: every tensor the fast LoRA's merge writes
    (SDXL, rank-64 Lightning layout: 2.56 G parameters, 5.12 GB in bf16)."""
    return sum(
        t.numel() * t.element_size()
        for layer in _fast_peft_layers(pipe.unet)
        for t in _saved_tensors(layer)
    )


def fuse_blocker(pipe: Any) -> str | None:
    """Why the fast LoRA cannot be merged into ``pipe``'s UNet weights, or ``None``.

    Offload modes move or replace the weights behind the modules' backs (accelerate's model
    and sequential offload hooks, diffusers' group offloading keeps its own CPU copies), and
    float8 storage would round the merged weights to float8; in all of them the fast calls
    keep the unfused adapter."""
    unet = pipe.unet
    layers = _fast_peft_layers(unet)
    if not layers:
        return "no fast LoRA is attached"
    for module in unet.modules():
        if getattr(module, "_hf_hook", None) is not None:
            return "the UNet is offloaded by accelerate hooks (model or sequential offload)"
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and _WEIGHT_MOVING_HOOKS & set(getattr(registry, "hooks", {})):
            return "the UNet's weights are group-offloaded or stored in float8"
    weights = [t for layer in layers for t in _saved_tensors(layer)]
    if any(t.is_meta for t in weights):
        return "the UNet's weights are not resident (meta tensors)"
    if any(not t.is_floating_point() or t.element_size() < 2 for t in weights):
        return "the UNet's weights are stored in a type below 16 bits"
    if len({t.device for t in weights}) > 1:
        return "the UNet's weights are spread over several devices"
    return None


def _weights_device(pipe: Any) -> Any:
    """Where the weights the fast LoRA touches live (one device: :func:`fuse_blocker`)."""
    return _fast_peft_layers(pipe.unet)[0].get_base_layer().weight.device


def _cuda_bytes_available(device: Any) -> int:
    """What a clone may use: the driver's free memory plus what PyTorch's allocator holds
    unused (the previous fused call's freed clone stays reserved there)."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def fuse_decision(pipe: Any, fuse: bool | None = None) -> tuple[bool, str]:
    """Whether a fast call on ``pipe`` now runs with the LoRA merged, and why.

    ``fuse``: ``True``/``False`` force it (benchmarks, tests); ``None`` follows the policy.
    ``off``: never. ``on``: whenever :func:`fuse_blocker` allows (the memory is not checked).
    ``auto``: when the weights are on a CUDA device with room for the clone plus
    :data:`FUSE_MARGIN_BYTES`; on the CPU never (there the unfused adapter costs little
    beside the clone and merge of every touched weight, see bench/results-fast.md)."""
    policy = fuse_policy(pipe) if fuse is None else ("on" if fuse else "off")
    if policy == "off":
        return False, "fast_fuse is off"
    blocker = fuse_blocker(pipe)
    if blocker is not None:
        return False, blocker
    if policy == "on":
        return True, "fast_fuse is on"
    device = _weights_device(pipe)
    if device.type != "cuda":
        return False, f"the weights are on {device.type}, not a CUDA device"
    need = fuse_backup_bytes(pipe) + FUSE_MARGIN_BYTES
    available = _cuda_bytes_available(device)
    if available < need:
        return False, f"{available / 1e9:.2f} GB free on {device}, {need / 1e9:.2f} GB needed"
    return True, f"{available / 1e9:.2f} GB free on {device}, {need / 1e9:.2f} GB needed"


def fast_fused(unet: Any) -> bool:
    """True while the fast LoRA is merged into ``unet``'s weights (PEFT's own record). The
    AOT-compiled forward checks it: on ZeroGPU its graph carries its own copy of the quality
    weights, so a fused call must run eager (everywhere, to behave the same)."""
    return any(FAST_ADAPTER in m.merged_adapters for m in _fast_peft_layers(unet))


def _restore(saved: list[tuple[Any, list[Any]]]) -> None:
    """PEFT's ``unmerge`` (so its state says unmerged), then the saved tensors copied back
    in place: the subtraction's rounding is overwritten and the storage (which compiled
    graphs and CUDA graphs may hold) stays the same."""
    import torch

    with torch.no_grad():
        for layer, backups in saved:
            if FAST_ADAPTER in layer.merged_adapters:
                layer.unmerge()
            for tensor, backup in zip(_saved_tensors(layer), backups, strict=True):
                tensor.data.copy_(backup)
    saved.clear()


def _fuse(pipe: Any) -> list[tuple[Any, list[Any]]]:
    """Clone the tensors the merge writes, then merge the fast adapter (PEFT's ``merge``);
    returns the clones for :func:`_restore`. On any failure what was done is undone first."""
    import torch

    saved: list[tuple[Any, list[Any]]] = []
    try:
        with torch.no_grad():
            for layer in _fast_peft_layers(pipe.unet):  # clone all first: an OOM merges nothing
                saved.append((layer, [t.detach().clone() for t in _saved_tensors(layer)]))
            for layer, _ in saved:
                layer.merge(adapter_names=[FAST_ADAPTER])
    except BaseException:
        _restore(saved)
        raise
    return saved


@contextmanager
def fused_fast_weights(pipe: Any, fall_back: bool = False) -> Iterator[bool]:
    """The fast LoRA merged into ``pipe``'s UNet weights for the block, the weights put back
    bit for bit afterwards (also after an error; the clone is freed). Yields whether it is
    merged: with ``fall_back`` a clone that does not fit (CUDA out of memory) leaves the
    weights as they are (the adapter then runs unfused) instead of raising. Use it under the
    GPU lock with the fast adapter enabled (a merged PEFT layer that is *disabled* unmerges
    itself on its next call): :func:`generation_mode` does both."""
    import torch

    try:
        saved = _fuse(pipe)
    except torch.OutOfMemoryError as error:
        if not fall_back:
            raise
        logger.warning("fast LoRA not fused (%s); the adapter runs unfused", error)
        yield False
        return
    try:
        yield True
    finally:
        _restore(saved)


@contextmanager
def generation_mode(pipe: Any, fast: bool, fuse: bool | None = None) -> Iterator[dict[str, Any]]:
    """Run one call in quality or fast mode; yields the call arguments the mode sets.

    Fast: the adapter on, the mode's scheduler in place, and — where :func:`fuse_decision`
    says so (``fuse`` forces it either way) — the LoRA merged into the weights for this call
    (:func:`fused_fast_weights`); on exit (also on errors) the weights are put back bit for
    bit, the quality scheduler object is put back and the adapter turned off. Quality:
    nothing changes and nothing is yielded. Call it under the pipeline's GPU lock (the state
    is the pipeline's)::

        with generation_mode(pipe, request.fast) as overrides:
            images = pipe(**{**kwargs, **overrides}).images
    """
    if not fast:
        yield {}
        return
    mode = fast_mode_of(pipe)
    if mode is None:
        raise PhotoMakerInputError(
            "Fast mode is not available on this server (no fast LoRA loaded; see --fast-lora)."
        )
    fused, why = fuse_decision(pipe, fuse)
    if not fused and (fuse or (fuse is None and fuse_policy(pipe) == "on")):
        logger.warning("fast LoRA not fused although asked: %s; the adapter runs unfused", why)
    logger.debug("fast call %s: %s", "fused" if fused else "with the unfused adapter", why)
    quality_scheduler = pipe.scheduler
    pipe.scheduler = fast_scheduler(pipe, mode)
    try:
        set_fast(pipe, True)
        if fused:
            # auto may have misjudged (fragmentation, another process): then run unfused
            with fused_fast_weights(pipe, fall_back=fuse is None and fuse_policy(pipe) == "auto"):
                yield mode.call_overrides()
        else:
            yield mode.call_overrides()
    finally:
        set_fast(pipe, False)
        pipe.scheduler = quality_scheduler
