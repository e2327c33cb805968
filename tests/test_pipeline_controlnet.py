"""PhotoMaker with ControlNet(s), on tiny components, against two references.

* diffusers' own ``StableDiffusionXLControlNetPipeline`` when the ID never enters
  (``start_merge_step >= steps``);
* the formula after the merge step: the plain PhotoMaker pipeline whose UNet gets, at each
  kept step, the residuals of the ControlNet run on the *text-only* prompt embedding (as the
  reference package does), the step's pooled embedding and time ids, and the control image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLControlNetPipeline
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline
from photomaker.pipeline_controlnet import (
    PhotoMakerStableDiffusionXLControlNetPipeline,
    control_keep,
)
from photomaker.tiny import (
    TINY_IMAGE_SIZE,
    build_tiny_controlnet,
    build_tiny_controlnet_pipeline,
    build_tiny_pipeline,
)
from tests import reference

STEPS = 4
SIZE = TINY_IMAGE_SIZE
PROMPT = "a photo of a man img in a garden"


def picture(seed: int, size=(SIZE, SIZE)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def plain(cache_dir):
    return build_tiny_pipeline("v1", seed=0, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def pipe(plain):
    """The ControlNet pipeline on the plain pipeline's very models."""
    return PhotoMakerStableDiffusionXLControlNetPipeline.from_photomaker_pipe(
        plain, controlnet=build_tiny_controlnet(seed=0)
    )


def generate(pipe, seed=7, **overrides):
    kwargs = dict(
        prompt=PROMPT,
        negative_prompt="blurry",
        input_id_images=[picture(1, (80, 96))],
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


def test_keep_rule_is_diffusers():
    assert control_keep(4, [0.0], [1.0]) == [[1.0]] * 4
    assert control_keep(4, [0.0, 0.5], [0.75, 1.0]) == [
        [1.0, 0.0],
        [1.0, 0.0],
        [1.0, 1.0],
        [0.0, 1.0],
    ]


def test_without_control_it_is_the_plain_pipeline(pipe, plain_images):
    """No image, scale 0, or a guidance window with no step: exactly the plain images."""
    assert "controlnet" in pipe.components
    np.testing.assert_array_equal(generate(pipe), plain_images)
    control = picture(5)
    np.testing.assert_array_equal(
        generate(pipe, image=control, controlnet_conditioning_scale=0.0), plain_images
    )
    np.testing.assert_array_equal(
        generate(pipe, image=control, control_guidance_end=0.1), plain_images
    )


def test_a_control_image_changes_the_images(pipe, plain_images):
    images = generate(pipe, image=picture(5))
    assert images.shape == plain_images.shape and np.isfinite(images).all()
    assert np.abs(images - plain_images).max() > 1e-3
    assert np.abs(images - generate(pipe, image=picture(6))).max() > 1e-3


def test_one_control_image_per_prompt_as_in_diffusers(pipe):
    """Two prompts, two control images, two pictures each: each prompt's pictures follow its
    own image (refused before: the check saw one placeholder prompt)."""
    two = dict(prompt=[PROMPT, PROMPT], num_images_per_prompt=2)
    both = generate(pipe, image=[picture(5), picture(6)], **two)
    assert both.shape[0] == 4
    first = generate(pipe, image=picture(5), **two)
    np.testing.assert_allclose(both[:2], first[:2], atol=1e-5)
    assert np.abs(both[2:] - first[2:]).max() > 1e-3
    with pytest.raises(ValueError, match="image batch size: 3, prompt batch size: 2"):
        generate(pipe, image=[picture(5)] * 3, **two)


def test_matches_diffusers_controlnet_pipeline_when_the_id_never_enters(pipe):
    diffusers_pipe = StableDiffusionXLControlNetPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2,
        unet=pipe.unet,
        controlnet=pipe.controlnet,
        scheduler=pipe.scheduler,
        add_watermarker=False,
    )
    diffusers_pipe.set_progress_bar_config(disable=True)
    knobs = dict(
        image=picture(5, (72, 80)),  # sizes the output: 72×80 rounded down to 72×80 (factor 2)
        controlnet_conditioning_scale=0.8,
        control_guidance_start=0.25,
        control_guidance_end=1.0,
    )
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
    assert actual.shape == (1, 80, 72, 3)
    reference.assert_close(actual, expected)


def test_matches_the_formula_after_the_merge_step(pipe, plain):
    """ControlNet inputs: the text-only prompt (CFG halves), the step's pooled embedding and
    time ids, the control image / 255 for both halves; scale × keep; residuals to the UNet."""
    control, scale, end = picture(5), 0.9, 0.75  # kept at steps 0, 1, 2 of 4
    pixels = np.asarray(control, np.float32) / 255
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    image = torch.cat([image, image])  # CFG halves
    with torch.no_grad():
        text_only = plain.encode_prompt(
            plain.text_only_prompt(PROMPT), negative_prompt="blurry", device="cpu"
        )
    text_embeds = torch.cat([text_only[1], text_only[0]])  # negative first
    keep = [1.0 if (i + 1) / STEPS <= end else 0.0 for i in range(STEPS)]
    calls = []

    def add_residuals(module, args, kwargs):
        i = len(calls)
        calls.append(i)
        if keep[i]:
            down, mid = pipe.controlnet(
                args[0],
                args[1],
                encoder_hidden_states=text_embeds,
                controlnet_cond=image,
                conditioning_scale=scale * keep[i],
                added_cond_kwargs=kwargs["added_cond_kwargs"],
                return_dict=False,
            )
            kwargs["down_block_additional_residuals"] = down
            kwargs["mid_block_additional_residual"] = mid
        return args, kwargs

    handle = plain.unet.register_forward_pre_hook(add_residuals, with_kwargs=True)
    try:
        expected = generate(plain)
    finally:
        handle.remove()
    assert len(calls) == STEPS
    actual = generate(
        pipe, image=control, controlnet_conditioning_scale=scale, control_guidance_end=end
    )
    reference.assert_close(actual, expected)


def test_multi_controlnet_runs_and_checks_its_inputs(cache_dir, plain_images):
    multi = build_tiny_controlnet_pipeline("v1", seed=0, cache_dir=cache_dir, num_controlnets=2)
    assert isinstance(multi.controlnet, MultiControlNetModel) and len(multi.controlnet.nets) == 2
    images = generate(
        multi,
        image=[picture(5), picture(6)],
        controlnet_conditioning_scale=[0.7, 0.4],
        control_guidance_end=[1.0, 0.5],
        num_images_per_prompt=2,
    )
    assert images.shape == (2, SIZE, SIZE, 3) and np.isfinite(images).all()
    assert np.abs(images[:1] - plain_images).max() > 1e-3
    with pytest.raises(TypeError, match="image"):
        generate(multi, image=picture(5))
    with pytest.raises(ValueError, match="(?i)control.guidance"):
        generate(
            multi,
            image=[picture(5), picture(6)],
            control_guidance_start=[0.5, 0.9],
            control_guidance_end=[0.5, 1.0],
        )


def test_guess_mode_runs_the_controlnet_on_the_conditional_half(pipe):
    control = picture(5)
    guessed = generate(pipe, image=control, guess_mode=True)
    assert np.isfinite(guessed).all()
    assert np.abs(guessed - generate(pipe, image=control)).max() > 1e-4


def test_build_pipeline_with_a_controlnet(tmp_path):
    from diffusers import ControlNetModel

    from photomaker.loading import build_pipeline, load_controlnet
    from photomaker.settings import Settings

    pipe = build_pipeline(Settings(tiny=True, pm_version="v1", controlnet="tiny"))
    assert isinstance(pipe, PhotoMakerStableDiffusionXLControlNetPipeline)
    assert isinstance(pipe, PhotoMakerStableDiffusionXLPipeline)
    # The real loader on a ControlNet saved the diffusers way (no fp16 variant: falls back).
    build_tiny_controlnet(seed=2).save_pretrained(tmp_path / "controlnet")
    settings = Settings(controlnet=str(tmp_path / "controlnet"), device="cpu", dtype="bfloat16")
    controlnet = load_controlnet(settings)
    assert isinstance(controlnet, ControlNetModel) and controlnet.dtype == torch.bfloat16
