"""Loading like diffusers' own adapters: registered ID components, the released LoRA through
diffusers' loader and fused, offload hooks, step callbacks, defaults, compile guards."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline
from photomaker.tiny import TINY_IMAGE_SIZE, build_tiny_pipeline
from tests import reference

DATA = Path(__file__).resolve().parent / "data"
STEPS = 4


def photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (96, 80, 3), dtype=np.uint8))


def face_embeds(n: int) -> torch.Tensor:
    return torch.randn(n, 512, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return build_tiny_pipeline("v2", cache_dir=tmp_path_factory.mktemp("tiny"))


def run(pipe, **overrides):
    kwargs = dict(
        prompt="a photo of a man img in a spacesuit",
        negative_prompt="blurry",
        input_id_images=[photo(1), photo(2)],
        id_embeds=face_embeds(2),
        num_inference_steps=STEPS,
        start_merge_step=1,
        guidance_scale=5.0,
        height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    kwargs.update(overrides)
    return pipe(**kwargs).images


# --------------------------------------------------------------------------- LoRA


def released_lora(seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors in the released file's exact key layout (tests/data manifest)."""
    manifest = json.loads((DATA / "photomaker.lora_weights.keys.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(spec["shape"], generator=generator, dtype=dtype)
        for key, spec in manifest["keys"].items()
    }


def full_size_unet():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel(
            sample_size=128,
            cross_attention_dim=2048,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )


def test_released_lora_layout_loads_through_diffusers_unchanged(monkeypatch):
    """diffusers' own loader takes the released attention-processor layout: what it hands to
    peft is every released tensor, unchanged, under the PEFT name of the projection the old
    key names (q/k/v/out, down=lora_A, up=lora_B), and peft wraps all 560 projections."""
    import peft
    from diffusers import StableDiffusionXLPipeline

    lora = released_lora(dtype=torch.bfloat16)
    handed: dict[str, torch.Tensor] = {}
    original = peft.set_peft_model_state_dict

    def capture(model, state_dict, adapter_name, **kwargs):
        handed.update(state_dict)
        return original(model, state_dict, adapter_name, **kwargs)

    monkeypatch.setattr(peft, "set_peft_model_state_dict", capture)
    unet = full_size_unet()
    StableDiffusionXLPipeline.load_lora_into_unet(
        dict(lora),
        network_alphas=None,
        unet=unet,
        adapter_name="photomaker",
        low_cpu_mem_usage=True,
    )
    names = {
        "to_q_lora": "to_q",
        "to_k_lora": "to_k",
        "to_v_lora": "to_v",
        "to_out_lora": "to_out.0",
    }
    expected = {}
    for key, tensor in lora.items():
        path, _, tail = key.removeprefix("unet.").partition(".processor.")
        projection, direction, weight = tail.split(".")
        side = "lora_A" if direction == "down" else "lora_B"
        expected[f"{path}.{names[projection]}.{side}.{weight}"] = tensor
    assert set(handed) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(handed[key], tensor), key
    wrapped = [
        n for n, m in unet.named_modules() if hasattr(m, "lora_A") and "photomaker" in m.lora_A
    ]
    assert len(wrapped) == 70 * 2 * 4  # 70 blocks × attn1/attn2 × q/k/v/out
    assert all(unet.get_submodule(n).scaling["photomaker"] == 1.0 for n in wrapped)  # no alphas


def test_photomaker_lora_is_fused_after_loading(pipe, tmp_path):
    assert pipe.num_fused_loras == 1
    layers = [m for m in pipe.unet.modules() if hasattr(m, "lora_A") and "photomaker" in m.lora_A]
    assert layers and all(m.merged for m in layers)
    # Fused or live, the images are the same.
    live = build_tiny_pipeline("v2", cache_dir=tmp_path)
    live.unfuse_lora()
    assert live.num_fused_loras == 0
    np.testing.assert_allclose(run(pipe), run(live), atol=1e-5)


def test_fused_unet_does_no_more_work_than_plain_sdxl(pipe):
    """Counted, not timed: a fused UNet call costs the FLOPs of the bare UNet's."""
    from torch.utils.flop_counter import FlopCounterMode

    from photomaker.tiny import build_tiny_components

    sample = torch.randn(2, 4, 32, 32)
    cond = {"text_embeds": torch.randn(2, 32), "time_ids": torch.randn(2, 6)}
    hidden = torch.randn(2, 77, 64)

    def flops(unet) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(sample, 10, encoder_hidden_states=hidden, added_cond_kwargs=cond)
        return counter.get_total_flops()

    fused = flops(pipe.unet)
    bare = flops(build_tiny_components(0)["unet"])  # the same UNet, no LoRA at all
    pipe.unfuse_lora()
    try:
        live = flops(pipe.unet)
    finally:
        pipe.fuse_lora(components=["unet"], adapter_names=["photomaker"])
    assert fused == bare < live


def test_adapters_can_be_changed_at_run_time(pipe):
    before = run(pipe)
    pipe.fuse_adapters(["photomaker"], [0.5])
    try:
        half = run(pipe)
        assert pipe.num_fused_loras == 1
        assert np.abs(half - before).max() > 1e-4
    finally:
        pipe.fuse_adapters(["photomaker"], [1.0])
    np.testing.assert_allclose(run(pipe), before, atol=1e-5)


# --------------------------------------------------------------------------- components


def test_id_encoder_is_a_registered_component(pipe):
    components = pipe.components
    assert components["id_encoder"] is pipe.id_encoder
    assert components["id_fuse_module"] is pipe.id_fuse_module
    assert "fuse_module" not in dict(pipe.id_encoder.named_children())  # two disjoint modules
    assert pipe.model_cpu_offload_seq.split("->") == [
        "id_encoder",
        "text_encoder",
        "text_encoder_2",
        "image_encoder",  # the style image's IP-Adapter encoder, when one is loaded
        "id_fuse_module",
        "unet",
        "vae",
    ]
    assert "to" not in vars(PhotoMakerStableDiffusionXLPipeline)  # diffusers' own .to() does it


def test_to_casts_the_id_components(tmp_path):
    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path)
    pipe.to(torch.float64)
    assert {p.dtype for p in pipe.id_encoder.parameters()} == {torch.float64}
    assert {p.dtype for p in pipe.id_fuse_module.parameters()} == {torch.float64}
    images = run(pipe, id_embeds=None, num_inference_steps=2)
    assert images.shape == (1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)


def test_model_offload_hooks_the_id_components_and_a_cache_hit_skips_the_encoder(tmp_path):
    """Offload hooks come from diffusers for both ID components; with cached ID embeddings
    the 543M-parameter encoder is never called (so never moved), only the fuse module."""
    pipe = build_tiny_pipeline("v2", cache_dir=tmp_path)
    expected = run(pipe)
    cached = pipe.encode_id_images([photo(1), photo(2)], face_embeds(2))
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(pipe.id_encoder, "_hf_hook") and hasattr(pipe.id_fuse_module, "_hf_hook")
    calls = {"encoder": 0, "fuse": 0}
    pipe.id_encoder.register_forward_pre_hook(
        lambda *a: calls.__setitem__("encoder", calls["encoder"] + 1)
    )
    pipe.id_fuse_module.register_forward_pre_hook(
        lambda *a: calls.__setitem__("fuse", calls["fuse"] + 1)
    )
    np.testing.assert_allclose(run(pipe), expected, atol=1e-5)
    assert calls == {"encoder": 1, "fuse": 1}
    np.testing.assert_allclose(
        run(pipe, input_id_images=None, id_embeds=None, id_image_embeds=cached), expected, atol=1e-5
    )
    assert calls == {"encoder": 1, "fuse": 2}


def test_save_pretrained_saves_the_base_and_keeps_the_adapter(tmp_path):
    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path)
    pipe.save_pretrained(tmp_path / "base")
    assert pipe.id_encoder is not None and pipe.id_fuse_module is not None
    index = json.loads((tmp_path / "base" / "model_index.json").read_text())
    assert index["id_encoder"] == [None, None]


# --------------------------------------------------------------------------- call


def test_defaults_match_the_official_pipeline():
    """Code written for the official pipeline that omits an argument gets the same images."""
    ours = inspect.signature(PhotoMakerStableDiffusionXLPipeline.__call__).parameters
    assert ours["start_merge_step"].default == 10  # the official V2 pipeline's default
    oracle = reference.load_oracle()
    if oracle is None:
        pytest.skip(
            "the reference implementation is not unpacked in .oracle/ (scripts/test.sh does it)"
        )
    theirs = inspect.signature(
        oracle.pipeline.PhotoMakerStableDiffusionXLPipeline.__call__
    ).parameters
    # The V1 package (photomakerv 0.1.0) predates the V2 change of start_merge_step to 10.
    for name, parameter in theirs.items():
        if name in ("self", "start_merge_step", "callback", "callback_steps"):
            continue
        assert name in ours, name
        assert ours[name].default == parameter.default, name


def test_sdxl_cfg_cutoff_callback_end_to_end(pipe):
    """diffusers' SDXLCFGCutoffCallback turns CFG off half-way: the loop takes the embeddings
    it returns (both conditionings) and goes on with one half."""
    from diffusers.callbacks import SDXLCFGCutoffCallback

    for merge in (1, 3):  # cut-off after, and before, the merge step
        cut = run(
            pipe,
            start_merge_step=merge,
            callback_on_step_end=SDXLCFGCutoffCallback(cutoff_step_ratio=0.5),
        )
        full = run(pipe, start_merge_step=merge)
        assert cut.shape == full.shape and np.isfinite(cut).all()
        assert np.abs(cut - full).max() > 1e-5
    pipe._guidance_scale = 5.0


def test_multiple_callbacks_and_the_text_only_tensors(pipe):
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    seen: list[tuple[int, tuple, tuple]] = []

    class Spy(PipelineCallback):
        tensor_inputs = ["prompt_embeds", "prompt_embeds_text_only", "latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            seen.append(
                (
                    step_index,
                    tuple(callback_kwargs["prompt_embeds"].shape),
                    tuple(callback_kwargs["prompt_embeds_text_only"].shape),
                )
            )
            return callback_kwargs

    class ZeroTextOnly(PipelineCallback):
        """Replaces the text-only conditioning after step 0: the loop must use it."""

        tensor_inputs = ["prompt_embeds_text_only"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            return {
                "prompt_embeds_text_only": torch.zeros_like(
                    callback_kwargs["prompt_embeds_text_only"]
                )
            }

    plain = run(pipe, start_merge_step=2)
    spied = run(pipe, start_merge_step=2, callback_on_step_end=MultiPipelineCallbacks([Spy()]))
    np.testing.assert_array_equal(plain, spied)
    assert [s[0] for s in seen] == list(range(STEPS))
    assert all(s[1] == s[2] == (2, 77, 64) for s in seen)
    zeroed = run(pipe, start_merge_step=2, callback_on_step_end=ZeroTextOnly())
    assert np.abs(zeroed - plain).max() > 1e-5
    # After the merge step the text-only conditioning is unused: replacing it changes nothing.
    np.testing.assert_array_equal(
        run(pipe, start_merge_step=0, callback_on_step_end=ZeroTextOnly()),
        run(pipe, start_merge_step=0),
    )


def test_compiled_unet_does_not_recompile_across_steps_merge_or_prompts(tmp_path):
    """torch.compile guards (backend 'eager': the graph capture is what recompiles) hold
    across steps, across the merge switch and across prompts of the same shape."""
    import torch._dynamo

    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path)
    torch._dynamo.reset()
    pipe.unet.compile(backend="eager", dynamic=False)
    try:
        run(pipe, id_embeds=None, start_merge_step=1)  # first call compiles
        with torch._dynamo.config.patch(error_on_recompile=True):
            run(pipe, id_embeds=None, start_merge_step=2, prompt="a woman img reading, watercolor")
            run(pipe, id_embeds=None, start_merge_step=0, prompt="portrait of a boy img")
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize(
    "rename, message",
    [
        (lambda k: k.replace("to_q_lora", "to_x_lora"), "unknown format"),
        (lambda k: k.replace("unet.down_blocks", "unet.sideways_blocks"), "matches no layer"),
    ],
)
def test_a_lora_that_would_load_nowhere_is_refused(tmp_path, rename, message):
    """diffusers skips LoRA keys it cannot place; a checkpoint whose LoRA would reach nothing
    (or only part) is an error, not a silent PhotoMaker without its LoRA."""
    from photomaker.encoders import build_id_encoder
    from photomaker.errors import PhotoMakerInputError
    from photomaker.tiny import (
        TINY_ENCODER_CONFIG,
        build_tiny_components,
        random_state_dict,
        tiny_lora_state_dict,
    )

    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path)
    lora = tiny_lora_state_dict(build_tiny_components(0)["unet"])
    lora = {rename(k): v for k, v in lora.items() if ".up_blocks." not in k and ".mid_block." not in k}
    state = {
        "id_encoder": random_state_dict(build_id_encoder("v1", TINY_ENCODER_CONFIG)),
        "lora_weights": lora,
    }
    with pytest.raises(PhotoMakerInputError, match=message):
        pipe.load_photomaker_adapter(state, pm_version="v1", id_encoder_config=TINY_ENCODER_CONFIG)
