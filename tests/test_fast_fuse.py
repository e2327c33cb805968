"""Fused fast calls (photomaker/fast.py ``fused_fast_weights``, setting ``fast_fuse``) on the
tiny models: quality images bit-identical after fused fast calls (also after one that fails
mid-way), fused output equal to the unfused adapter's within float32 rounding, plain SDXL's
FLOPs per fast step, the AOT-compiled graph never used while fused, and the policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from photomaker import aot, fast
from photomaker.errors import PhotoMakerInputError
from photomaker.loading import load_fast_lora
from photomaker.settings import Settings
from photomaker.tiny import build_tiny_pipeline
from tests.test_fast import counted_attention

PROMPT = "a photo of a man img"


def _photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _call(steps: int = 4, **extra) -> dict:
    return dict(
        prompt=PROMPT,
        input_id_images=[_photo()],
        height=64,
        width=64,
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
        **extra,
    )


def generate(pipe, fast_mode: bool, fuse: bool | None = None, **extra) -> np.ndarray:
    with fast.generation_mode(pipe, fast_mode, fuse=fuse) as overrides:
        return pipe(**{**_call(**extra), **overrides}).images


def snapshot(unet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def assert_untouched(pipe, before: dict[str, torch.Tensor]) -> None:
    """Every UNet tensor bit for bit as before, PEFT says unmerged, the adapter is off."""
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not fast.fast_fused(pipe.unet) and not fast.fast_enabled(pipe)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path_factory.mktemp("tiny"))
    load_fast_lora(pipe, Settings(tiny=True, fast_fuse="on"))
    assert fast.fuse_policy(pipe) == "on"  # the setting reaches the pipeline
    return pipe


def test_quality_stays_bit_identical_through_fused_fast_calls_and_a_failed_one(pipe):
    weights = snapshot(pipe.unet)
    quality = generate(pipe, False)
    fused = generate(pipe, True, fuse=True, steps=8)
    for _ in range(2):  # back and forth, both fast paths
        assert np.array_equal(generate(pipe, False), quality)
        assert np.array_equal(generate(pipe, True, fuse=True), fused)  # same seed, same image
        assert_untouched(pipe, weights)
        generate(pipe, True, fuse=False)
        assert_untouched(pipe, weights)

    def fail(pipeline, step, timestep, tensors):
        assert fast.fast_fused(pipeline.unet)  # merged while the call runs
        if step == 2:
            raise RuntimeError("cancelled mid-way")
        return tensors

    with pytest.raises(RuntimeError, match="mid-way"):
        generate(pipe, True, fuse=True, callback_on_step_end=fail)
    assert_untouched(pipe, weights)
    assert np.array_equal(generate(pipe, False), quality)


def test_a_merge_that_fails_half_way_is_undone(pipe, monkeypatch):
    weights = snapshot(pipe.unet)
    layer = fast._fast_peft_layers(pipe.unet)[100]  # layers 0-99 are merged by then

    def broken(*args, **kwargs):
        raise RuntimeError("merge failed")

    monkeypatch.setattr(layer, "merge", broken)
    with pytest.raises(RuntimeError, match="merge failed"), fast.generation_mode(pipe, True, True):
        pass
    assert_untouched(pipe, weights)


def test_auto_falls_back_to_the_adapter_when_the_clone_does_not_fit(pipe, monkeypatch):
    adapter = generate(pipe, True, fuse=False)
    weights = snapshot(pipe.unet)

    def out_of_memory(pipe):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(fast, "_fuse", out_of_memory)
    monkeypatch.setattr(fast, "fuse_decision", lambda pipe, fuse=None: (True, "room (simulated)"))
    fast.set_fuse_policy(pipe, "auto")
    try:
        assert np.array_equal(generate(pipe, True), adapter)  # ran unfused
        fast.set_fuse_policy(pipe, "on")  # forced: the error is the server's to report
        with pytest.raises(torch.OutOfMemoryError):
            generate(pipe, True)
    finally:
        fast.set_fuse_policy(pipe, "on")
    assert_untouched(pipe, weights)


def test_fused_output_equals_the_adapters_within_float32_rounding(pipe):
    torch.manual_seed(0)
    inputs = dict(
        sample=torch.randn(1, 4, 8, 8),
        timestep=torch.tensor(999),
        encoder_hidden_states=torch.randn(1, 77, 64),
        added_cond_kwargs={"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)},
    )
    outputs = {}
    with torch.no_grad():
        for fuse in (False, True):
            with fast.generation_mode(pipe, True, fuse=fuse):
                assert fast.fast_fused(pipe.unet) is fuse
                outputs[fuse] = pipe.unet(**inputs).sample
        quality = pipe.unet(**inputs).sample
    relative = ((outputs[True] - outputs[False]).norm() / outputs[False].norm()).item()
    lora_effect = ((outputs[False] - quality).norm() / quality.norm()).item()
    assert relative < 1e-5 and lora_effect > 1e-2, (relative, lora_effect)
    # Whole 8-step images: the same within float32 rounding (pixels in [0, 1]).
    fused, adapter = generate(pipe, True, fuse=True), generate(pipe, True, fuse=False)
    assert np.abs(fused - adapter).max() < 1e-4


def _flops(unet, batch: int) -> int:
    inputs = dict(
        sample=torch.zeros(batch, 4, 16, 16),
        timestep=10,
        encoder_hidden_states=torch.zeros(batch, 77, 64),
        added_cond_kwargs={"text_embeds": torch.zeros(batch, 32),
                           "time_ids": torch.zeros(batch, 6)},
    )  # fmt: skip
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(**inputs)
    return counter.get_total_flops()


def test_a_fused_fast_step_costs_plain_sdxls_flops(pipe):
    with counted_attention(pipe) as plain:
        with fast.generation_mode(pipe, True, fuse=True):
            fused = _flops(pipe.unet, 1)
        with fast.generation_mode(pipe, True, fuse=False):
            adapter = _flops(pipe.unet, 1)
    assert fused == _flops(plain, 1) < adapter  # the side path is gone


def test_fused_fast_calls_never_run_the_compiled_graph(pipe):
    """On ZeroGPU the AOT graph keeps its own copy of the quality weights: a fused call
    (weights merged) must run eager, even with the adapter flags off. A stand-in replaces
    the compile."""
    call = aot.capture_unet_call(pipe, _call())
    compiled_calls = []

    def compiled(*args, **kwargs):
        compiled_calls.append(args[0].shape[0] if args else kwargs["sample"].shape[0])
        return type(pipe.unet).forward(pipe.unet, *args, **kwargs)

    spec = pytree.tree_flatten((call.args, call.kwargs))[1]
    forward = aot.apply_compiled(
        pipe, aot.CompiledUNet(compiled, spec, aot.ShapeRange.for_tiny(), 0.0)
    )
    try:
        generate(pipe, False, steps=2)
        assert compiled_calls == [2, 2] and forward.eager_calls == 0
        generate(pipe, True, fuse=True)
        assert compiled_calls == [2, 2] and forward.eager_calls == 8
        args = (call.args[0][:1], *call.args[1:])  # a fast call's batch: 1
        kwargs = call.kwargs
        with fast.fused_fast_weights(pipe):  # merged, adapter flags off
            assert fast.fast_fused(pipe.unet) and not fast.fast_enabled(pipe)
            assert not forward.covers(args, kwargs)
        assert forward.covers(args, kwargs)  # the same call is covered in quality mode
    finally:
        aot.remove_compiled_forward(pipe)


def test_the_policy_auto_on_off_and_what_refuses_it(pipe, monkeypatch):
    assert fast.fuse_decision(pipe, fuse=False) == (False, "fast_fuse is off")
    assert fast.fuse_decision(pipe, fuse=True) == (True, "fast_fuse is on")
    fast.set_fuse_policy(pipe, "auto")
    try:
        fused, why = fast.fuse_decision(pipe)
        assert not fused and "cpu, not a CUDA device" in why  # auto is off on the CPU
        # On a CUDA device auto needs room for the clone plus the margin.
        need = fast.fuse_backup_bytes(pipe) + fast.FUSE_MARGIN_BYTES
        monkeypatch.setattr(fast, "_weights_device", lambda pipe: torch.device("cuda", 0))
        for available, expected in ((need, True), (need - 1, False)):
            monkeypatch.setattr(fast, "_cuda_bytes_available", lambda device, a=available: a)
            assert fast.fuse_decision(pipe)[0] is expected
        # Offload hooks (accelerate's, here a stand-in) refuse fusing whatever the policy.
        monkeypatch.setattr(pipe.unet, "_hf_hook", object(), raising=False)
        for policy in ("auto", "on"):
            fast.set_fuse_policy(pipe, policy)
            fused, why = fast.fuse_decision(pipe)
            assert not fused and "offload" in why
    finally:
        fast.set_fuse_policy(pipe, "on")
    # The clone's size: every base weight the fast LoRA touches (float32 here).
    layers = fast._fast_peft_layers(pipe.unet)
    assert fast.fuse_backup_bytes(pipe) == sum(
        4 * m.get_base_layer().weight.numel() for m in layers
    )
    with pytest.raises(PhotoMakerInputError, match="fast_fuse"):
        fast.set_fuse_policy(pipe, "always")


def test_float8_storage_is_never_fused(tmp_path):
    from photomaker.loading import enable_fp8_storage

    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path)
    load_fast_lora(pipe, Settings(tiny=True))
    enable_fp8_storage(pipe.unet, torch.float32)  # what --memory fp8 does
    fused, why = fast.fuse_decision(pipe, fuse=True)
    assert not fused and "float8" in why


def test_the_setting_and_its_refusals():
    assert Settings().fast_fuse == "auto"
    assert Settings.from_env({"PHOTOMAKER_FAST_FUSE": "off"}).fast_fuse == "off"
    assert Settings.from_args(["--fast-fuse", "on"], env={}).fast_fuse == "on"
    with pytest.raises(PhotoMakerInputError, match="memory full"):
        Settings(fast_fuse="on", memory="model-offload")
    assert Settings(fast_fuse="auto", memory="group-offload").fast_fuse == "auto"
    with pytest.raises(PhotoMakerInputError, match="not one of"):
        Settings(fast_fuse="yes")


def test_fusing_writes_the_weights_in_place(pipe):
    """Merge, unmerge and restore write into the weights' own storage: a graph that holds
    their addresses (CUDA graphs of a compiled UNet, the AOT graph's user-managed constants)
    sees the merged weights during a fused call and the original ones after it."""

    def addresses():
        return {k: v.data_ptr() for k, v in pipe.unet.state_dict().items()}

    before = addresses()
    with fast.generation_mode(pipe, True, fuse=True):
        assert fast.fast_fused(pipe.unet)
        assert addresses() == before
    assert addresses() == before
