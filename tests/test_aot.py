"""Ahead-of-time compiled UNet (photomaker/aot.py) on the tiny pipeline on the CPU:
AOTInductor output equals eager within 1e-4 (max abs, images in [0, 1]) at two sizes and two
image counts from one dynamic-shape graph; fast mode and failures fall back to eager.

The AOT module takes any ``UNet2DConditionModel``, and its compile time is mostly Inductor's
code generation and the C++ build, per distinct kernel. So the pipeline here is the tiny one
with an even smaller SDXL-shaped UNet (one cross-attention block, one layer, no mid block:
the same kinds of layers — ResNet, transformer with self- and cross-attention, the
``text_time`` added conditioning — with fewer distinct kernels), and one compile (a module
fixture) serves every check: about 30 s of compile instead of about 60 s for the default tiny
UNet on this project's shared 2-core machine. Still marked slow.

That one compile is the app's own start-up path: ``Settings(aot=True)`` through
``loading.build_service`` (the small pipeline standing in for the tiny one), which captures
the example call built from the parameter table's defaults and runs ``aot.compile_unet`` then
``aot.apply_compiled``, the two steps ZeroGPU splits between its GPU worker and the main
process (the ZeroGPU split itself: tests/test_zerogpu.py). So the checks below are also
checks of what the app serves."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from photomaker import aot, fast, loading, tiny
from photomaker.errors import PhotoMakerInputError
from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline
from photomaker.service import GenerationRequest
from photomaker.settings import DEFAULT_FAST_LORA, Settings
from photomaker.tiny import (
    TINY_ENCODER_CONFIG,
    build_tiny_components,
    write_tiny_checkpoint,
    write_tiny_fast_lora,
)
from photomaker.web.handlers import AOT_FAST_NOTE, FAST, QUALITY, AppHandlers

TOLERANCE = 1e-4
PHOTO = Image.new("RGB", (64, 64), (150, 110, 90))


def small_pipeline(folder, fast_lora: bool = False) -> PhotoMakerStableDiffusionXLPipeline:
    """The tiny pipeline (text encoders, VAE, ID encoder) with a one-block UNet: latents are
    not downsampled, so any latent side on the 8 grid runs. Its PhotoMaker checkpoint and
    (``fast_lora``) its distillation LoRA are written in the released formats for this UNet
    and loaded through the same paths as the released files."""
    from diffusers import UNet2DConditionModel

    components = build_tiny_components(0)
    torch.manual_seed(0)
    components["unet"] = UNet2DConditionModel(
        block_out_channels=(32,),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        mid_block_type=None,
        attention_head_dim=2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=1,
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
        norm_num_groups=16,
    ).eval()
    checkpoint = write_tiny_checkpoint(
        folder / "small-photomaker-v1.bin", "v1", unet=components["unet"]
    )
    lora = write_tiny_fast_lora(folder / "small-lightning.safetensors", unet=components["unet"])
    pipe = PhotoMakerStableDiffusionXLPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_photomaker_adapter(
        str(checkpoint), pm_version="v1", id_encoder_config=TINY_ENCODER_CONFIG
    )
    if fast_lora:
        fast.attach_fast_lora(pipe, str(lora), mode=fast.mode_for(DEFAULT_FAST_LORA))
    return pipe


def _call(height: int = 64, width: int = 64, images: int = 1) -> dict:
    return dict(
        prompt="a photo of a man img",
        input_id_images=[PHOTO],
        height=height,
        width=width,
        num_images_per_prompt=images,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    )


#: The app's settings for these tests: tiny, V1 (no face analysis), AOT on; the small
#: pipeline brings its own fast LoRA, and the doodle and style image are off.
AOT_SETTINGS = Settings(tiny=True, aot=True, pm_version="v1", fast_lora="none",
                        doodle_adapter="none", style_adapter="none", aot_cache="none")  # fmt: skip


def app_service(settings: Settings, pipe=None):
    """``loading.build_service(settings)``, the app's start-up, on ``pipe`` in place of the
    tiny pipeline when given."""
    if pipe is None:
        return loading.build_service(settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny, "build_tiny_pipeline", lambda **kwargs: pipe)
        return loading.build_service(settings)


@pytest.fixture(scope="module")
def aot_cache(tmp_path_factory):
    """The compiled-UNet cache of the one compile below (``--aot-cache``)."""
    return tmp_path_factory.mktemp("aot-cache")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, aot_cache):
    folder = tmp_path_factory.mktemp("aot")
    pipe = small_pipeline(folder, fast_lora=True)
    sizes = [(64, 64, 1), (64, 64, 2), (48, 64, 1), (48, 64, 2)]
    eager = {size: pipe(**_call(*size)).images for size in sizes}
    service = app_service(AOT_SETTINGS.replace(aot_cache=str(aot_cache)), pipe)  # the one compile
    forward = aot.compiled_forward_of(pipe)
    assert service.pipe is pipe and forward is not None and pipe.unet.forward is forward
    assert forward.compiled_calls == forward.eager_calls == 0
    # What ZeroGPU's worker sends back besides the compiled model must pickle.
    assert pickle.loads(pickle.dumps(forward._spec)) == forward._spec
    return pipe, forward, eager, service


@pytest.mark.slow
def test_compiled_equals_eager_at_two_sizes_and_two_image_counts(compiled):
    pipe, forward, eager, _ = compiled
    for size, expected in eager.items():
        before = forward.compiled_calls
        images = pipe(**_call(*size)).images
        assert forward.compiled_calls == before + 2, size  # both steps ran the graph
        assert np.abs(images - expected).max() <= TOLERANCE, size
    assert forward.eager_calls == 0


@pytest.mark.slow
def test_fast_mode_and_uncovered_sizes_run_eager(compiled):
    pipe, forward, _, _ = compiled
    eager_before = forward.eager_calls
    with fast.generation_mode(pipe, True) as overrides:
        pipe(**{**_call(), **overrides})
    assert forward.eager_calls == eager_before + fast.fast_mode_of(pipe).steps
    compiled_before = forward.compiled_calls
    pipe(**_call(96, 96))  # latent 48² is within range; 160 px (latent 80) is not
    assert forward.compiled_calls == compiled_before + 2
    pipe(**_call(160, 64))
    assert forward.eager_calls == eager_before + fast.fast_mode_of(pipe).steps + 2
    aot.remove_compiled_forward(pipe)
    assert "forward" not in pipe.unet.__dict__ and aot.compiled_forward_of(pipe) is None
    pipe.unet.forward = forward  # back, for the other tests on this fixture


@pytest.mark.slow
def test_the_compiled_graph_runs_on_the_unets_own_weights(compiled):
    """Off ZeroGPU the package holds no weights: it runs on the UNet's parameters themselves
    (no second copy in memory), so an in-place change of a weight reaches it."""
    pipe, forward, _, _ = compiled
    call = aot.capture_unet_call(pipe, _call())
    weight = pipe.unet.conv_in.weight
    original = weight.detach().clone()

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            ours = forward(*call.args, **call.kwargs)[0]
            eager = type(pipe.unet).forward(pipe.unet, *call.args, **call.kwargs)[0]
        return ours, eager

    before, _ = both()
    try:
        with torch.no_grad():
            weight.mul_(3.0)
        after, eager = both()
        assert (after - eager).abs().max() <= TOLERANCE
        assert (after - before).abs().max() > 100 * TOLERANCE
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert torch.equal(both()[0], before)


def export_forbidden(*args, **kwargs):
    raise AssertionError("the UNet was exported: the cache was not used")


@pytest.mark.slow
def test_the_next_start_loads_the_compiled_unet_from_the_cache(
    compiled, aot_cache, tmp_path, monkeypatch, caplog
):
    """The start-up compile kept its package in the cache (one entry, with an about.json);
    the next start with the same models and settings loads it — no export, no compile —
    and its images are eager's."""
    _, _, eager, _ = compiled
    (entry,) = [p for p in aot_cache.iterdir() if not p.name.startswith(".")]
    assert (entry / "unet.pt2").is_file() and "torch" in (entry / "about.json").read_text()
    pipe = small_pipeline(tmp_path, fast_lora=True)  # a new process's pipeline, as built
    monkeypatch.setattr(aot, "export_unet", export_forbidden)
    with caplog.at_level(logging.INFO):
        app_service(AOT_SETTINGS.replace(aot_cache=str(aot_cache)), pipe)
    assert "compiled UNet loaded from the cache" in caplog.text
    forward = aot.compiled_forward_of(pipe)
    images = pipe(**_call(64, 64, 1)).images
    assert forward.compiled_calls == 2 and forward.eager_calls == 0
    assert np.abs(images - eager[(64, 64, 1)]).max() <= TOLERANCE


@pytest.mark.slow
def test_a_damaged_cache_entry_is_dropped_not_trusted(compiled, aot_cache, tmp_path, caplog,
                                                      monkeypatch):  # fmt: skip
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(aot_cache, cache)
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    (entry / "unet.pt2").write_bytes(b"not a package")
    pipe = small_pipeline(tmp_path, fast_lora=True)

    def export_stand_in(*args, **kwargs):
        raise RuntimeError("export stand-in")  # a real compile is the fixture's

    monkeypatch.setattr(aot, "export_unet", export_stand_in)
    with caplog.at_level(logging.INFO):
        forward = aot.compile_unet_ahead_of_time(
            pipe,
            loading.aot_example_call(pipe, AOT_SETTINGS),
            aot.ShapeRange.for_tiny(),
            cache=cache,
        )
    assert forward is None  # the entry dropped, the compile tried (and, here, failed)
    assert "could not be used" in caplog.text and "export stand-in" in caplog.text
    assert not entry.exists() and not list(cache.iterdir())


def test_the_cache_key_follows_what_the_compiled_code_depends_on(tmp_path):
    pipe = small_pipeline(tmp_path)
    call = aot.capture_unet_call(pipe, _call())
    key = aot.package_key(pipe.unet, call, aot.ShapeRange.for_tiny(), "cpu")
    assert key == aot.package_key(pipe.unet, call, aot.ShapeRange.for_tiny(), "cpu")
    assert key != aot.package_key(pipe.unet, call, aot.ShapeRange(batch=(1, 4), latent=(16, 64)),
                                  "cpu")  # fmt: skip
    bigger = aot.capture_unet_call(pipe, _call(images=2))
    assert key != aot.package_key(pipe.unet, bigger, aot.ShapeRange.for_tiny(), "cpu")
    with_lora = small_pipeline(tmp_path / "other", fast_lora=True)  # more parameters
    call = aot.capture_unet_call(with_lora, _call())
    assert key != aot.package_key(with_lora.unet, call, aot.ShapeRange.for_tiny(), "cpu")


def test_the_cache_keeps_the_newest_entries_and_nothing_half_built(tmp_path):
    import os

    cache = aot.PackageCache(tmp_path)
    for i in range(aot.CACHE_ENTRIES + 2):
        with cache.adding(f"key{i}", {"i": i}) as package:
            package.write_bytes(b"code")
        os.utime(tmp_path / f"key{i}", (1000 + i, 1000 + i))
    assert cache.find("key0") is None and cache.find("key1") is None
    assert cache.find("key2") is not None  # used now: the newest
    with pytest.raises(RuntimeError), cache.adding("broken", {}) as package:
        package.write_bytes(b"half")
        raise RuntimeError("compile failed")
    assert cache.find("broken") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"key{i}" for i in range(2, 6)]


def test_the_cache_folder_setting(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    assert Settings().aot_cache_folder() == tmp_path / "hf" / "photomaker" / "aot"
    assert Settings(aot_cache="none").aot_cache_folder() is None
    assert Settings(aot_cache="~/x").aot_cache_folder() == Path("~/x").expanduser()
    assert Settings.from_env({"PHOTOMAKER_AOT_CACHE": "none"}).aot_cache_folder() is None


def generation(service, **changes):
    request = dict(photos=[PHOTO], prompt="a photo of a man img", steps=3, num_outputs=2,
                   seed=11, randomize_seed=False)  # fmt: skip
    return service.generate(GenerationRequest(**{**request, **changes}))


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in result.images])


@pytest.mark.slow
def test_the_app_starts_with_the_compiled_unet_and_its_generations_use_it(compiled):
    """The service the app built serves a request with the compiled graph (both CFG halves
    of every step), and the images are eager's: within the float tolerance above, which is
    at most one level of the 8-bit images."""
    pipe, forward, _, service = compiled
    assert service.aot_compiled
    before = forward.compiled_calls, forward.eager_calls
    result = generation(service)
    assert forward.compiled_calls == before[0] + 3  # 3 steps, CFG in one batch of 4
    assert forward.eager_calls == before[1]
    aot.remove_compiled_forward(pipe)
    try:
        assert not service.aot_compiled
        expected = generation(service)
    finally:
        pipe.unet.forward = forward
    assert np.abs(pixels(result) - pixels(expected)).max() <= 1
    # The page says fast mode runs the uncompiled UNet (the compiled graph is Quality's).
    handlers = AppHandlers(service, AOT_SETTINGS)
    assert AOT_FAST_NOTE in handlers.mode_note(FAST)
    assert AOT_FAST_NOTE not in handlers.mode_note(QUALITY)


def test_the_app_starts_eager_when_the_compile_fails(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(aot, "compile_unet", broken)
    with caplog.at_level(logging.INFO):
        service = app_service(AOT_SETTINGS)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("runs eager" in r.getMessage() and "no C++ compiler" in r.getMessage()
               for r in warnings)  # fmt: skip
    assert "ahead-of-time compilation gave up" in caplog.text
    assert aot.compiled_forward_of(service.pipe) is None and not service.aot_compiled
    assert "forward" not in service.pipe.unet.__dict__
    result = generation(service, num_outputs=1, steps=2)
    assert len(result.images) == 1


def test_the_example_call_is_the_tables_typical_request(tmp_path):
    from photomaker.params import BY_NAME, default
    from photomaker.service.validation import size_for

    pipe = small_pipeline(tmp_path)
    call = loading.aot_example_call(pipe, AOT_SETTINGS.replace(trigger_word="img"))
    assert (call["width"], call["height"]) == size_for(default("aspect_ratio"), tiny=True)
    assert call["num_inference_steps"] == default("steps")
    assert call["guidance_scale"] == default("guidance_scale") > 1  # CFG on
    assert call["num_images_per_prompt"] == 1
    assert call["prompt"] == BY_NAME["prompt"].example
    captured = aot.capture_unet_call(pipe, call)
    assert captured.args[0].shape[0] == 2  # one image, both CFG halves


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(compile=True), "choose one"),
        (dict(memory="model-offload"), "needs memory full"),
        (dict(low_vram=True), "needs memory full"),
        (dict(memory="fp8"), "needs memory full"),
    ],
)
def test_settings_refuse_aot_with_compile_or_a_memory_mode(changes, words):
    with pytest.raises(PhotoMakerInputError, match=words):
        Settings(aot=True, **changes)


def test_aot_is_off_by_default_and_a_flag_or_variable_turns_it_on():
    assert Settings().aot is False
    assert Settings.from_args(["--aot"], env={}).aot is True
    assert Settings.from_env({"PHOTOMAKER_AOT": "1"}).aot is True
    assert Settings.from_args(["--no-aot"], env={"PHOTOMAKER_AOT": "1"}).aot is False


def test_a_failed_compile_leaves_the_pipeline_eager(tmp_path, monkeypatch, caplog):
    pipe = small_pipeline(tmp_path)
    expected = pipe(**_call()).images

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(aot, "compile_exported", broken)
    with caplog.at_level(logging.WARNING, logger="photomaker.aot"):
        assert aot.compile_unet_ahead_of_time(pipe, _call(), aot.ShapeRange.for_tiny()) is None
    assert "runs eager" in caplog.text and "no C++ compiler" in caplog.text
    assert "forward" not in pipe.unet.__dict__
    assert np.array_equal(pipe(**_call()).images, expected)


def test_a_package_that_crashes_its_loader_is_an_error_not_a_crash(tmp_path, monkeypatch):
    """The compiled package is loaded first in a child process: a loader that dies there (a
    segfault was seen on a GPU) or refuses the file becomes an error the app turns into a
    warning and an eager UNet."""
    bad = tmp_path / "unet.pt2"
    bad.write_bytes(b"not a package")
    with pytest.raises(RuntimeError, match="failed in a test process \\(exit status 1\\)"):
        aot.check_package_loads(str(bad), "cpu")
    # A device without an index is taken as it is ("cuda" alone would fail set_device): the
    # child gets as far as the load.
    with pytest.raises(RuntimeError, match="exit status 1") as failed:
        aot.check_package_loads(str(bad), "cuda")
    assert "index" not in str(failed.value) and "CUDA" not in str(failed.value)
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    monkeypatch.setattr(aot.sys, "executable", str(crashing))
    with pytest.raises(RuntimeError, match="killed by signal 11"):
        aot.check_package_loads(str(bad), "cpu")


def test_the_package_is_built_the_way_zerogpu_builds_it():
    """Off ZeroGPU the compile uses spaces.aoti_compile's settings: no weights in the library
    or the package, no constant folding, and the on-disk flag the loader needs."""
    configs = aot.weightless_package_configs()
    assert configs["aot_inductor.package_constants_in_so"] is False
    assert configs["joint_graph_constant_folding"] is False
    assert configs["always_keep_tensor_constants"] is True
    assert configs["aot_inductor.package"] is True
    # torch >= 2.10 (spaces 0.51 sets the same; older torch takes package_constants_on_disk)
    assert configs["aot_inductor.package_constants_on_disk_format"] == "pickle_weights"
    assert len(configs) == 5


def test_the_dynamic_shapes_cover_batch_and_latent_sides(tmp_path):
    pipe = small_pipeline(tmp_path)
    call = aot.capture_unet_call(pipe, _call())
    assert "forward" not in pipe.unet.__dict__  # the capture put the forward back
    specs = aot.dynamic_shapes(pipe.unet, call, aot.ShapeRange.for_tiny())
    assert set(specs["sample"]) == {0, 2, 3}
    assert set(specs["encoder_hidden_states"]) == {0}
    assert set(specs["added_cond_kwargs"]["time_ids"]) == {0}
    assert specs["timestep"] is None and specs["return_dict"] is None
