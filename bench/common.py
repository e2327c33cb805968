"""Shared by the benchmarks: random-weight models from ``bench.sdxl_configs``, a PhotoMaker
checkpoint in the released layout, the real CLIP tokenizer, and the environment's versions.

Imports only torch, diffusers, transformers and the light parts of ``photomaker`` (encoders,
pipeline): no gradio, insightface, open_clip or onnx, so ``bench/gpu.py`` runs on a machine that
has none of them. (``photomaker.tiny`` is not used here for that reason: it imports onnx;
the tokenizer comes from the light ``photomaker.clip_tokenizer``.)
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import torch
from torch import nn

from bench import sdxl_configs
from photomaker import clip_tokenizer

ROOT = Path(__file__).resolve().parent.parent
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"


# --------------------------------------------------------------------------- tokenizer


def bpe_vocabulary_path(explicit: str | os.PathLike | None = None) -> Path:
    """CLIP's BPE merges file: ``explicit``, ``$PHOTOMAKER_CLIP_BPE``, ``.whl/`` (put there by
    ``bench/prepare_gpu.sh``) or the installed ``open-clip-torch`` distribution (not imported)."""
    for candidate in (explicit, os.environ.get("PHOTOMAKER_CLIP_BPE"), ROOT / ".whl" / BPE_NAME):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    try:
        return clip_tokenizer.bpe_vocabulary_path()
    except RuntimeError:
        raise FileNotFoundError(
            f"CLIP's {BPE_NAME} was not found: pass --bpe PATH, set PHOTOMAKER_CLIP_BPE, run "
            "bench/prepare_gpu.sh (copies it into .whl/), or pip install --no-deps open-clip-torch"
        ) from None


def clip_tokenizers(bpe: str | os.PathLike | None = None):
    """SDXL's two tokenizers (photomaker.clip_tokenizer); the second pads with ``"!"``."""
    path = bpe_vocabulary_path(bpe)
    return tuple(clip_tokenizer.clip_tokenizer(pad, bpe=path) for pad in ("<|endoftext|>", "!"))


def build_unet(config: dict, device: str | torch.device = "cpu"):
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**config).eval()


def build_vae(config: dict, device: str | torch.device = "cpu"):
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL(**config).eval()


def build_text_encoder(config: dict, projection: bool, device: str | torch.device = "cpu"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    with torch.device(device):
        return cls(CLIPTextConfig(**config)).eval()


def id_encoder_config(size: str = "full"):
    from photomaker.encoders import IDEncoderConfig

    return IDEncoderConfig(**sdxl_configs.SIZES[size]["id_encoder"])


def build_id_encoder(pm_version: str, size: str = "full", device: str | torch.device = "cpu"):
    from photomaker.encoders import build_id_encoder as build

    with torch.device(device):
        return build(pm_version, id_encoder_config(size)).eval()


def scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(sdxl_configs.SDXL_SCHEDULER)


def build_components(
    size: str = "full",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    bpe: str | os.PathLike | None = None,
    unet_config: dict | None = None,
) -> dict:
    """SDXL components with random weights, built directly on ``device`` (fast on a GPU), then
    cast to ``dtype``; keyword arguments of the pipeline constructors."""
    torch.manual_seed(seed)
    spec = sdxl_configs.SIZES[size]
    tokenizer, tokenizer_2 = clip_tokenizers(bpe)
    return {
        "vae": cast(build_vae(spec["vae"], device), dtype),
        "text_encoder": cast(build_text_encoder(spec["text_encoder"], False, device), dtype),
        "text_encoder_2": cast(build_text_encoder(spec["text_encoder_2"], True, device), dtype),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "unet": cast(build_unet(unet_config or spec["unet"], device), dtype),
        "scheduler": scheduler(),
    }


def cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module.to(dtype)`` unless it is already that dtype (diffusers warns on every cast)."""
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module


# --------------------------------------------------------------------------- checkpoints


def attention_projections(unet: nn.Module) -> dict[str, tuple[int, int]]:
    """``{module path: (in, out)}`` of every attn1/attn2 to_q, to_k, to_v, to_out.0: what the
    PhotoMaker LoRA adapts."""
    found = {}
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear) and (".attn1." in name or ".attn2." in name):
            if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
                found[name] = (module.in_features, module.out_features)
    return found


def lora_state_dict(
    unet: nn.Module,
    rank: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random UNet LoRA in the released layout: ``unet.<attn>.processor.to_q_lora.down.weight``
    ``[rank, in]`` and ``...up.weight`` ``[out, rank]``, for every attention projection."""
    device = torch.device(device)
    generator = None if device.type == "meta" else torch.Generator(device=device).manual_seed(seed)
    lora = {}
    for name, (fan_in, fan_out) in attention_projections(unet).items():
        attn, _, proj = name.rpartition(".to_")
        prefix = f"unet.{attn}.processor.to_{proj.replace('out.0', 'out')}_lora"
        down = torch.randn(rank, fan_in, generator=generator, device=device) / fan_in**0.5
        up = torch.randn(fan_out, rank, generator=generator, device=device) * (0.01 / rank**0.5)
        lora[f"{prefix}.down.weight"] = down.to(dtype)
        lora[f"{prefix}.up.weight"] = up.to(dtype)
    return lora


def photomaker_state_dict(
    unet: nn.Module,
    pm_version: str = "v2",
    size: str = "full",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    lora_rank: int | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """``{"id_encoder": ..., "lora_weights": ...}`` as in ``photomaker-v*.bin``, random weights."""
    torch.manual_seed(seed + 1)
    encoder = cast(build_id_encoder(pm_version, size, device), dtype)
    rank = lora_rank or sdxl_configs.SIZES[size]["lora_rank"]
    return {
        "id_encoder": {k: v.detach() for k, v in encoder.state_dict().items()},
        "lora_weights": lora_state_dict(unet, rank, device, dtype, seed + 2),
    }


# --------------------------------------------------------------------------- LoRA state


def lora_layers(unet: nn.Module) -> list[nn.Module]:
    """The PEFT LoRA layers in ``unet`` (empty when no adapter is loaded)."""
    return [m for m in unet.modules() if hasattr(m, "merged_adapters") and hasattr(m, "lora_A")]


def lora_is_fused(unet: nn.Module) -> bool:
    layers = lora_layers(unet)
    return bool(layers) and all(getattr(m, "merged", False) for m in layers)


def ensure_lora_fused(pipe, fused: bool = True) -> None:
    """Fuse (or unfuse) the PhotoMaker LoRA into the UNet, whatever loading already did."""
    layers = lora_layers(pipe.unet)
    if not layers or lora_is_fused(pipe.unet) == fused:
        return
    if fused:
        pipe.fuse_lora(components=["unet"])
    else:
        pipe.unfuse_lora(components=["unet"])


# --------------------------------------------------------------------------- environment


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "huggingface-hub"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    found["torch"] = torch.__version__
    found["cuda"] = str(torch.version.cuda)
    return found


def paired_spread(a: list[float], b: list[float]) -> dict:
    """Interleaved A/B rounds → the per-round ratios B / A and their spread (median, min, max,
    quartiles), so a reader can tell a gain from noise: a range that contains 1 is no gain."""
    import statistics

    ratios = sorted(y / x for x, y in zip(a, b, strict=True))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "rounds": len(ratios),
        "ratio_median": statistics.median(ratios),
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "ratio_q1": q[0],
        "ratio_q3": q[2],
        "a_median": statistics.median(a),
        "b_median": statistics.median(b),
    }


def spread_sentence(spread: dict, a: str, b: str) -> str:
    """One sentence from :func:`paired_spread`'s figures: the ratio, its range, the verdict."""
    low, high = spread["ratio_min"], spread["ratio_max"]
    if low <= 1 <= high:
        verdict = "the range contains 1: no measurable difference"
    elif high < 1:
        verdict = f"{b} faster in every round"
    else:
        verdict = f"{b} slower in every round"
    return (
        f"{b} / {a} = {spread['ratio_median']:.3f} (median of {spread['rounds']} interleaved "
        f"rounds; per-round ratios {low:.3f}–{high:.3f}, quartiles {spread['ratio_q1']:.3f}–"
        f"{spread['ratio_q3']:.3f}): {verdict}."
    )


def say(*parts) -> None:
    """Progress for the person running a benchmark: stdout, flushed at once."""
    print(*parts, flush=True)  # noqa: T201


def load_reference():
    """The reference implementation (``photomakerv`` 0.1.0, V1), unpacked in ``.oracle/``
    (scripts/test.sh) or, on a GPU machine, in ``.whl/oracle/`` (bench/prepare_gpu.sh copies
    it there); else ``None``, and the benchmarks time ours only."""
    try:
        from tests import reference
    except ImportError:
        return None
    for folder in (reference.ORACLE_DIR, ROOT / ".whl" / "oracle" / "photomaker"):
        if (folder / "__init__.py").is_file():
            reference.ORACLE_DIR = folder
            try:
                return reference.load_oracle()
            except Exception as error:  # a reference that cannot load: ours only, say why
                say(f"    the reference in {folder} did not load: {error}")
                return None
    return None


def reference_pipeline(oracle, components: dict, ours_v1, encoder_state: dict, device, dtype):
    """The reference V1 pipeline on ``components`` (shared with ``ours_v1``, whose tokenizers
    already hold the trigger word and whose ID image processor it borrows), its own ID encoder
    class holding ``encoder_state``: the same weights as ours, run by its code."""
    from accelerate import init_empty_weights

    ref = oracle.pipeline.PhotoMakerStableDiffusionXLPipeline(**components)
    ref.trigger_word = "img"
    ref.id_image_processor = ours_v1.id_image_processor
    with init_empty_weights():
        encoder = oracle.model.PhotoMakerIDEncoder()
    encoder.load_state_dict(encoder_state, strict=True, assign=True)
    ref.id_encoder = encoder.to(device, dtype).eval()
    return ref
