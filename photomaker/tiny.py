"""Small random-weight components, built offline, so the whole project runs on a CPU in seconds.

No model weights can be downloaded where this project is tested, so the tests and the app's
``--tiny`` mode use:

* the **real CLIP tokenizer** (the BPE vocabulary shipped inside the ``open-clip-torch``
  wheel, read from its installed files without importing ``open_clip``), so prompt handling
  runs on real token ids;
* a tiny SDXL (UNet, VAE, two CLIP text encoders) and tiny ID encoders with random weights
  drawn from a seed;
* a random PhotoMaker checkpoint **written to disk in the official format** and loaded through
  the same ``load_photomaker_adapter`` path as the released files.

Outputs are noise: these models were never trained. Nothing here pretends otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from photomaker.clip_tokenizer import bpe_vocabulary_path, clip_tokenizer
from photomaker.encoders import IDEncoderConfig, build_id_encoder
from photomaker.fast import FAST_LORA_BLOCKS

logger = logging.getLogger(__name__)

__all__ = [
    "TINY_ENCODER_CONFIG",
    "TINY_IMAGE_SIZE",
    "TINY_LORA_RANK",
    "bpe_vocabulary_path",
    "clip_tokenizer",
    "build_tiny_components",
    "tiny_lora_state_dict",
    "random_state_dict",
    "write_checkpoint",
    "write_tiny_checkpoint",
    "build_tiny_pipeline",
    "build_tiny_t2i_adapter",
    "build_tiny_controlnet",
    "build_tiny_adapter_pipeline",
    "build_tiny_controlnet_pipeline",
    "write_tiny_ip_adapter",
    "FAST_LORA_BLOCKS",
    "tiny_fast_lora_state_dict",
    "write_tiny_fast_lora",
    "build_tiny_image_encoder",
    "tiny_ip_adapter_state_dict",
    "write_tiny_style_adapter",
]

#: Tiny text encoders are 32 wide each, so prompt embeddings are 64 wide: the ID encoders'
#: two projections (32 + 32) must add up to that.
TINY_ENCODER_CONFIG = IDEncoderConfig(
    vision_hidden_size=32,
    vision_intermediate_size=37,
    vision_num_layers=2,
    vision_num_heads=4,
    vision_patch_size=14,
    vision_image_size=224,
    projection_dim=32,
    projection_dim_2=32,
    id_embedding_dim=512,
    tokens_per_image_v2=2,
    token_proj_ratio=1,
    perceiver_depth=2,
    perceiver_dim_head=16,
    perceiver_ff_mult=2,
)
#: The tiny pipeline's default output size (UNet sample 32 × VAE factor 2).
TINY_IMAGE_SIZE = 64
TINY_LORA_RANK = 4


def _seeded(seed: int, salt: str) -> None:
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little"))


def build_tiny_components(seed: int = 0) -> dict:
    """A tiny SDXL's components (random weights from ``seed``), for ``Pipeline(**components)``."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    _seeded(seed, "unet")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=TINY_IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
        norm_num_groups=16,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    _seeded(seed, "vae")
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=TINY_IMAGE_SIZE,
    )
    # Like SDXL's own configs: eos_token_id=2 selects CLIP's legacy pooling (argmax id).
    text_config = dict(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, vocab_size=49408, hidden_size=32,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=3, layer_norm_eps=1e-5,
        hidden_act="gelu", projection_dim=32, max_position_embeddings=77,
    )
    _seeded(seed, "text_encoder")
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    _seeded(seed, "text_encoder_2")
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    return {
        "unet": unet.eval(),
        "scheduler": scheduler,
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer_2": clip_tokenizer(pad_token="!"),
        "image_encoder": None,
        "feature_extractor": None,
    }


# --------------------------------------------------------------------------- checkpoints


def _attention_projections(unet: nn.Module) -> dict[str, tuple[int, int]]:
    """``{module path: (in_features, out_features)}`` of every attn1/attn2 q, k, v, out."""
    found = {}
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear) and (".attn1." in name or ".attn2." in name):
            if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
                found[name] = (module.in_features, module.out_features)
    return found


def tiny_lora_state_dict(unet: nn.Module, rank: int = TINY_LORA_RANK, seed: int = 0) -> dict:
    """A random UNet LoRA in the official (old attention-processor) key format."""
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for name, (fan_in, fan_out) in _attention_projections(unet).items():
        attn, _, proj = name.rpartition(".to_")
        proj = proj.replace("out.0", "out")
        prefix = f"unet.{attn}.processor.to_{proj}_lora"
        lora[f"{prefix}.down.weight"] = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
        lora[f"{prefix}.up.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.1
    return lora


def tiny_fast_lora_state_dict(
    unet: nn.Module | None = None, rank: int = TINY_LORA_RANK, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random distillation LoRA for the tiny UNet in SDXL-Lightning's released layout
    (:func:`photomaker.fast.random_fast_lora_state_dict`)."""
    from photomaker.fast import random_fast_lora_state_dict

    if unet is None:
        unet = build_tiny_components(0)["unet"]
    return random_fast_lora_state_dict(unet, rank=rank, seed=seed)


def write_tiny_fast_lora(path: str | os.PathLike, unet: nn.Module | None = None, seed: int = 0) -> Path:
    """:func:`tiny_fast_lora_state_dict` saved as a ``.safetensors`` file (the released format)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in tiny_fast_lora_state_dict(unet, seed=seed).items()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp.safetensors")  # concurrent writers: no clash
    save_file(state, str(tmp))
    tmp.replace(path)
    return path


#: The tiny image encoder's embedding size (the real one, ViT-bigG's, is 1280).
TINY_IMAGE_EMBED_DIM = 32


def build_tiny_image_encoder(seed: int = 0):
    """A tiny random CLIP vision model with projection (the IP-Adapter's image encoder), at
    CLIP's 224-pixel input so diffusers' default image processor feeds it."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    _seeded(seed, "image_encoder")
    config = CLIPVisionConfig(
        image_size=224, patch_size=32, hidden_size=32, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, projection_dim=TINY_IMAGE_EMBED_DIM,
    )  # fmt: skip
    return CLIPVisionModelWithProjection(config).eval()


def tiny_ip_adapter_state_dict(unet: nn.Module | None = None, seed: int = 0) -> dict:
    """A random IP-Adapter for the tiny UNet in ``ip-adapter_sdxl``'s released layout
    (:func:`photomaker.style_image.random_ip_adapter_state_dict`)."""
    from .style_image import random_ip_adapter_state_dict

    if unet is None:
        unet = build_tiny_components(0)["unet"]
    return random_ip_adapter_state_dict(unet, TINY_IMAGE_EMBED_DIM, seed)


def write_tiny_style_adapter(folder: str | os.PathLike, seed: int = 0) -> Path:
    """The app's tiny IP-Adapter: ``folder/ip-adapter_sdxl.safetensors`` with its image
    encoder in ``folder/image_encoder/`` (one ``sdxl_models`` folder of h94/IP-Adapter).
    Returns the weight file."""
    weight_name = "ip-adapter_sdxl.safetensors"
    write_tiny_ip_adapter(folder, seed=seed, subfolder="", weight_name=weight_name)
    return Path(folder) / weight_name


def random_state_dict(module: nn.Module, seed: int = 0, mixed_dtypes: bool = False) -> dict:
    """Random tensors with ``module``'s keys and shapes (persistent entries only).

    ``mixed_dtypes`` stores matrices in bf16 and the rest in fp32, like the released files.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        tensor = torch.randn(value.shape, generator=generator)
        if tensor.ndim >= 2:  # fan-in scaled, so that activations keep their size
            tensor = tensor / value[0].numel() ** 0.5
        elif key.endswith("weight"):  # LayerNorm scales
            tensor = 1 + 0.1 * tensor
        else:
            tensor = 0.1 * tensor
        if mixed_dtypes and tensor.ndim >= 2:
            tensor = tensor.to(torch.bfloat16)
        state[key] = tensor
    return state


def write_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``{"id_encoder": ..., "lora_weights": ...}`` as ``.bin`` (pickle) or flat ``.safetensors``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        flat = {f"{entry}.{k}": v.contiguous() for entry, sd in state.items() for k, v in sd.items()}
        save_file(flat, str(path))
    else:
        torch.save(state, path)
    return path


def write_tiny_checkpoint(
    path: str | os.PathLike, pm_version: str = "v2", seed: int = 0, unet: nn.Module | None = None
) -> Path:
    """A random tiny PhotoMaker checkpoint in the official format, for the tiny UNet."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        encoder = build_id_encoder(pm_version, TINY_ENCODER_CONFIG)
    if unet is None:
        unet = build_tiny_components(seed)["unet"]
    state = {
        "id_encoder": random_state_dict(encoder, seed=seed + 1),
        "lora_weights": tiny_lora_state_dict(unet, seed=seed + 2),
    }
    return write_checkpoint(state, path)


def build_tiny_pipeline(
    pm_version: str = "v2",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    checkpoint_format: str = "bin",
):
    """A ready tiny ``PhotoMakerStableDiffusionXLPipeline`` on the CPU, adapter loaded from disk."""
    from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline

    components = build_tiny_components(seed)
    folder = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "photomaker-tiny"
    checkpoint = folder / f"tiny-photomaker-{pm_version}-seed{seed}.{checkpoint_format}"
    if not checkpoint.is_file():
        write_tiny_checkpoint(checkpoint.with_suffix(".tmp" + checkpoint.suffix), pm_version, seed,
                              unet=components["unet"]).rename(checkpoint)
    pipe = PhotoMakerStableDiffusionXLPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_photomaker_adapter(
        str(checkpoint), pm_version=pm_version, id_encoder_config=TINY_ENCODER_CONFIG
    )
    logger.info("Tiny PhotoMaker %s pipeline ready (random weights: outputs are noise)", pm_version)
    return pipe


# --------------------------------------------------------------------------- doodle, ControlNet


def build_tiny_t2i_adapter(seed: int = 0):
    """A random T2I-Adapter of the SDXL type (``full_adapter_xl``) for the tiny UNet.

    Its two feature maps match what the tiny UNet's down blocks add them to: ``[32, h, w]``
    after the first block and ``[64, h, w]`` inside the second, at the latent size halved
    (``downscale_factor`` 4 on a 64-px sketch gives 16×16, the tiny VAE's 32×32 latents after
    one downsampling) — as SDXL's sketch adapter does at 1024 px with factor 16.
    """
    from diffusers import T2IAdapter

    _seeded(seed, "t2i_adapter")
    adapter = T2IAdapter(
        in_channels=3,
        channels=[32, 64],
        num_res_blocks=1,
        downscale_factor=4,
        adapter_type="full_adapter_xl",
    )
    return adapter.eval()


def build_tiny_controlnet(unet: nn.Module | None = None, seed: int = 0):
    """A random ControlNet for the tiny UNet (``ControlNetModel.from_unet``).

    ``from_unet`` copies the UNet's encoder and leaves the ControlNet's output convolutions
    zero, as training starts; with zero outputs a control image would change nothing, so
    they (and the conditioning embedding's last convolution) are drawn at random here. The
    conditioning embedding downsamples once, the tiny VAE's factor 2.
    """
    from diffusers import ControlNetModel

    if unet is None:
        unet = build_tiny_components(seed)["unet"]
    _seeded(seed, "controlnet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    generator = torch.Generator().manual_seed(seed)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    zero_convs.append(controlnet.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for conv in zero_convs:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / fan_in**0.5)
            conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=generator))
    return controlnet.eval()


def write_tiny_ip_adapter(
    folder: str | os.PathLike,
    unet: nn.Module | None = None,
    seed: int = 0,
    subfolder: str = "sdxl_models",
    weight_name: str = "ip-adapter_sdxl.bin",
) -> Path:
    """A random IP-Adapter (style image) for the tiny UNet, in the layout of ``h94/IP-Adapter``.

    Writes ``folder/subfolder/image_encoder/`` (:func:`build_tiny_image_encoder`, as
    ``transformers`` saves it) and ``folder/subfolder/weight_name``
    (:func:`tiny_ip_adapter_state_dict`): a ``.bin`` as the released ``ip-adapter_sdxl.bin`` is,
    ``{"image_proj": {...}, "ip_adapter": {"1.to_k_ip.weight", ...}}``, or a flat
    ``.safetensors`` with ``image_proj.``/``ip_adapter.`` prefixes. Either way
    ``pipe.load_ip_adapter(folder, subfolder=subfolder, weight_name=weight_name)`` loads it
    through diffusers' own ``IPAdapterMixin``. Returns ``folder``.
    """
    root = Path(folder) / subfolder
    root.mkdir(parents=True, exist_ok=True)
    build_tiny_image_encoder(seed).save_pretrained(root / "image_encoder")
    state = {k: v.contiguous() for k, v in tiny_ip_adapter_state_dict(unet, seed).items()}
    path = root / weight_name
    tmp = path.with_name(f".{path.name}.tmp")  # written whole, then renamed
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp))
    else:
        nested: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in state.items():
            entry, name = key.split(".", 1)
            nested[entry][name] = value
        torch.save(nested, tmp)
    tmp.replace(path)
    return Path(folder)


def _photomaker_checkpoint(
    components: dict, pm_version: str, seed: int, cache_dir, checkpoint_format: str
) -> Path:
    """The tiny checkpoint file of build_tiny_pipeline, written once per folder."""
    folder = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "photomaker-tiny"
    checkpoint = folder / f"tiny-photomaker-{pm_version}-seed{seed}.{checkpoint_format}"
    if not checkpoint.is_file():
        write_tiny_checkpoint(
            checkpoint.with_suffix(".tmp" + checkpoint.suffix),
            pm_version,
            seed,
            unet=components["unet"],
        ).rename(checkpoint)
    return checkpoint


def _build_tiny(cls, pm_version: str, seed: int, cache_dir, checkpoint_format: str, **extra):
    components = build_tiny_components(seed)
    checkpoint = _photomaker_checkpoint(components, pm_version, seed, cache_dir, checkpoint_format)
    pipe = cls(**components, **{name: make(components["unet"]) for name, make in extra.items()})
    pipe.set_progress_bar_config(disable=True)
    pipe.load_photomaker_adapter(
        str(checkpoint), pm_version=pm_version, id_encoder_config=TINY_ENCODER_CONFIG
    )
    return pipe


def build_tiny_adapter_pipeline(
    pm_version: str = "v2",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    checkpoint_format: str = "bin",
):
    """A ready tiny ``PhotoMakerStableDiffusionXLAdapterPipeline`` (doodle) on the CPU.

    Same SDXL and PhotoMaker weights as :func:`build_tiny_pipeline` with the same ``seed``,
    plus :func:`build_tiny_t2i_adapter`."""
    from photomaker.pipeline_adapter import PhotoMakerStableDiffusionXLAdapterPipeline

    return _build_tiny(
        PhotoMakerStableDiffusionXLAdapterPipeline,
        pm_version,
        seed,
        cache_dir,
        checkpoint_format,
        adapter=lambda unet: build_tiny_t2i_adapter(seed),
    )


def build_tiny_controlnet_pipeline(
    pm_version: str = "v2",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    checkpoint_format: str = "bin",
    num_controlnets: int = 1,
):
    """A ready tiny ``PhotoMakerStableDiffusionXLControlNetPipeline`` on the CPU.

    Same SDXL and PhotoMaker weights as :func:`build_tiny_pipeline` with the same ``seed``;
    the ControlNet(s) come from the tiny UNet *before* the PhotoMaker LoRA is fused, as a
    ControlNet trained for the base model would. ``num_controlnets > 1`` gives a
    ``MultiControlNetModel`` of differently seeded ones."""
    from photomaker.pipeline_controlnet import PhotoMakerStableDiffusionXLControlNetPipeline

    def controlnet(unet: nn.Module):
        nets = [build_tiny_controlnet(unet, seed + k) for k in range(num_controlnets)]
        return nets[0] if num_controlnets == 1 else nets

    return _build_tiny(
        PhotoMakerStableDiffusionXLControlNetPipeline,
        pm_version,
        seed,
        cache_dir,
        checkpoint_format,
        controlnet=controlnet,
    )


from photomaker.tiny_faces import build_face_pack  # noqa: E402,F401
