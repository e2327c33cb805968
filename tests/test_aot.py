"""Ahead-of-time compiled UNet (photomaker/aot.py) on the tiny pipeline on the CPU:
AOTInductor output equals eager within 1e-4 (max abs, images in [0, 1]) at two sizes and two
image counts from one dynamic-shape graph; fast mode and failures fall back to eager.

The AOT module takes any ``UNet2DConditionModel``, and its compile time is mostly Inductor's
code generation and the C++ build, per distinct kernel. So the pipeline here is the tiny one
with an even smaller SDXL-shaped UNet (one cross-attention block, one layer, no mid block:
the same kinds of layers — ResNet, transformer with self- and cross-attention, the
``text_time`` added conditioning — with fewer distinct kernels), and one compile (a module
fixture) serves every check: about 30 s of compile instead of about 60 s for the default tiny
UNet on this project's shared 2-core machine. Still marked slow."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from photomaker import aot, fast
from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline
from photomaker.settings import DEFAULT_FAST_LORA
from photomaker.tiny import (
    TINY_ENCODER_CONFIG,
    build_tiny_components,
    write_tiny_checkpoint,
    write_tiny_fast_lora,
)

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
    checkpoint = write_tiny_checkpoint(folder / "small-photomaker-v1.bin", "v1",
                                       unet=components["unet"])
    lora = write_tiny_fast_lora(folder / "small-lightning.safetensors", unet=components["unet"])
    pipe = PhotoMakerStableDiffusionXLPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_photomaker_adapter(str(checkpoint), pm_version="v1",
                                 id_encoder_config=TINY_ENCODER_CONFIG)
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


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aot")
    pipe = small_pipeline(folder, fast_lora=True)
    sizes = [(64, 64, 1), (64, 64, 2), (48, 64, 1), (48, 64, 2)]
    eager = {size: pipe(**_call(*size)).images for size in sizes}
    # The two steps ZeroGPU needs: compile (in the GPU worker), apply (in the main process).
    compiled = aot.compile_unet(
        pipe, _call(), aot.ShapeRange.for_tiny(), package_path=str(folder / "unet.pt2")
    )
    assert pickle.loads(pickle.dumps(compiled.call_spec)) == compiled.call_spec
    assert (folder / "unet.pt2").is_file()
    forward = aot.apply_compiled(pipe, compiled)
    assert forward is not None and pipe.unet.forward is forward
    return pipe, forward, eager


@pytest.mark.slow
def test_compiled_equals_eager_at_two_sizes_and_two_image_counts(compiled):
    pipe, forward, eager = compiled
    for size, expected in eager.items():
        before = forward.compiled_calls
        images = pipe(**_call(*size)).images
        assert forward.compiled_calls == before + 2, size  # both steps ran the graph
        assert np.abs(images - expected).max() <= TOLERANCE, size
    assert forward.eager_calls == 0


@pytest.mark.slow
def test_fast_mode_and_uncovered_sizes_run_eager(compiled):
    pipe, forward, _ = compiled
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
    assert "forward" not in pipe.unet.__dict__


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


def test_the_dynamic_shapes_cover_batch_and_latent_sides(tmp_path):
    pipe = small_pipeline(tmp_path)
    call = aot.capture_unet_call(pipe, _call())
    assert "forward" not in pipe.unet.__dict__  # the capture put the forward back
    specs = aot.dynamic_shapes(pipe.unet, call, aot.ShapeRange.for_tiny())
    assert set(specs["sample"]) == {0, 2, 3}
    assert set(specs["encoder_hidden_states"]) == {0}
    assert set(specs["added_cond_kwargs"]["time_ids"]) == {0}
    assert specs["timestep"] is None and specs["return_dict"] is None
