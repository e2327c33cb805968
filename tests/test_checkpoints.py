"""Checkpoints in the official layout: find, read safely, check, load (encoder and LoRA)."""

from __future__ import annotations

import json
import os
import pickle
import socket
from pathlib import Path

import pytest
import torch

from photomaker.checkpoints import (
    load_id_encoder,
    load_photomaker_state_dict,
    read_checkpoint,
    resolve_checkpoint_file,
)
from photomaker.encoders import build_id_encoder
from photomaker.errors import PhotoMakerInputError
from photomaker.tiny import build_tiny_pipeline, random_state_dict, write_checkpoint

#: Key manifests of the released checkpoints (facts about those files, copied here so the
#: suite stands alone on a fresh clone).
MANIFESTS = Path(__file__).resolve().parent / "data"


def lora_manifest() -> dict:
    return json.loads((MANIFESTS / "photomaker.lora_weights.keys.json").read_text())


def full_size_lora(scale: float = 0.0) -> dict:
    return {k: torch.full(v["shape"], scale) for k, v in lora_manifest()["keys"].items()}


@pytest.fixture(scope="module", params=["v1", "v2"])
def full_size(request, tmp_path_factory):
    """A random full-size checkpoint (bf16/fp32 mixed like the released files), in both formats."""
    version = request.param
    with torch.device("meta"):
        encoder = build_id_encoder(version)
    state = {
        "id_encoder": random_state_dict(encoder, seed=3, mixed_dtypes=True),
        "lora_weights": full_size_lora(0.01),
    }
    folder = tmp_path_factory.mktemp(f"full-{version}")
    files = {
        fmt: write_checkpoint(state, folder / f"photomaker-{version}.{fmt}")
        for fmt in ("bin", "safetensors")
    }
    return version, state, files


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_full_size_checkpoint_loads_strictly(full_size, fmt):
    version, state, files = full_size
    loaded = load_photomaker_state_dict(files[fmt], pm_version=version)
    assert set(loaded) == {"id_encoder", "lora_weights"}
    encoder = load_id_encoder(loaded["id_encoder"], version)
    assert encoder.tokens_per_image == (1 if version == "v1" else 2)
    ours = encoder.state_dict()
    for key in (
        "visual_projection_2.weight",
        "fuse_module.mlp1.fc1.weight",
        "vision_model.post_layernorm.bias",
    ):
        torch.testing.assert_close(ours[key], state["id_encoder"][key].float())
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in ours.values())
    assert len(loaded["lora_weights"]) == lora_manifest()["num_keys"]


def test_folder_and_weight_name_resolution(full_size):
    version, _, files = full_size
    folder = files["bin"].parent
    assert resolve_checkpoint_file(folder, pm_version=version) == files["bin"]
    assert (
        resolve_checkpoint_file(folder, weight_name=files["safetensors"].name)
        == files["safetensors"]
    )
    with pytest.raises(PhotoMakerInputError, match="No PhotoMaker checkpoint 'other.bin'.*it has:"):
        resolve_checkpoint_file(folder, weight_name="other.bin")


def test_missing_and_unexpected_keys_are_named(full_size):
    version, state, _ = full_size
    encoder_state = dict(state["id_encoder"])
    encoder_state.pop("fuse_module.layer_norm.bias")
    encoder_state["fuse_module.extra.weight"] = torch.zeros(1)
    with pytest.raises(PhotoMakerInputError) as err:
        load_id_encoder(encoder_state, version)
    assert "Missing keys: fuse_module.layer_norm.bias" in str(err.value)
    assert "Unexpected keys: fuse_module.extra.weight" in str(err.value)


def test_other_version_is_recognised(full_size):
    version, state, _ = full_size
    other = "v2" if version == "v1" else "v1"
    with pytest.raises(PhotoMakerInputError, match=f"load it with pm_version='{version}'"):
        load_id_encoder(state["id_encoder"], other)


def test_wrong_shape_is_named(full_size):
    version, state, _ = full_size
    encoder_state = dict(state["id_encoder"], **{"visual_projection.weight": torch.zeros(3, 3)})
    with pytest.raises(
        PhotoMakerInputError, match=r"visual_projection.weight \(3, 3\) \(expected \(768, 1024\)\)"
    ):
        load_id_encoder(encoder_state, version)


def test_old_position_ids_buffer_is_accepted(full_size):
    version, state, _ = full_size
    encoder_state = dict(state["id_encoder"])
    encoder_state["vision_model.embeddings.position_ids"] = torch.arange(257)[None]
    load_id_encoder(encoder_state, version)


def test_top_level_entries_are_checked(tmp_path):
    path = tmp_path / "bad.bin"
    torch.save({"id_encoder": {}, "lora": {}}, path)
    with pytest.raises(PhotoMakerInputError, match="missing: lora_weights; unexpected: lora"):
        read_checkpoint(path)
    flat = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"id_encoder.a": torch.zeros(1), "text_encoder.b": torch.zeros(1)}, str(flat))
    with pytest.raises(
        PhotoMakerInputError, match="outside 'id_encoder.' and 'lora_weights.': text_encoder.b"
    ):
        read_checkpoint(flat)


def test_bin_files_are_memory_mapped_and_old_format_ones_still_read(tmp_path):
    """torch.save's zip format (the released files) is memory-mapped, not read whole; a file
    in torch's pre-1.6 format cannot be mapped and is read as before."""
    state = {"id_encoder": {"w": torch.arange(6.0)}, "lora_weights": {"b": torch.ones(2)}}
    mapped, legacy = tmp_path / "zip.bin", tmp_path / "legacy.bin"
    torch.save(state, mapped)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    from_zip = read_checkpoint(mapped)
    assert str(mapped) in Path("/proc/self/maps").read_text()  # mapped while its tensors live
    from_legacy = read_checkpoint(legacy)
    for loaded in (from_zip, from_legacy):
        torch.testing.assert_close(loaded["id_encoder"]["w"], state["id_encoder"]["w"])
        torch.testing.assert_close(loaded["lora_weights"]["b"], state["lora_weights"]["b"])
    assert str(legacy) not in Path("/proc/self/maps").read_text()


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"id_encoder": {}, "lora_weights": _Payload(marker)}, f)
    with pytest.raises(PhotoMakerInputError, match="Refused to load evil.bin"):
        read_checkpoint(path)
    assert not marker.exists()


def test_tiny_pipeline_adapter_can_be_mixed_and_fused(tmp_path):
    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path)
    adapters = pipe.get_list_adapters()
    assert adapters["unet"] == ["photomaker"]
    lora_modules = [
        m for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and "photomaker" in m.lora_A
    ]
    assert len(lora_modules) == sum(
        1
        for n, _ in pipe.unet.named_modules()
        if (".attn1." in n or ".attn2." in n)
        and n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))
    )
    pipe.set_adapters(["photomaker"], adapter_weights=[0.5])
    pipe.fuse_lora(adapter_names=["photomaker"])
    # loading again replaces the adapter instead of failing on the name
    pipe.unfuse_lora()
    pipe.load_photomaker_adapter(
        str(next(tmp_path.glob("*.bin"))),
        pm_version="v1",
        id_encoder_config=pipe.id_encoder.id_config,
    )
    assert pipe.get_list_adapters()["unet"] == ["photomaker"]


def _hub_cache(root: Path, repo: str, filename: str, state: dict) -> Path:
    """The huggingface_hub cache layout for one file of one repo."""
    commit = "0" * 40
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return write_checkpoint(state, repo_dir / "snapshots" / commit / filename)


def test_hub_id_uses_the_local_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported
    state = {"id_encoder": {"a": torch.ones(2)}, "lora_weights": {}}
    _hub_cache(tmp_path, "TencentARC/PhotoMaker-V2", "photomaker-v2.bin", state)
    path = resolve_checkpoint_file("TencentARC/PhotoMaker-V2", pm_version="v2", cache_dir=tmp_path)
    assert path.name == "photomaker-v2.bin" and path.is_file()
    connections = []  # fast because it never tries the network (no timing: CI may be busy)
    monkeypatch.setattr(socket.socket, "connect", lambda *args: connections.append(args))
    with pytest.raises(PhotoMakerInputError, match="not in the local Hugging Face cache"):
        resolve_checkpoint_file("TencentARC/PhotoMaker", pm_version="v1", cache_dir=tmp_path)
    assert connections == []


def test_not_a_location():
    with pytest.raises(
        PhotoMakerInputError, match="neither a file, a folder, nor a Hugging Face repo id"
    ):
        resolve_checkpoint_file("./missing/photomaker.bin")
