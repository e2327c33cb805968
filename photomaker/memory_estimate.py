"""The peak VRAM of each memory mode, estimated from the pipeline as it is loaded.

``memory auto`` must choose before anything is on the GPU, and what a pipeline holds depends
on what it loaded: besides SDXL and PhotoMaker, the app loads by default the style image's
IP-Adapter (its image encoder, OpenCLIP ViT-bigG's vision tower, is 3.7 GB in bf16, and its
attention weights, 0.7 GB, sit inside the UNet), the doodle's T2I-Adapter and the fast mode's
LoRA. The measured peaks (bench/gpu.py) are of SDXL and PhotoMaker alone. So the estimate is
the pipeline's own weights, counted here byte for byte where each mode keeps them, plus the
activations the measurements showed on top of the weights:

* :data:`ACTIVATIONS_UNTILED_GB`: the resident modes decode 1024² in one piece (per image):
  full mode's measured peak (10.96 GB, H100) less the weights this module counts for that
  pipeline (8.21 GB, bench/results-memory.md).
* :data:`ACTIVATIONS_TILED_GB`: the offload modes decode in 512-px tiles, so the UNet's step
  is the largest: model-offload's measured 5.81 GB less the UNet it held (5.32 GB, with
  PhotoMaker's LoRA factors).

The style image's IP-Adapter weights (:func:`detached_style_bytes`) are outside the UNet's
modules; they are on the GPU during a style-image call, and stay there after it in the modes
that keep the UNet there. They count with the UNet in full, encoder-offload and
model-offload, and on top of the share at once in group- and sequential-offload.

A mode's peak, with *resident* the weights that stay on the GPU and *at once* the most of the
other weights on it at one time:

* ``full``: every weight, plus the untiled decode.
* ``encoder-offload``: the UNet, a ControlNet and the VAE, plus the larger of an offloaded
  model's largest share at once (:func:`photomaker.offload_groups.largest_at_once`) and the
  tiled activations (an encoder and the steps do not run at the same time).
* ``model-offload``: the largest model, plus the tiled activations.
* ``group-offload``: the largest share at once of any model, plus the tiled activations.
* ``sequential-offload``: the largest layer, plus the tiled activations.

Estimates, not measurements: fragmentation and cuBLAS's workspaces are left to
``memory auto``'s margin.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from torch import nn

from .loading import ENCODER_OFFLOAD_RESIDENT
from .offload_groups import block_modules_for, largest_at_once
from .settings import AUTO_MEMORY_PEAKS_GB

GB = 1e9
_MEASURED_GB = dict(AUTO_MEMORY_PEAKS_GB)
#: Full mode's measured peak less the weights counted for that pipeline (see above).
ACTIVATIONS_UNTILED_GB = _MEASURED_GB["full"] - 8.21
#: Model-offload's measured peak less the UNet it held (see above).
ACTIVATIONS_TILED_GB = _MEASURED_GB["model-offload"] - 5.32
#: The modes estimated: ``memory auto``'s, in its order (fastest first; fp8 ones are not exact).
MODES = tuple(_MEASURED_GB)


def _bytes(tensors: Iterable[Any]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes(model: nn.Module) -> int:
    """Parameters and buffers, in the dtypes they are stored in."""
    return _bytes(model.parameters()) + _bytes(model.buffers())


def _at_once_bytes(model: nn.Module) -> int:
    """The most of ``model``'s weights on the GPU at once when it is group-offloaded."""
    parameters = sum(p.numel() for p in model.parameters())
    if not parameters:
        return 0
    per_parameter = _bytes(model.parameters()) / parameters
    return int(largest_at_once(model, block_modules_for(model)) * per_parameter)


def _largest_layer_bytes(model: nn.Module) -> int:
    return max(
        (_bytes(m.parameters(recurse=False)) for m in model.modules()),
        default=0,
    )


def detached_style_bytes(pipe: Any) -> int:
    """The style image's IP-Adapter weights (attention processors and image projection):
    outside the UNet's modules between style-image calls (photomaker.style_image), so
    :func:`model_bytes` misses them, but on the GPU during each such call."""
    from .style_image import style_adapter_of

    adapter = style_adapter_of(pipe)
    if adapter is None:
        return 0
    parts = [*adapter.ip_processors.values(), adapter.image_projection]
    return sum(model_bytes(part) for part in parts if isinstance(part, nn.Module))


def models_of(pipe: Any) -> dict[str, nn.Module]:
    """The pipeline's models by component name (schedulers, tokenizers and the rest left out)."""
    return {name: c for name, c in pipe.components.items() if isinstance(c, nn.Module)}


def estimate_peaks_gb(
    pipe: Any, style_bytes: int | None = None, leave_out: Collection[str] = ()
) -> dict[str, float]:
    """Each of :data:`MODES` → its estimated peak VRAM in GB for one 1024² image.
    ``style_bytes``: the style image's detached weights, when not read from ``pipe``
    (:func:`detached_style_bytes`; bench/memory.py counts them on the meta device).
    ``leave_out``: components counted as if the pipeline had not loaded them."""
    models = {name: m for name, m in models_of(pipe).items() if name not in leave_out}
    sizes = {name: model_bytes(model) for name, model in models.items()}
    style = detached_style_bytes(pipe) if style_bytes is None else style_bytes
    if "unet" in sizes:  # where the style image's weights compute
        sizes["unet"] += style
    shares = {name: _at_once_bytes(model) for name, model in models.items()}  # one replay each
    resident = sum(size for name, size in sizes.items() if name in ENCODER_OFFLOAD_RESIDENT)
    largest_share = max(shares.values(), default=0)
    encoder_share = max(
        (share for name, share in shares.items() if name not in ENCODER_OFFLOAD_RESIDENT),
        default=0,
    )
    tiled = ACTIVATIONS_TILED_GB * GB
    peaks = {
        "full": sum(sizes.values()) + ACTIVATIONS_UNTILED_GB * GB,
        "encoder-offload": resident + max(encoder_share, tiled),
        "model-offload": max(sizes.values(), default=0) + tiled,
        "group-offload": largest_share + style + tiled,
        "sequential-offload": max(map(_largest_layer_bytes, models.values()), default=0)
        + style
        + tiled,
    }
    return {mode: round(peaks[mode] / GB, 2) for mode in MODES}


#: The style image's components in ``pipe.components`` (its IP-Adapter weights sit outside,
#: counted by :func:`detached_style_bytes`).
STYLE_IMAGE_MODELS = ("image_encoder",)


def peaks_without_style_image(pipe: Any) -> dict[str, float] | None:
    """:func:`estimate_peaks_gb` as if the style image were off (``--style-adapter none``): its
    image encoder (3.7 GB at full size) and IP-Adapter weights (0.7 GB) left out; ``None``
    when it is off already. On an 8 GB card they are what keeps encoder-offload out of
    ``memory auto``'s reach, so the log says what turning them off would give."""
    if detached_style_bytes(pipe) == 0:
        return None
    return estimate_peaks_gb(pipe, style_bytes=0, leave_out=STYLE_IMAGE_MODELS)
