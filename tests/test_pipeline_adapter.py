"""The doodle: PhotoMaker with a T2I-Adapter, on tiny components, against two references.

* the formula: the plain PhotoMaker pipeline whose UNet gets the adapter's residuals (computed
  here by hand from the sketch) in its down blocks for the first ``int(steps × factor)`` steps;
* diffusers' own ``StableDiffusionXLAdapterPipeline`` when the ID never enters
  (``start_merge_step >= steps``: every step sees the prompt without its trigger word).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import MultiAdapter, StableDiffusionXLAdapterPipeline
from PIL import Image, ImageDraw

from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline
from photomaker.pipeline_adapter import PhotoMakerStableDiffusionXLAdapterPipeline, doodle_image
from photomaker.tiny import (
    TINY_IMAGE_SIZE,
    build_tiny_adapter_pipeline,
    build_tiny_pipeline,
    build_tiny_t2i_adapter,
)
from tests import reference

STEPS = 4
SIZE = TINY_IMAGE_SIZE
PROMPT = "a photo of a woman img wearing a red hat, detailed"


def photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8))


def sketch(size=(SIZE, SIZE)) -> Image.Image:
    """White strokes on black, as the sketch adapter takes them."""
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w // 4, h // 8, 3 * w // 4, 5 * h // 8), outline="white", width=3)
    draw.line((w // 2, 5 * h // 8, w // 2, h - 2), fill="white", width=3)
    return image


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def plain(cache_dir):
    return build_tiny_pipeline("v2", seed=0, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def pipe(plain):
    """The adapter pipeline on the plain pipeline's very models (one copy of the weights)."""
    return PhotoMakerStableDiffusionXLAdapterPipeline.from_photomaker_pipe(
        plain, adapter=build_tiny_t2i_adapter(seed=0)
    )


def generate(pipe, seed=7, **overrides):
    kwargs = dict(
        prompt=PROMPT,
        negative_prompt="blurry",
        input_id_images=[photo(1)],
        id_embeds=torch.randn(1, 512, generator=torch.Generator().manual_seed(0)) * 10,
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        start_merge_step=1,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    kwargs.update(overrides)
    return pipe(**kwargs).images


@pytest.fixture(scope="module")
def plain_images(plain):
    return generate(plain)


def test_shares_the_models_and_the_loaded_photomaker_adapter(plain, pipe):
    assert isinstance(pipe, PhotoMakerStableDiffusionXLPipeline)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2", "id_encoder", "id_fuse_module"):
        assert getattr(pipe, name) is getattr(plain, name)
    assert (pipe.pm_version, pipe.trigger_word, pipe.num_tokens_per_image) == ("v2", "img", 2)
    assert pipe.num_fused_loras == plain.num_fused_loras == 1
    assert "adapter" in pipe.components and "adapter" in pipe._optional_components
    assert "id_fuse_module->adapter->unet" in pipe.model_cpu_offload_seq


def test_without_a_doodle_it_is_the_plain_pipeline(pipe, plain_images):
    """No image, scale 0 or a factor giving no step: exactly the plain images."""
    np.testing.assert_array_equal(generate(pipe), plain_images)
    np.testing.assert_array_equal(
        generate(pipe, image=sketch(), adapter_conditioning_scale=0.0), plain_images
    )
    np.testing.assert_array_equal(
        generate(pipe, image=sketch(), adapter_conditioning_factor=0.2), plain_images
    )


def test_one_sketch_per_prompt_serves_that_prompts_images(pipe):
    """Two prompts, two sketches, two pictures each: each prompt's pictures follow its own
    sketch (refused before: only one sketch or one per picture were taken)."""
    from PIL import ImageOps

    two = dict(prompt=[PROMPT, PROMPT], num_images_per_prompt=2)
    both = generate(pipe, image=[sketch(), ImageOps.flip(sketch())], **two)
    assert both.shape[0] == 4
    first = generate(pipe, image=sketch(), **two)
    np.testing.assert_allclose(both[:2], first[:2], atol=1e-5)
    assert np.abs(both[2:] - first[2:]).max() > 1e-3
    with pytest.raises(ValueError, match="one per prompt, or 4, one per image, not 3"):
        generate(pipe, image=[sketch()] * 3, **two)


def test_a_doodle_changes_the_images(pipe, plain_images):
    images = generate(pipe, image=sketch())
    assert images.shape == plain_images.shape and np.isfinite(images).all()
    assert np.abs(images - plain_images).max() > 1e-3


def test_matches_the_formula(pipe, plain):
    """Residuals = adapter(resized sketch / 255) × scale, one per image and CFG half, added by
    the UNet in its down blocks while i < int(steps × factor): here the first 2 of 4 steps."""
    drawing = sketch((96, 80))  # resized to the output size, as diffusers does (Lanczos)
    scale, factor, images = 0.8, 0.5, 2
    pixels = np.asarray(drawing.resize((SIZE, SIZE), Image.Resampling.LANCZOS), np.float32) / 255
    with torch.no_grad():
        features = pipe.adapter(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    residuals = [torch.cat([f * scale] * images * 2) for f in features]  # CFG halves, 2 images
    last_step = int(STEPS * factor)
    calls = []

    def add_residuals(module, args, kwargs):
        if len(calls) < last_step:
            kwargs["down_intrablock_additional_residuals"] = [r.clone() for r in residuals]
        calls.append(len(calls))
        return args, kwargs

    handle = plain.unet.register_forward_pre_hook(add_residuals, with_kwargs=True)
    try:
        expected = generate(plain, num_images_per_prompt=images)
    finally:
        handle.remove()
    assert len(calls) == STEPS
    actual = generate(
        pipe,
        image=drawing,
        adapter_conditioning_scale=scale,
        adapter_conditioning_factor=factor,
        num_images_per_prompt=images,
    )
    reference.assert_close(actual, expected)


def test_matches_diffusers_adapter_pipeline_when_the_id_never_enters(pipe):
    """start_merge_step >= steps: every step sees the prompt without the trigger word, which is
    diffusers' StableDiffusionXLAdapterPipeline given that prompt."""
    diffusers_pipe = StableDiffusionXLAdapterPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2,
        unet=pipe.unet,
        adapter=pipe.adapter,
        scheduler=pipe.scheduler,
    )
    diffusers_pipe.set_progress_bar_config(disable=True)
    knobs = dict(image=sketch(), adapter_conditioning_scale=0.7, adapter_conditioning_factor=0.75)
    expected = diffusers_pipe(
        prompt=pipe.text_only_prompt(PROMPT),
        negative_prompt="blurry",
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
        **knobs,
    ).images
    actual = generate(pipe, start_merge_step=STEPS, height=None, width=None, **knobs)
    assert actual.shape == (1, SIZE, SIZE, 3)  # the size came from the sketch
    reference.assert_close(actual, expected)


def test_multi_adapter_weighs_each_adapter(plain, plain_images):
    multi = PhotoMakerStableDiffusionXLAdapterPipeline.from_photomaker_pipe(
        plain, adapter=[build_tiny_t2i_adapter(seed=0), build_tiny_t2i_adapter(seed=1)]
    )
    assert isinstance(multi.adapter, MultiAdapter)
    images = generate(multi, image=[sketch(), sketch()], adapter_conditioning_scale=[0.5, 0.5])
    assert np.abs(images - plain_images).max() > 1e-3
    with pytest.raises(ValueError, match="one image per adapter"):
        generate(multi, image=sketch())


def test_the_tiny_builder_and_build_pipeline_give_the_same_doodle(cache_dir, pipe):
    from photomaker.loading import build_pipeline
    from photomaker.settings import Settings

    built = build_tiny_adapter_pipeline("v2", seed=0, cache_dir=cache_dir)
    loaded = build_pipeline(Settings(tiny=True))
    assert isinstance(loaded, PhotoMakerStableDiffusionXLAdapterPipeline)
    for other in (built, loaded):
        for mine, theirs in zip(
            pipe.adapter.state_dict().values(), other.adapter.state_dict().values(), strict=True
        ):
            assert torch.equal(mine, theirs)
    np.testing.assert_array_equal(
        generate(built, image=sketch(), adapter_conditioning_factor=0.5),
        generate(pipe, image=sketch(), adapter_conditioning_factor=0.5),
    )


def test_doodle_off_builds_the_plain_pipeline():
    from photomaker.loading import build_pipeline
    from photomaker.settings import Settings

    for off in ("none", "None", ""):
        settings = Settings(tiny=True, pm_version="v1", doodle_adapter=off)
        assert settings.doodle_adapter_location is None
    pipe = build_pipeline(Settings(tiny=True, pm_version="v1", doodle_adapter="none"))
    assert type(pipe) is PhotoMakerStableDiffusionXLPipeline


def test_a_pipeline_without_adapter_refuses_a_doodle(plain):
    bare = PhotoMakerStableDiffusionXLAdapterPipeline.from_photomaker_pipe(plain, adapter=None)
    with pytest.raises(ValueError, match="no T2I-Adapter"):
        bare(prompt=PROMPT, input_id_images=[photo(1)], image=sketch())


def test_real_loading_reads_a_saved_adapter_folder(tmp_path):
    """load_model on a diffusers folder; fp16 falls back from the missing fp16 variant."""
    from diffusers import T2IAdapter

    from photomaker.errors import PhotoMakerInputError
    from photomaker.loading import load_doodle_adapter
    from photomaker.settings import Settings

    build_tiny_t2i_adapter(seed=3).save_pretrained(tmp_path / "adapter")
    settings = Settings(doodle_adapter=str(tmp_path / "adapter"), device="cpu", dtype="float16")
    adapter = load_doodle_adapter(settings)
    assert isinstance(adapter, T2IAdapter) and adapter.dtype == torch.float16
    expected = build_tiny_t2i_adapter(seed=3).state_dict()
    for key, value in adapter.state_dict().items():
        assert torch.equal(value, expected[key].half())
    with pytest.raises(PhotoMakerInputError, match="doodle adapter"):
        load_doodle_adapter(settings.replace(doodle_adapter=str(tmp_path / "missing")))


# --------------------------------------------------------------------------- doodle_image


def test_doodle_image_reads_strokes_on_a_transparent_canvas():
    canvas = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).rectangle((20, 20, 99, 79), fill=(30, 80, 200, 255))  # any colour
    out = doodle_image(canvas, width=64, height=48)
    assert out.mode == "RGB" and out.size == (64, 48)
    pixels = np.asarray(out)
    assert set(np.unique(pixels)) == {0, 255}
    assert pixels[24, 16].tolist() == [255, 255, 255]  # inside the stroke, scaled
    assert pixels[24, 56].tolist() == [0, 0, 0]


def test_doodle_image_reads_dark_lines_on_paper_and_says_when_blank():
    paper = Image.new("RGB", (64, 64), "white")
    assert doodle_image(paper, 64, 64) is None
    assert doodle_image(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), 64, 64) is None
    ImageDraw.Draw(paper).line((0, 32, 63, 32), fill="black", width=4)
    out = np.asarray(doodle_image(np.asarray(paper), 32, 32))
    assert out[16].min() == 255 and out[0].max() == 0
    # A Sketchpad composite with an opaque white background reads the same way.
    np.testing.assert_array_equal(np.asarray(doodle_image(paper.convert("RGBA"), 32, 32)), out)


def test_doodle_image_reads_light_lines_on_dark_paper_as_the_adapter_does():
    paper = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(paper).rectangle((8, 8, 40, 30), outline="black", width=3)
    ImageDraw.Draw(paper).rectangle((0, 50, 63, 63), fill="black")  # a filled band at the edge
    dark_on_light = np.asarray(doodle_image(paper, 32, 32))
    inverted = Image.fromarray(255 - np.asarray(paper))  # white strokes on black
    np.testing.assert_array_equal(np.asarray(doodle_image(inverted, 32, 32)), dark_on_light)
    assert doodle_image(Image.new("RGB", (64, 64), "black"), 32, 32) is None
