"""Finding, reading and checking PhotoMaker checkpoints as TencentARC released them.

A checkpoint holds two entries: ``id_encoder`` (the ID encoder's state dict) and
``lora_weights`` (a UNet LoRA in diffusers' old attention-processor format,
``unet.<attn>.processor.to_q_lora.down.weight``, rank 64, no alphas). ``.bin`` files are
pickles and are read only with ``torch.load(weights_only=True)``, which refuses any payload
but tensors; ``.safetensors`` files store the same tensors flat, prefixed ``id_encoder.`` and
``lora_weights.``.

Where a checkpoint lives: a Hugging Face Hub repo id (downloaded through huggingface_hub,
which honours ``HF_HUB_OFFLINE`` and the local cache), a local folder, or a file.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from photomaker.encoders import IDEncoderConfig, PhotoMakerIDEncoder, build_id_encoder
from photomaker.errors import PhotoMakerInputError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_REPOS",
    "DEFAULT_WEIGHT_NAMES",
    "resolve_checkpoint_file",
    "read_checkpoint",
    "load_photomaker_state_dict",
    "check_id_encoder_keys",
    "load_id_encoder",
    "split_flat_state_dict",
    "check_lora_keys",
]

DEFAULT_REPOS = {"v1": "TencentARC/PhotoMaker", "v2": "TencentARC/PhotoMaker-V2"}
DEFAULT_WEIGHT_NAMES = {"v1": "photomaker-v1.bin", "v2": "photomaker-v2.bin"}
ENTRIES = ("id_encoder", "lora_weights")
# Older transformers saved this buffer; newer ones rebuild it. Accepted and ignored.
IGNORED_ENCODER_KEYS = frozenset({"vision_model.embeddings.position_ids"})


def resolve_checkpoint_file(
    location: str | os.PathLike,
    weight_name: str | None = None,
    subfolder: str = "",
    pm_version: str = "v2",
    **hub_kwargs,
) -> Path:
    """Where the checkpoint file is: a file, a file inside a folder, or a Hub download."""
    weight_name = weight_name or DEFAULT_WEIGHT_NAMES.get(pm_version, "photomaker-v2.bin")
    path = Path(os.path.expanduser(str(location)))
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / subfolder / weight_name
        if candidate.is_file():
            return candidate
        found = sorted(p.name for p in (path / subfolder).glob("*") if p.suffix in {".bin", ".safetensors"})
        raise PhotoMakerInputError(
            f"No PhotoMaker checkpoint '{weight_name}' in the folder {path / subfolder}"
            + (f" (it has: {', '.join(found)}); pass weight_name=..." if found else ".")
        )
    if str(location).count("/") != 1 or str(location).startswith((".", "/", "~")):
        raise PhotoMakerInputError(
            f"The PhotoMaker checkpoint {location!r} is neither a file, a folder, nor a Hugging "
            "Face repo id like 'TencentARC/PhotoMaker-V2'."
        )
    return _download(str(location), weight_name, subfolder, **hub_kwargs)


def _download(repo_id: str, weight_name: str, subfolder: str, **hub_kwargs) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # huggingface_hub reads HF_HUB_OFFLINE once, at import; read it again now.
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        hub_kwargs.setdefault("local_files_only", True)
    try:
        return Path(
            hf_hub_download(repo_id, filename=weight_name, subfolder=subfolder or None, **hub_kwargs)
        )
    except LocalEntryNotFoundError as error:
        raise PhotoMakerInputError(
            f"The PhotoMaker checkpoint {repo_id}/{weight_name} is not in the local Hugging Face "
            "cache and cannot be downloaded (offline, or HF_HUB_OFFLINE is set). Download it "
            "once with network access, or point the checkpoint setting at a local file."
        ) from error
    except (HfHubHTTPError, OSError) as error:
        raise PhotoMakerInputError(
            f"Could not download the PhotoMaker checkpoint {repo_id}/{weight_name}: {error}"
        ) from error


def split_flat_state_dict(flat: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"id_encoder.x": t, "lora_weights.y": u}`` → ``{"id_encoder": {"x": t}, "lora_weights": {"y": u}}``."""
    nested: dict[str, dict[str, torch.Tensor]] = {name: {} for name in ENTRIES}
    strays = []
    for key, tensor in flat.items():
        entry, _, rest = key.partition(".")
        if entry in nested and rest:
            nested[entry][rest] = tensor
        else:
            strays.append(key)
    if strays:
        raise PhotoMakerInputError(
            "The PhotoMaker checkpoint has keys outside 'id_encoder.' and 'lora_weights.': "
            + ", ".join(strays[:5])
            + (f" and {len(strays) - 5} more" if len(strays) > 5 else "")
        )
    return nested


def read_checkpoint(path: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """Read a ``.bin`` (tensors only, no code) or ``.safetensors`` checkpoint into two dicts."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return split_flat_state_dict(load_file(str(path), device="cpu"))
    try:
        state = _load_pickle(path)
    except pickle.UnpicklingError as error:
        raise PhotoMakerInputError(
            f"Refused to load {path.name}: it is not a plain weights file (it asks to run code "
            "or build objects while unpickling). Use the checkpoint as released, or a "
            ".safetensors copy."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise PhotoMakerInputError(f"Could not read the checkpoint {path}: {error}") from error
    if not isinstance(state, Mapping):
        raise PhotoMakerInputError(f"{path.name} is not a PhotoMaker checkpoint (not a dict).")
    return validate_entries(state)


def _load_pickle(path: Path) -> object:
    """``torch.load`` (tensors only), memory-mapped where the file allows it: torch.save's zip
    format (torch 1.6 on, the released files) is then read as its tensors are used, not copied
    into memory first: a full-size V2 file reads in 0.1 s instead of 2.4 s on this project's
    CPU machine, and the process never holds the file's bytes beside the loaded weights. Older
    files are read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):  # torch's refusal names mmap; anything else is real
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def validate_entries(state: Mapping) -> dict[str, dict[str, torch.Tensor]]:
    """Check the two top-level entries; a flat (safetensors-style) dict is split first."""
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return split_flat_state_dict(state)
    keys = set(state)
    if keys != set(ENTRIES):
        missing = sorted(set(ENTRIES) - keys)
        unexpected = sorted(str(k) for k in keys - set(ENTRIES))
        raise PhotoMakerInputError(
            "Not a PhotoMaker checkpoint: it must hold exactly 'id_encoder' and 'lora_weights'"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unexpected: {', '.join(unexpected)}" if unexpected else "")
            + "."
        )
    return {name: dict(state[name]) for name in ENTRIES}


def load_photomaker_state_dict(
    pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping,
    weight_name: str | None = None,
    subfolder: str = "",
    pm_version: str = "v2",
    **hub_kwargs,
) -> dict[str, dict[str, torch.Tensor]]:
    """Find and read a checkpoint, or take a ready state dict; check its two entries."""
    if isinstance(pretrained_model_name_or_path_or_dict, Mapping):
        return validate_entries(pretrained_model_name_or_path_or_dict)
    path = resolve_checkpoint_file(
        pretrained_model_name_or_path_or_dict, weight_name, subfolder, pm_version, **hub_kwargs
    )
    logger.info("Loading PhotoMaker %s checkpoint from %s", pm_version, path)
    return read_checkpoint(path)


def _describe(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_id_encoder_keys(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    pm_version: str,
) -> dict[str, torch.Tensor]:
    """Compare a checkpoint's encoder entry with the encoder's own layout, name by name.

    Returns the state dict without ignorable buffers. The error names missing and unexpected
    keys and mismatched shapes, and recognises a checkpoint of the other version.
    """
    state = {k: v for k, v in state_dict.items() if k not in IGNORED_ENCODER_KEYS}
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        hint = ""
        has_perceiver = any(k.startswith("qformer_perceiver.") for k in state)
        if pm_version == "v1" and has_perceiver:
            hint = " This looks like a PhotoMaker V2 checkpoint: load it with pm_version='v2'."
        elif pm_version == "v2" and not has_perceiver:
            hint = " This looks like a PhotoMaker V1 checkpoint: load it with pm_version='v1'."
        raise PhotoMakerInputError(
            f"The checkpoint's id_encoder does not match the PhotoMaker {pm_version.upper()} layout."
            + (f" Missing keys: {_describe(missing)}." if missing else "")
            + (f" Unexpected keys: {_describe(unexpected)}." if unexpected else "")
            + hint
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
        for k in sorted(state)
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    if wrong:
        raise PhotoMakerInputError(
            "The checkpoint's id_encoder has tensors of the wrong shape: " + _describe(wrong, 4)
        )
    return state


def load_id_encoder(
    state_dict: Mapping[str, torch.Tensor],
    pm_version: str,
    config: IDEncoderConfig | None = None,
) -> PhotoMakerIDEncoder:
    """Build the encoder for ``pm_version`` and load ``state_dict`` into it, strictly.

    The encoder is built without allocating weights (the checkpoint's tensors are assigned),
    so loading the 543M-parameter V2 encoder costs no random initialisation.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        encoder = build_id_encoder(pm_version, config)
    expected = {k: v.shape for k, v in encoder.state_dict().items()}
    state = check_id_encoder_keys(state_dict, expected, pm_version)
    encoder.load_state_dict(state, strict=True, assign=True)
    # Released files mix bf16 and fp32: one dtype for all (the caller casts it further).
    return encoder.to(dtype=torch.float32).eval()


_OLD_LORA_KEY = re.compile(r"^unet\..+\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
_PEFT_LORA_KEY = re.compile(r"^unet\..+\.lora_[AB]\.weight$")


def check_lora_keys(lora_weights: Mapping[str, torch.Tensor]) -> None:
    """The LoRA entry must be the released attention-processor layout (or PEFT's); diffusers'
    loader converts either, but silently skips keys it does not know, which would leave the
    UNet without PhotoMaker's LoRA."""
    if not lora_weights:
        raise PhotoMakerInputError("The checkpoint's lora_weights is empty.")
    bad = [k for k in lora_weights if not (_OLD_LORA_KEY.match(k) or _PEFT_LORA_KEY.match(k))]
    if bad:
        raise PhotoMakerInputError(
            "The checkpoint's lora_weights has keys in an unknown format: " + _describe(bad, 4)
        )
