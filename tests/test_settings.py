"""Settings: flags win over PHOTOMAKER_* variables, which win over defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from photomaker.errors import PhotoMakerInputError
from photomaker.settings import (
    FIELDS,
    Settings,
    gpu_memory_at_start,
    pick_memory_mode,
    settings_table,
)


def test_defaults_match_the_field_table():
    defaults = Settings()
    for field in FIELDS:
        assert getattr(defaults, field.name) == field.default, field.name
    assert {f.name for f in dataclasses.fields(Settings)} == {f.name for f in FIELDS}
    assert defaults.base_model == "SG161222/RealVisXL_V4.0"
    assert defaults.pm_version == "v2"


def test_env_then_flags():
    env = {
        "PHOTOMAKER_TINY": "1",
        "PHOTOMAKER_BASE_MODEL": "/models/my-sdxl.safetensors",
        "PHOTOMAKER_VERSION": "v1",
        "PHOTOMAKER_STYLE_LORA_WEIGHT": "0.5",
        "PHOTOMAKER_LOW_VRAM": "yes",
        "GRADIO_SERVER_PORT": "9001",
    }
    s = Settings.from_args([], env=env)
    assert s.tiny is True and s.pm_version == "v1" and s.low_vram is True
    assert s.memory == "model-offload"  # --low-vram is an alias
    assert s.base_model == "/models/my-sdxl.safetensors"
    assert s.style_lora_weight == 0.5 and s.port == 9001

    s = Settings.from_args(
        ["--no-tiny", "--pm-version", "v2", "--port", "7000", "--no-low-vram", "--crop-faces"],
        env=env,
    )
    assert s.tiny is False and s.pm_version == "v2" and s.port == 7000 and s.low_vram is False
    assert s.crop_faces is True
    assert s.base_model == "/models/my-sdxl.safetensors"  # untouched by flags: env stays


def test_own_port_variable_wins_over_gradio_one():
    s = Settings.from_env({"PHOTOMAKER_PORT": "8000", "GRADIO_SERVER_PORT": "9000"})
    assert s.port == 8000


@pytest.mark.parametrize(
    "env",
    [
        {"PHOTOMAKER_TINY": "maybe"},
        {"PHOTOMAKER_PORT": "http"},
        {"PHOTOMAKER_VERSION": "v3"},
        {"PHOTOMAKER_DEVICE": "tpu"},
        {"PHOTOMAKER_PORT": "70000"},
    ],
)
def test_bad_env_values_name_the_variable(env):
    with pytest.raises(PhotoMakerInputError) as err:
        Settings.from_env(env)
    assert list(env)[0] in str(err.value) or "port" in str(err.value)


def test_bad_flag_exits():
    with pytest.raises(SystemExit):
        Settings.from_args(["--pm-version", "v3"], env={})
    with pytest.raises(SystemExit):
        Settings.from_args(["--tinny"], env={})


def test_checkpoint_location(tmp_path):
    assert Settings().checkpoint_location == ("TencentARC/PhotoMaker-V2", "photomaker-v2.bin")
    assert Settings(pm_version="v1").checkpoint_location == (
        "TencentARC/PhotoMaker",
        "photomaker-v1.bin",
    )
    file = tmp_path / "pm.safetensors"
    file.write_bytes(b"x")
    assert Settings(checkpoint=str(file)).checkpoint_location == (str(file), None)
    assert Settings(checkpoint=str(tmp_path)).checkpoint_location == (
        str(tmp_path),
        "photomaker-v2.bin",
    )
    assert Settings(checkpoint="me/pm", checkpoint_file="w.bin").checkpoint_location == (
        "me/pm",
        "w.bin",
    )


def test_device_and_dtype_resolution(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert Settings(tiny=True).resolved_device() == "cpu"
    assert Settings(tiny=True).resolved_dtype() == torch.float32
    assert Settings(device="cpu").resolved_dtype() == torch.float32
    assert Settings(device="cpu", dtype="bfloat16").resolved_dtype() == torch.bfloat16
    assert Settings(device="mps").resolved_dtype() == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Settings().resolved_device() in ("cpu", "mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Settings().resolved_device() == "cuda"
    # The device's capability is faked, not the decision: torch's own is_bf16_supported()
    # says True on a T4 (emulation), and must not be what picks bf16.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for capability, expected in [
        ((7, 5), torch.float16),  # T4
        ((7, 0), torch.float16),  # V100
        ((8, 0), torch.bfloat16),  # A100
        ((8, 6), torch.bfloat16),  # A10G, RTX 30xx
        ((8, 9), torch.bfloat16),  # L4, RTX 40xx
        ((9, 0), torch.bfloat16),  # H100
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        assert Settings().resolved_dtype() == expected, capability
    assert Settings().resolved_faces_on_cpu() is False
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert Settings().resolved_faces_on_cpu() is True


def test_settings_table_lists_every_setting():
    """The README's table is ``settings_table()``'s output, row for row (regenerate it with
    ``python scripts/update_readme.py`` after changing a setting)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = settings_table()
    header = table.splitlines()[0]
    assert header in readme, "the README has no settings table"
    start = readme.index(header)
    end = readme.find("\n\n", start)
    assert readme[start:end] == table
    assert len(table.splitlines()) == len(FIELDS) + 2


def test_memory_modes_and_the_low_vram_alias():
    assert Settings().memory == "auto"
    assert Settings(memory="full", low_vram=True).memory == "model-offload"
    assert Settings(low_vram=True).memory == "model-offload"
    assert Settings(memory="sequential-offload", low_vram=True).memory == "sequential-offload"
    assert Settings.from_args(["--memory", "sequential-offload"], env={}).memory == "sequential-offload"
    assert Settings.from_env({"PHOTOMAKER_LOW_VRAM": "1"}).memory == "model-offload"
    with pytest.raises(PhotoMakerInputError, match="memory"):
        Settings(memory="half")


GIB = 2**30 / 1e9  # a card's "8 GB" is 8 GiB


@pytest.mark.parametrize(
    ("free_gib", "mode", "resident_mode"),
    [
        (80, "full", "full"),
        (24, "full", "full"),
        (12, "full", "full"),
        (11, "encoder-offload", "encoder-offload"),
        (8, "encoder-offload", "encoder-offload"),
        (6, "group-offload", "encoder-offload"),  # the UNet can't stay: resident modes try
        (4, "group-offload", "encoder-offload"),
        (2, "sequential-offload", "encoder-offload"),
    ],
)
def test_memory_auto_picks_the_fastest_exact_mode_that_fits(free_gib, mode, resident_mode):
    assert pick_memory_mode(free_gib * GIB) == mode
    assert pick_memory_mode(free_gib * GIB, unet_resident=True) == resident_mode


def test_memory_auto_asks_the_gpu_only_on_cuda_and_not_on_zerogpu(monkeypatch, request):
    import torch

    request.addfinalizer(gpu_memory_at_start.cache_clear)  # no fake answer outlives the test

    assert Settings(device="cuda").resolved_memory() == "full"  # no GPU here to ask
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    free = {"bytes": 8 * 2**30 - 400 * 2**20}  # an 8 GB card less this process's context
    asked = []

    def mem_get_info(index):
        asked.append(index)
        return free["bytes"], 8 * 2**30

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    gpu_memory_at_start.cache_clear()
    on_cuda = Settings(device="cuda")
    assert on_cuda.resolved_memory() == "encoder-offload"
    assert on_cuda.memory_description() == "auto"  # chosen when the models are placed
    assert on_cuda.gpu_memory_note() == "8.2 of 8.6 GB free at start-up"
    free["bytes"] = 2 * 2**30  # the pipeline now on the GPU: asked once, the answer stays
    assert on_cuda.resolved_memory() == "encoder-offload" and asked == [0]
    # Free, not total: a 12 GB card whose desktop holds 1.2 GB has not full's 12 GB to spare.
    gpu_memory_at_start.cache_clear()
    free["bytes"] = int(11.2e9)
    assert Settings(device="cuda").resolved_memory() == "encoder-offload"
    assert Settings(device="cuda", memory="full").gpu_memory_note() == ""
    assert "memory auto," in on_cuda.describe() + ","
    assert Settings(device="cpu").memory_description() == "auto: full"
    assert Settings(device="cuda", fast_fuse="on", aot=True).resolved_memory() == "encoder-offload"
    assert Settings(device="cuda", memory="model-offload").resolved_memory() == "model-offload"
    assert Settings(device="cpu").resolved_memory() == "full"
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert Settings(device="cuda").resolved_memory() == "full"


def test_compile_mode_needs_compile():
    assert Settings(compile=True, compile_mode="reduce-overhead").compile_mode == "reduce-overhead"
    assert Settings.from_args(["--compile", "--compile-mode", "max-autotune"], env={}).compile_mode == (
        "max-autotune"
    )
    with pytest.raises(PhotoMakerInputError, match="needs compile on"):
        Settings(compile_mode="reduce-overhead")
    with pytest.raises(PhotoMakerInputError, match="compile_mode"):
        Settings(compile=True, compile_mode="fastest")
