"""The style image: an IP-Adapter next to PhotoMaker, switched on per request.

The official V2 combines PhotoMaker with IP-Adapter for a style reference
(``inference_pmv2_ip_adapter.py``: ``load_ip_adapter("h94/IP-Adapter", subfolder="sdxl_models",
weight_name="ip-adapter_sdxl.bin")``, ``set_ip_adapter_scale``, ``ip_adapter_image=``). This
module uses diffusers' own machinery (``IPAdapterMixin.load_ip_adapter`` and
``set_ip_adapter_scale``; the pipeline passes the image embeddings to the UNet in
``added_cond_kwargs``).

Why a switch: once an IP-Adapter is loaded, diffusers' UNet demands image embeddings on every
call and its attention processors are IP-Adapter ones. So that a request without a style image
gives exactly the images of a server without the adapter, :func:`attach_style_adapter` keeps
both sets of processors and the image projection, and rests in the *plain* state (the UNet as
before the adapter); :func:`style_image_mode` puts the IP-Adapter's in for one call and the
plain ones back afterwards, also after an error. Run it under the pipeline's GPU lock.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import PhotoMakerInputError

logger = logging.getLogger(__name__)

#: What the UNet's config says while the IP-Adapter's image projection is in place.
IP_HID_TYPE = "ip_image_proj"


@dataclass
class StyleAdapter:
    """The two states of the UNet: its own attention processors and the IP-Adapter's (with
    the image projection)."""

    location: str
    plain_processors: dict[str, Any]
    ip_processors: dict[str, Any]
    image_projection: Any


_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def style_adapter_of(pipe: Any) -> StyleAdapter | None:
    """The style adapter attached to ``pipe``'s UNet, or ``None``."""
    unet = getattr(pipe, "unet", None)
    return None if unet is None else _ATTACHED.get(unet)


def split_location(location: str) -> tuple[str, str | None, str]:
    """``(repo id or folder, subfolder, weight file)`` for ``owner/repo/sub/file.bin``, a
    local file, or a folder holding ``ip-adapter_sdxl.safetensors`` or ``.bin``."""
    path = os.path.expanduser(location)
    if os.path.isfile(path):
        return os.path.dirname(path) or ".", None, os.path.basename(path)
    if os.path.isdir(path):
        for name in ("ip-adapter_sdxl.safetensors", "ip-adapter_sdxl.bin"):
            if os.path.isfile(os.path.join(path, name)):
                return path, None, name
        raise PhotoMakerInputError(f"No ip-adapter_sdxl.safetensors or .bin in {path}.")
    parts = location.split("/")
    if len(parts) < 3 or not parts[-1].endswith((".bin", ".safetensors")):
        raise PhotoMakerInputError(
            f"Give the IP-Adapter as owner/repo/subfolder/file (e.g. h94/IP-Adapter/sdxl_models/"
            f"ip-adapter_sdxl.bin), a folder or a file, not {location!r}."
        )
    return "/".join(parts[:2]), "/".join(parts[2:-1]) or None, parts[-1]


def random_ip_adapter_state_dict(unet: Any, embed_dim: int, seed: int = 0) -> dict[str, Any]:
    """A random IP-Adapter for ``unet`` in ``ip-adapter_sdxl``'s released layout:
    ``image_proj.proj`` / ``image_proj.norm`` (4 image tokens from an ``embed_dim``-wide image
    embedding; the released one's is 1280) and, for the i-th cross-attention processor of the
    UNet (diffusers' order), ``ip_adapter.{2i+1}.to_k_ip`` / ``.to_v_ip``. For the tests (tiny
    UNet) and the benchmarks (full size): the values mean nothing."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    state = {
        "image_proj.proj.weight": torch.randn(4 * cross, embed_dim, generator=generator)
        / embed_dim**0.5,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden = attn.to_k.out_features
        for proj in ("to_k_ip", "to_v_ip"):
            weight = torch.randn(hidden, cross, generator=generator) / cross**0.5
            state[f"ip_adapter.{key_id}.{proj}.weight"] = weight
        key_id += 2
    return state


def attach_style_adapter(pipe: Any, location: str) -> StyleAdapter:
    """Load the IP-Adapter (and its image encoder, from ``image_encoder/`` beside the weight
    file, as diffusers does) and leave the UNet in its plain state."""
    unet = pipe.unet
    plain = dict(unet.attn_processors)
    source, subfolder, weight_name = split_location(location)
    logger.info("loading the style image's IP-Adapter %s", location)
    pipe.load_ip_adapter(source, subfolder=subfolder or "", weight_name=weight_name)
    adapter = StyleAdapter(location, plain, dict(unet.attn_processors), unet.encoder_hid_proj)
    _ATTACHED[unet] = adapter
    _set_plain(unet, adapter)
    return adapter


def _set_plain(unet: Any, adapter: StyleAdapter) -> None:
    unet.set_attn_processor(dict(adapter.plain_processors))
    unet.encoder_hid_proj = None
    unet.config.encoder_hid_dim_type = None  # as diffusers' unload_ip_adapter does


def _set_ip(pipe: Any, adapter: StyleAdapter) -> None:
    # Detached, the IP-Adapter's parts did not follow the pipeline's moves (pipe.to, the
    # offload hooks): they go to the device the pipeline computes on. Their dtype is the one
    # they were loaded in (the run dtype; fp8 storage, set up later, never touched them).
    unet = pipe.unet
    _move(adapter, pipe._execution_device)
    unet.set_attn_processor(dict(adapter.ip_processors))
    unet.encoder_hid_proj = adapter.image_projection
    unet.config.encoder_hid_dim_type = IP_HID_TYPE


@contextmanager
def style_image_mode(pipe: Any, image: Any, scale: float) -> Iterator[dict[str, Any]]:
    """One call with the style image (yields the pipeline arguments to add) or without it
    (yields nothing and changes nothing)::

        with style_image_mode(pipe, job.style_image, job.style_image_scale) as extra:
            images = pipe(**kwargs, **extra).images
    """
    if image is None:
        yield {}
        return
    adapter = style_adapter_of(pipe)
    if adapter is None:
        raise PhotoMakerInputError(
            "The style image is off on this server (no IP-Adapter; see --style-adapter)."
        )
    _set_ip(pipe, adapter)
    pipe.set_ip_adapter_scale(float(scale))
    try:
        yield {"ip_adapter_image": image}
    finally:
        _set_plain(pipe.unet, adapter)
        _follow_the_unet(pipe, adapter)


def _follow_the_unet(pipe: Any, adapter: StyleAdapter) -> None:
    """After a call, the IP-Adapter's parts (0.70 GB at full size) go where the UNet's weights
    rest: they stay on the GPU in the modes that keep the UNet there, and go back to the CPU
    in the offload modes, which would otherwise hold them on the GPU from the first style
    image on (a 4 GB card's group-offload peak is about 1 GB without them)."""
    import torch

    home = pipe.unet.device
    if home.type == "meta":  # sequential offload keeps the weights elsewhere: the CPU then
        home = torch.device("cpu")
    _move(adapter, home)


def _move(adapter: StyleAdapter, device: Any) -> None:
    """The IP-Adapter's parts, detached from the UNet's modules, to ``device``."""
    for processor in adapter.ip_processors.values():
        if hasattr(processor, "to"):
            processor.to(device=device)
    adapter.image_projection.to(device=device)
