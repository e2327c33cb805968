"""The 8 GB memory modes (photomaker/loading.py): fp8 weight storage, group offloading and
encoder offloading.

CUDA streams need a GPU; here the configuration each mode passes to diffusers is checked, and
what runs on a CPU runs: fp8 storage on the tiny UNet, group offloading without a stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.hooks.group_offloading import _get_group_onload_device
from PIL import Image

from photomaker import fast
from photomaker.errors import PhotoMakerInputError
from photomaker.loading import (
    ENCODER_OFFLOAD_RESIDENT,
    apply_offload,
    enable_encoder_offload,
    enable_fp8_storage,
    enable_group_offload,
    fp8_storage_settings,
    group_offload_settings,
    place,
)
from photomaker.offload_groups import (
    applied_group,
    applied_groups,
    block_modules_for,
    plan_block_modules,
    replay,
)
from photomaker.settings import DEFAULT_FAST_LORA, MEMORY_MODES, Settings
from photomaker.tiny import build_tiny_pipeline, write_tiny_fast_lora


def _image(pipe) -> np.ndarray:
    v2 = {"id_embeds": torch.ones(1, 512)} if getattr(pipe, "pm_version", "v1") == "v2" else {}
    return pipe(
        **v2,
        prompt="a photo of a man img",
        input_id_images=[Image.new("RGB", (64, 64), (120, 90, 60))],
        height=64,
        width=64,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return folder, _image(build_tiny_pipeline("v1", cache_dir=folder))


def test_the_new_modes_are_settings():
    for mode in ("fp8", "group-offload", "group-offload-fp8", "encoder-offload"):
        assert mode in MEMORY_MODES and Settings(memory=mode).memory == mode
    with pytest.raises(PhotoMakerInputError):
        Settings(memory="fp4")


def test_group_offload_streams_on_cuda_and_not_elsewhere():
    cuda = group_offload_settings("cuda")
    assert cuda["use_stream"] and cuda["non_blocking"] and cuda["record_stream"]
    assert cuda["offload_type"] == "block_level" and cuda["num_blocks_per_group"] == 1
    assert cuda["onload_device"] == torch.device("cuda")
    assert cuda["offload_device"] == torch.device("cpu")
    cpu = group_offload_settings("cpu")
    assert not cpu["use_stream"] and not cpu["non_blocking"]


def test_group_offload_runs_and_gives_the_same_image(reference):
    folder, expected = reference
    pipe = build_tiny_pipeline("v1", cache_dir=folder)
    enable_group_offload(pipe, "cpu")  # the hooks, without a stream (CPU to CPU)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2", "id_encoder"):
        assert _get_group_onload_device(getattr(pipe, name)) == torch.device("cpu"), name
    assert pipe._execution_device == torch.device("cpu")
    assert np.array_equal(_image(pipe), expected)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_group_offload_splits_every_model_as_the_replay_says(reference, version):
    """What diffusers hooked is what photomaker.offload_groups' replay predicts (the figures
    of bench/memory.py come from the replay): the same number of groups, each layer group
    its own; and the UNet is split below its blocks (diffusers alone would make its first up
    block one group and keep its mid block with the leftovers)."""
    folder, _ = reference
    pipe = build_tiny_pipeline(version, cache_dir=folder)
    plans = {
        name: block_modules_for(model)
        for name, model in pipe.components.items()
        if isinstance(model, torch.nn.Module)
    }
    enable_group_offload(pipe, "cpu")
    for name, names in plans.items():
        model = getattr(pipe, name)
        groups, problems = replay(model, names)
        hooked = applied_groups(model)
        assert problems == [] and len(groups) == len(hooked), name
        for group in groups:
            if group.kind == "layer":
                assert applied_group(group.modules[0]).modules == group.modules, group.path
    unet_groups, _ = replay(pipe.unet, plans["unet"])
    paths = {g.path for g in unet_groups}
    assert "up_blocks.0" not in paths and any(".transformer_blocks." in p for p in paths)
    assert any(p.startswith("mid_block.") for p in paths)
    largest = max(g.parameters for g in unet_groups)
    assert largest < sum(p.numel() for p in pipe.unet.parameters()) / 10


def test_encoder_offload_keeps_the_unet_and_vae_and_offloads_the_encoders(reference):
    """The UNet (and VAE) carry no offload hook, so their weights stay where they are and the
    fast LoRA can be merged into them; the encoders are group-offloaded; same image."""
    folder, expected = reference
    pipe = build_tiny_pipeline("v1", cache_dir=folder)
    enable_encoder_offload(pipe, "cpu")  # the hooks, without a stream (CPU to CPU)
    assert set(ENCODER_OFFLOAD_RESIDENT) >= {"unet", "vae"}
    for name in ("text_encoder", "text_encoder_2", "id_encoder"):
        assert _get_group_onload_device(getattr(pipe, name)) == torch.device("cpu"), name
    for name in ("unet", "vae"):
        with pytest.raises(ValueError):  # no group-offload hook anywhere in it
            _get_group_onload_device(getattr(pipe, name))
    assert pipe._execution_device == torch.device("cpu")
    assert np.array_equal(_image(pipe), expected)
    fast.attach_fast_lora(pipe, str(write_tiny_fast_lora(folder / "fast.safetensors")),
                          mode=fast.mode_for(DEFAULT_FAST_LORA))  # fmt: skip
    assert fast.fuse_blocker(pipe) is None


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_encoder_offload_brings_each_encoder_in_a_layer_at_a_time(reference, version):
    """Each layer of every encoder's layer lists is a group of its own, so an encoder never
    comes in whole (diffusers' block level alone stops at transformers' top-level modules and
    would move text encoder 2's 1.39 GB as one group); same image as full mode."""
    folder, expected = reference
    pipe = build_tiny_pipeline(version, cache_dir=folder)
    full = _image(pipe) if version == "v2" else expected
    enable_encoder_offload(pipe, "cpu")
    for name in ("text_encoder", "text_encoder_2", "id_encoder"):
        encoder = getattr(pipe, name)
        stacks = [m for path, m in encoder.named_modules() if path.endswith("encoder.layers")]
        assert len(stacks) == 1, name
        for layer in stacks[0]:  # a group of its own, or split further (tiny layers are "big")
            group = applied_group(layer)
            assert group is not None and group.onload_leader is layer, name
            assert sum(p.numel() for p in layer.parameters()) < sum(
                p.numel() for p in encoder.parameters()) / 2  # fmt: skip
    assert np.array_equal(_image(pipe), full)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("mode", ["encoder-offload", "group-offload"])
def test_every_offload_group_is_brought_in_when_its_model_runs(reference, monkeypatch, version,
                                                               mode):  # fmt: skip
    """A group comes in when its leading module's forward runs. On the CPU a group that never
    comes in goes unnoticed (its weights are already on the CPU); on a GPU it is a device
    error. So: every group of every offloaded model is brought in at least once per call. (A
    list of lists, as in V2's perceiver, would be grouped by its inner lists, which never run.)"""
    from diffusers.hooks.group_offloading import ModuleGroup

    folder, _ = reference
    pipe = build_tiny_pipeline(version, cache_dir=folder)
    apply_offload(pipe, mode, "cpu")
    groups = {}
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            for module_name, module in component.named_modules():
                group = applied_group(module)
                if group is not None:
                    groups[id(group)] = f"{name}.{module_name}"
    assert len(groups) > 10
    onloaded = set()
    original = ModuleGroup.onload_

    def record(self):
        onloaded.add(id(self))
        return original(self)

    monkeypatch.setattr(ModuleGroup, "onload_", record)
    _image(pipe)
    never = sorted(groups[g] for g in groups.keys() - onloaded)
    # the VAE's encoder is not used to make an image from text
    assert [name for name in never if not name.startswith(("vae.encoder", "vae.quant_conv"))] == []


def test_the_plan_names_the_way_down_splits_big_blocks_and_avoids_what_never_runs():
    from torch import nn

    def linears(n: int, size: int = 2) -> nn.ModuleList:
        return nn.ModuleList([nn.Linear(size, size) for _ in range(n)])

    inner = nn.Module()
    inner.encoder = nn.Module()
    inner.encoder.layers = linears(2)
    inner.norm = nn.LayerNorm(2)
    pairs = nn.Module()  # a list of [layer, layer] pairs: the pairs never run by themselves
    pairs.layers = nn.ModuleList([nn.ModuleList([nn.Linear(2, 2)]) for _ in range(2)])
    model = nn.Module()
    model.text_model = inner
    model.head = nn.Sequential(nn.Linear(2, 2), nn.GELU())
    model.resampler = pairs
    names = plan_block_modules(model, split_fraction=1.0)  # no list element is "big"
    assert names == ["encoder", "text_model"]  # the resampler stays whole, with the leftovers
    groups, problems = replay(model, names)
    assert problems == []
    assert {g.path for g in groups if g.kind == "layer"} == {
        "text_model.encoder.layers.0", "text_model.encoder.layers.1", "head.0", "head.1"}  # fmt: skip
    # a list of lists walked into would lead groups with modules that never run
    assert replay(model, ["resampler"])[1] == [
        "resampler.layers.0: a group whose forward never runs",
        "resampler.layers.1: a group whose forward never runs",
    ]

    blocks = nn.Module()  # one big block among small ones: every block is walked into
    blocks.blocks = nn.ModuleList([nn.Module() for _ in range(3)])
    for index, block in enumerate(blocks.blocks):
        block.layers = linears(40, size=16) if index == 2 else linears(2)
        block.forward = lambda x: x
    assert plan_block_modules(blocks) == ["0", "1", "2", "blocks"]
    paths = {g.path for g in replay(blocks, plan_block_modules(blocks))[0]}
    assert "blocks.2.layers.0" in paths and "blocks.2" not in paths

    collision = nn.Module()  # "encoder" is walked into everywhere, even where it should not be
    collision.text_model = inner
    collision.vision = nn.Module()
    collision.vision.layers = linears(1)
    collision.vision.encoder = linears(1)  # walked: its Linear joins leftovers led by a list
    assert replay(collision, ["encoder", "text_model", "vision"])[1] == [
        "vision.encoder: its leftovers would never come in"]  # fmt: skip
    assert plan_block_modules(collision, split_fraction=1.0) == []  # so the plan is not used


def test_full_mode_decodes_one_image_at_a_time_with_the_same_images(reference):
    """VAE slicing in the resident modes (a batch decoded at once needs about 2 GB per image):
    the images of a two-image call are those of the batched decode."""
    folder, _ = reference
    pipe = build_tiny_pipeline("v1", cache_dir=folder)

    def two_images():
        return pipe(
            prompt="a photo of a man img", input_id_images=[Image.new("RGB", (64, 64), "gray")],
            height=64, width=64, num_inference_steps=2, num_images_per_prompt=2,
            generator=torch.Generator().manual_seed(5), output_type="np",
        ).images  # fmt: skip

    batched = two_images()
    assert not pipe.vae.use_slicing
    place(pipe, Settings(tiny=True, device="cpu", memory="full"))
    assert pipe.vae.use_slicing
    np.testing.assert_allclose(two_images(), batched, atol=1e-6)


def test_aot_and_forced_fusing_accept_encoder_offload_and_refuse_the_moving_modes():
    for memory in ("full", "encoder-offload"):
        assert Settings(memory=memory, aot=True).aot
        assert Settings(memory=memory, fast_fuse="on").fast_fuse == "on"
    for memory in ("model-offload", "group-offload", "fp8"):
        with pytest.raises(PhotoMakerInputError, match="full or encoder-offload"):
            Settings(memory=memory, aot=True)
        with pytest.raises(PhotoMakerInputError, match="full or encoder-offload"):
            Settings(memory=memory, fast_fuse="on")


def test_fp8_storage_stores_float8_and_computes_in_the_run_dtype(reference):
    folder, expected = reference
    pipe = build_tiny_pipeline("v1", cache_dir=folder)
    settings = fp8_storage_settings(pipe.unet, torch.float32)
    assert settings["storage_dtype"] == torch.float8_e4m3fn
    assert settings["compute_dtype"] == torch.float32
    assert "norm" in settings["skip_modules_pattern"] and "lora_" in settings["skip_modules_pattern"]
    before = sum(p.numel() * p.element_size() for p in pipe.unet.parameters())
    enable_fp8_storage(pipe.unet, torch.float32)
    after = sum(p.numel() * p.element_size() for p in pipe.unet.parameters())
    assert after < 0.3 * before  # fp32 → fp8 but for the norms and the LoRA factors
    assert pipe.unet.conv_in.weight.dtype == torch.float8_e4m3fn
    norm = next(m for n, m in pipe.unet.named_modules() if n.endswith("norm1"))
    assert norm.weight.dtype == torch.float32
    image = _image(pipe)
    assert image.dtype == expected.dtype and not np.array_equal(image, expected)
    assert np.abs(image - expected).mean() < 0.1  # rounding, not a different picture


def test_place_applies_fp8_even_on_the_cpu_and_offload_falls_back_to_full(reference):
    folder, _ = reference
    pipe = build_tiny_pipeline("v1", cache_dir=folder)
    place(pipe, Settings(tiny=True, device="cpu", memory="group-offload-fp8"))
    assert pipe.unet.conv_in.weight.dtype == torch.float8_e4m3fn
    with pytest.raises(ValueError):  # no group-offload hooks: on the CPU it is full mode
        _get_group_onload_device(pipe.unet)
    with pytest.raises(ValueError, match="not an offload mode"):
        apply_offload(pipe, "full", "cpu")
