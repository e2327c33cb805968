"""Fast mode (photomaker/fast.py) on the tiny models, with a tiny distillation LoRA written in
the released (kohya, SDXL-Lightning) layout: loading, the scheduler swap, the FLOPs per image,
exact quality images after switching, and the optional default."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from photomaker import fast
from photomaker.errors import PhotoMakerInputError
from photomaker.loading import load_fast_lora, tiny_fast_lora_file
from photomaker.settings import DEFAULT_FAST_LORA, Settings
from photomaker.tiny import (
    FAST_LORA_BLOCKS,
    build_tiny_components,
    build_tiny_pipeline,
    write_tiny_fast_lora,
)

PROMPT = "a photo of a man img"
QUALITY = {"num_inference_steps": 50, "guidance_scale": 5.0}  # the request defaults


def _photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def generate(pipe, fast_mode: bool, size: int = 64, **kwargs) -> np.ndarray:
    with fast.generation_mode(pipe, fast_mode) as overrides:
        call = {"num_inference_steps": 6, "guidance_scale": 5.0, **kwargs, **overrides}
        return pipe(
            prompt=PROMPT,
            input_id_images=[_photo()],
            height=size,
            width=size,
            generator=torch.Generator().manual_seed(7),
            output_type="np",
            **call,
        ).images


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path_factory.mktemp("tiny"))
    mode = load_fast_lora(pipe, Settings(tiny=True))
    assert mode is fast.fast_mode_of(pipe)
    return pipe


def _lora_targets(unet: nn.Module) -> list[str]:
    return [
        name
        for name, m in unet.named_modules()
        if name.startswith(FAST_LORA_BLOCKS) and isinstance(m, (nn.Linear, nn.Conv2d))
    ]


def test_the_tiny_lora_file_has_the_released_layout_and_loads_on_every_target(tmp_path, pipe):
    path = write_tiny_fast_lora(tmp_path / "lightning.safetensors")
    state = load_file(str(path))
    targets = _lora_targets(build_tiny_components(0)["unet"])
    assert len(state) == 3 * len(targets) > 100
    assert all(k.startswith("lora_unet_") for k in state)
    key = "lora_unet_" + "down_blocks.0.resnets.0.conv1".replace(".", "_")
    assert state[f"{key}.lora_down.weight"].shape == (4, 32, 3, 3)  # k×k down, 1×1 up
    assert state[f"{key}.lora_up.weight"].shape == (32, 4, 1, 1)
    assert state[f"{key}.alpha"].ndim == 0
    # Loaded from that file layout, the adapter sits on every target layer.
    assert fast.fast_layers(pipe) == len(targets)
    mode = fast.fast_mode_of(pipe)
    assert mode == fast.mode_for(DEFAULT_FAST_LORA)
    assert (mode.steps, mode.guidance_scale, mode.scheduler) == (8, 0.0, "EulerDiscreteScheduler")
    assert not fast.fast_enabled(pipe)  # quality is the resting state


def test_a_named_lora_file_loads_through_the_settings(tmp_path):
    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path)
    path = write_tiny_fast_lora(tmp_path / "sdxl_lightning_4step_lora.safetensors")
    mode = load_fast_lora(pipe, Settings(fast_lora=str(path)))
    assert mode.name == "SDXL-Lightning 4-step" and mode.steps == 4 and mode.lora == str(path)
    assert fast.fast_layers(pipe) > 100


def test_the_scheduler_is_swapped_with_from_config_and_put_back(pipe):
    quality = pipe.scheduler
    with fast.generation_mode(pipe, True) as overrides:
        swapped = pipe.scheduler
        assert overrides == {"num_inference_steps": 8, "guidance_scale": 0.0}
        assert fast.fast_enabled(pipe)
    assert isinstance(swapped, EulerDiscreteScheduler) and swapped is not quality
    assert swapped.config.timestep_spacing == "trailing"
    assert quality.config.timestep_spacing == "leading"
    same = {k: v for k, v in quality.config.items() if k != "timestep_spacing"}
    assert {k: swapped.config[k] for k in same} == same  # only the mode's setting changed
    swapped.set_timesteps(8)
    assert int(swapped.timesteps[0]) == 999  # trailing: the first step starts at pure noise
    assert pipe.scheduler is quality and not fast.fast_enabled(pipe)
    with pytest.raises(RuntimeError), fast.generation_mode(pipe, True):
        raise RuntimeError("a failed call")
    assert pipe.scheduler is quality and not fast.fast_enabled(pipe)


class UNetCalls:
    """FLOPs (torch.utils.flop_counter) and batch of every UNet call during a generation."""

    def __init__(self, unet: nn.Module):
        self.flops: list[int] = []
        self.batches: list[int] = []
        self._counter: FlopCounterMode | None = None
        self._hooks = [
            unet.register_forward_pre_hook(self._enter, with_kwargs=True),
            unet.register_forward_hook(self._exit),
        ]

    def _enter(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.batches.append(sample.shape[0])
        self._counter = FlopCounterMode(display=False)
        self._counter.__enter__()

    def _exit(self, module, args, output):
        self._counter.__exit__(None, None, None)
        self.flops.append(self._counter.get_total_flops())

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


@contextlib.contextmanager
def counted_attention(pipe):
    """``pipe``'s UNet with attention as plain matmuls (the non-SDPA processor), which the FLOP
    counter counts on the CPU, and a plain tiny SDXL UNet set up alike to compare with; the
    pipeline's processors are put back afterwards."""
    from diffusers.models.attention_processor import AttnProcessor

    original = pipe.unet.attn_processors
    pipe.unet.set_attn_processor(AttnProcessor())
    plain = build_tiny_components(0)["unet"]
    plain.set_attn_processor(AttnProcessor())
    try:
        yield plain
    finally:
        pipe.unet.set_attn_processor(original)


def test_quality_costs_plain_sdxl_flops_and_fast_costs_under_a_fifth(pipe):
    with counted_attention(pipe) as plain:
        quality, fast_calls, plain_calls = UNetCalls(pipe.unet), None, UNetCalls(plain)
        # 32 px (16² latents): the FLOPs scale with the size alike in both modes.
        generate(pipe, False, size=32, **QUALITY)
        quality.close()
        fast_calls = UNetCalls(pipe.unet)
        generate(pipe, True, size=32, **QUALITY)  # fast mode replaces the steps and guidance
        fast_calls.close()
        with torch.no_grad():
            plain(torch.zeros(2, 4, 16, 16), 10, torch.zeros(2, 77, 64), added_cond_kwargs={
                "text_embeds": torch.zeros(2, 32), "time_ids": torch.zeros(2, 6)})
        plain_calls.close()
    assert quality.batches == [2] * 50 and fast_calls.batches == [1] * 8  # CFG off in fast
    # Quality: per step exactly plain SDXL's FLOPs (the disabled adapter adds nothing).
    assert set(quality.flops) == {plain_calls.flops[0]}
    assert fast_calls.flops[0] > plain_calls.flops[0] // 2  # batch 1 plus the LoRA's side path
    ratio = sum(fast_calls.flops) / sum(quality.flops)
    assert ratio <= 1 / 5, ratio


def test_switching_back_and_forth_gives_bit_identical_quality_images(pipe):
    before = generate(pipe, False)
    fast_image = generate(pipe, True)
    after = generate(pipe, False)
    fast.set_fast(pipe, True)
    fast.set_fast(pipe, False)
    again = generate(pipe, False)
    assert np.array_equal(before, after) and np.array_equal(before, again)
    assert not np.allclose(fast_image, before, atol=1e-3)
    assert np.array_equal(fast_image, generate(pipe, True))  # same seed, same fast image


def test_the_style_strength_lands_on_a_step_at_few_steps():
    from photomaker.service import merge_step

    # 20 % of 8 steps: merge step 1, so steps 0 and 1 are text only and steps 2-7 see the
    # identity; at 4 steps merge step 0: step 0 text only, the identity from step 1 (from 0).
    assert merge_step(20, 8) == 1 and merge_step(20, 4) == 0 and merge_step(50, 8) == 4


def test_none_hides_the_mode_and_fast_requests_are_refused(tmp_path):
    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path)
    settings = Settings(tiny=True, fast_lora="none")
    assert settings.fast_lora_location is None and not settings.fast_lora_required
    assert load_fast_lora(pipe, settings) is None and fast.fast_mode_of(pipe) is None
    with pytest.raises(PhotoMakerInputError, match="Fast mode is not available"):
        with fast.generation_mode(pipe, True):
            pass
    assert pipe.get_list_adapters() == {"unet": ["photomaker"]}  # untouched


def test_the_default_is_optional_and_a_named_one_must_load(tmp_path, monkeypatch, caplog):
    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path)

    def offline(location):
        raise OSError(f"{location} is not in the cache and the hub cannot be reached")

    monkeypatch.setattr(fast, "read_lora", offline)
    default = Settings(device="cpu")
    assert default.fast_lora_location == DEFAULT_FAST_LORA and not default.fast_lora_required
    with caplog.at_level(logging.WARNING, logger="photomaker.loading"):
        assert load_fast_lora(pipe, default) is None
    assert "fast mode is off" in caplog.text and DEFAULT_FAST_LORA in caplog.text
    assert pipe.get_list_adapters() == {"unet": ["photomaker"]}  # nothing was baked
    named = Settings(fast_lora=DEFAULT_FAST_LORA)
    assert named.fast_lora_required
    with pytest.raises(PhotoMakerInputError, match="Could not load the fast LoRA"):
        load_fast_lora(pipe, named)


def test_an_unfused_adapter_is_not_baked_away(tmp_path):
    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path)
    pipe.unfuse_lora()
    with pytest.raises(ValueError, match="not fused"):
        fast.attach_fast_lora(pipe, str(tiny_fast_lora_file(Settings(tiny=True))))


def test_locations_are_split_like_the_other_loras(tmp_path):
    file = write_tiny_fast_lora(tmp_path / "x.safetensors")
    assert fast.split_location(str(file)) == (str(tmp_path), {"weight_name": "x.safetensors"})
    assert fast.split_location(str(tmp_path)) == (str(tmp_path), {})
    assert fast.split_location(DEFAULT_FAST_LORA) == (
        "ByteDance/SDXL-Lightning",
        {"weight_name": "sdxl_lightning_8step_lora.safetensors"},
    )
    assert fast.split_location("latent-consistency/lcm-lora-sdxl") == (
        "latent-consistency/lcm-lora-sdxl",
        {},
    )
    assert fast.mode_for("latent-consistency/lcm-lora-sdxl").scheduler == "LCMScheduler"
    assert "negative prompt has no effect" in fast.DEFAULT_MODE.trade()
    assert fast.DEFAULT_MODE.record()["scheduler_timestep_spacing"] == "trailing"
