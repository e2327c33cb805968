"""A style image through diffusers' IP-Adapter machinery, on the tiny pipeline.

The tiny IP-Adapter is written in the released layout (``h94/IP-Adapter``: an
``image_encoder`` folder and ``ip-adapter_sdxl.bin`` with ``image_proj`` / ``ip_adapter``
entries) and loaded with ``load_ip_adapter``, as the official V2 script does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from photomaker.tiny import TINY_IMAGE_SIZE, build_tiny_pipeline, write_tiny_ip_adapter

STEPS = 2


def picture(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def generate(pipe, **overrides):
    kwargs = dict(
        prompt="a photo of a woman img in a garden",
        negative_prompt="blurry",
        input_id_images=[picture(1)],
        num_inference_steps=STEPS,
        height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE,
        start_merge_step=0,  # step 0 text-only, step 1 with the ID
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    )
    kwargs.update(overrides)
    return pipe(**kwargs).images


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """The tiny pipeline with the IP-Adapter loaded, and its images from before loading."""
    folder = tmp_path_factory.mktemp("ip")
    pipe = build_tiny_pipeline("v1", seed=0, cache_dir=folder)
    before = generate(pipe)
    write_tiny_ip_adapter(folder / "IP-Adapter", unet=pipe.unet, seed=0)
    pipe.load_ip_adapter(
        str(folder / "IP-Adapter"), subfolder="sdxl_models", weight_name="ip-adapter_sdxl.bin"
    )
    return pipe, before


@pytest.fixture(scope="module")
def pipe(loaded):
    return loaded[0]


@pytest.fixture(scope="module")
def before(loaded):
    return loaded[1]


def test_load_ip_adapter_registers_the_image_encoder(pipe):
    assert pipe.components["image_encoder"] is pipe.image_encoder is not None
    assert pipe.feature_extractor is not None
    assert "image_encoder" in pipe.model_cpu_offload_seq.split("->")


def test_a_style_image_changes_the_images_in_both_phases(pipe, before):
    seen = []

    def record(module, args, kwargs):
        seen.append("image_embeds" in kwargs["added_cond_kwargs"])

    pipe.set_ip_adapter_scale(0.8)
    hook = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        styled = generate(pipe, ip_adapter_image=picture(2))
    finally:
        hook.remove()
    assert seen == [True] * STEPS  # the text-only step and the ID step
    assert np.abs(styled - before).max() > 1e-3
    other = generate(pipe, ip_adapter_image=picture(3))
    assert np.abs(styled - other).max() > 1e-4
    np.testing.assert_array_equal(generate(pipe, ip_adapter_image=picture(2)), styled)


def test_scale_zero_and_unloading_give_todays_images(pipe, before):
    pipe.set_ip_adapter_scale(0.0)
    np.testing.assert_allclose(generate(pipe, ip_adapter_image=picture(2)), before, atol=1e-6)
    pipe.unload_ip_adapter()
    np.testing.assert_array_equal(generate(pipe), before)
