"""What diffusers expects of any pipeline, held against all three PhotoMaker pipelines.

Tiny random components (:mod:`photomaker.tiny`), two steps: the images are noise, what is
checked is that the pipelines behave as diffusers' own do — an explicit, documented
signature; output types that agree; a batch of prompts that gives each prompt's images;
callbacks; save/load; components; VAE slicing and tiling; model offload; swapped schedulers;
``encode_prompt`` on its own. The Adapter and ControlNet pipelines are called with their
structure input, so their control path runs in every check.

The three pipelines share one set of models (``from_photomaker_pipe``); a test that changes
shared state (a scheduler, VAE slicing, offload hooks) puts it back before it returns.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionXLPipeline,
)
from PIL import Image, ImageDraw
from safetensors import safe_open

from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline
from photomaker.pipeline_adapter import PhotoMakerStableDiffusionXLAdapterPipeline
from photomaker.pipeline_controlnet import PhotoMakerStableDiffusionXLControlNetPipeline
from photomaker.tiny import (
    TINY_ENCODER_CONFIG,
    TINY_IMAGE_SIZE,
    build_tiny_controlnet,
    build_tiny_pipeline,
    build_tiny_t2i_adapter,
)

STEPS = 2
SIZE = TINY_IMAGE_SIZE // 2  # 32 px: 16² latents, 8² after the down block; every path runs
PROMPTS = ["a photo of a woman img wearing a red hat", "a portrait of a man img, oil painting"]
KINDS = ["plain", "adapter", "controlnet"]
CLASSES = {
    "plain": PhotoMakerStableDiffusionXLPipeline,
    "adapter": PhotoMakerStableDiffusionXLAdapterPipeline,
    "controlnet": PhotoMakerStableDiffusionXLControlNetPipeline,
}
FACE = torch.randn(1, 512, generator=torch.Generator().manual_seed(0)) * 10


def photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8))


def structure_image(kind: str) -> Image.Image | None:
    if kind == "plain":
        return None
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    draw.ellipse((SIZE // 4, SIZE // 8, 3 * SIZE // 4, 5 * SIZE // 8), outline="white", width=3)
    draw.line((SIZE // 2, 5 * SIZE // 8, SIZE // 2, SIZE - 2), fill="white", width=3)
    return image


def seeds(*values: int) -> list[torch.Generator] | torch.Generator:
    generators = [torch.Generator().manual_seed(v) for v in values]
    return generators[0] if len(generators) == 1 else generators


def arguments(kind: str, **overrides):
    kwargs = dict(
        prompt=PROMPTS[0],
        negative_prompt="blurry",
        input_id_images=[photo(1)],
        id_embeds=FACE,
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        start_merge_step=0,  # step 0 text-only, step 1 with the ID
        guidance_scale=5.0,
        generator=seeds(7),
        output_type="np",
    )
    if kind != "plain":
        kwargs["image"] = structure_image(kind)
    kwargs.update(overrides)
    return kwargs


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def pipes(cache_dir):
    plain = build_tiny_pipeline("v2", seed=0, cache_dir=cache_dir)
    return {
        "plain": plain,
        "adapter": PhotoMakerStableDiffusionXLAdapterPipeline.from_photomaker_pipe(
            plain, adapter=build_tiny_t2i_adapter(seed=0)
        ),
        "controlnet": PhotoMakerStableDiffusionXLControlNetPipeline.from_photomaker_pipe(
            plain, controlnet=build_tiny_controlnet(seed=0)
        ),
    }


@pytest.fixture(scope="module")
def expected(pipes):
    """Each pipeline's images for :func:`arguments`, made once."""
    return {kind: pipe(**arguments(kind)).images for kind, pipe in pipes.items()}


def as_array(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def close(actual, desired, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(as_array(actual), as_array(desired), atol=atol, rtol=0)


# --------------------------------------------------------------------------- signature


def documented_names(docstring: str) -> set[str]:
    """Argument names documented under ``Args:`` (``name:`` or ``name_a, name_b:`` entries)."""
    args = docstring.split("Args:", 1)[1].split("Returns:", 1)[0]
    names = set()
    for entry in re.findall(r"^ {4}(\w+(?:, \w+)*):", args, re.MULTILINE):
        names.update(entry.split(", "))
    return names


@pytest.mark.parametrize("kind", KINDS)
def test_call_lists_and_documents_every_argument(kind):
    cls = CLASSES[kind]
    parameters = inspect.signature(cls.__call__).parameters
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    assert not [p.name for p in parameters.values() if p.kind in variadic]
    base = inspect.signature(PhotoMakerStableDiffusionXLPipeline.__call__).parameters
    assert {name: p.default for name, p in base.items() if name in parameters} == {
        name: p.default for name, p in base.items()
    }
    undocumented = set(parameters) - {"self"} - documented_names(cls.__call__.__doc__)
    assert not undocumented
    sdxl = inspect.signature(StableDiffusionXLPipeline.__call__).parameters
    assert set(sdxl) - {"kwargs"} <= set(parameters)


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("kind", KINDS)
def test_output_types_and_return_dict_agree(pipes, expected, kind):
    pipe, images = pipes[kind], expected[kind]
    assert images.shape == (1, SIZE, SIZE, 3) and images.dtype == np.float32
    tensors = pipe(**arguments(kind, output_type="pt")).images
    assert isinstance(tensors, torch.Tensor) and tensors.shape == (1, 3, SIZE, SIZE)
    close(tensors.permute(0, 2, 3, 1), images, atol=1e-6)
    pictures = pipe(**arguments(kind, output_type="pil")).images
    assert isinstance(pictures, list) and pictures[0].size == (SIZE, SIZE)
    close(np.asarray(pictures[0]) / 255.0, images[0], atol=1 / 255 + 1e-6)
    latents = pipe(**arguments(kind, output_type="latent")).images
    assert latents.shape == (1, 4, SIZE // 2, SIZE // 2)
    as_tuple = pipe(**arguments(kind, return_dict=False))
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    close(as_tuple[0], images, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_of_prompts_gives_each_prompts_images(pipes, kind):
    """Two prompts × two images per prompt in one call (one UNet call per step, one ID
    embedding shared) give the images of each prompt made alone, with the same noise."""
    pipe = pipes[kind]
    batch = pipe(**arguments(kind, prompt=PROMPTS, num_images_per_prompt=2,
                             generator=seeds(1, 2, 3, 4))).images
    assert batch.shape == (4, SIZE, SIZE, 3)
    first = pipe(**arguments(kind, prompt=PROMPTS[0], num_images_per_prompt=2,
                             generator=seeds(1, 2))).images
    second = pipe(**arguments(kind, prompt=[PROMPTS[1]], num_images_per_prompt=2,
                              generator=seeds(3, 4))).images
    close(batch, np.concatenate([first, second]), atol=1e-4)
    assert np.abs(first[0] - second[0]).max() > 1e-3  # the prompts do matter


def test_a_prompt_cut_at_the_limit_in_a_batch_leaves_the_others_alone(pipes):
    """Prompts of different lengths (one cut at the 77-token limit, its class word elsewhere)
    share the ID embedding; each other prompt's images are as they are alone."""
    pipe = pipes["plain"]
    long_prompt = "a photo of a " + "very " * 60 + "old man img in a garden, " + "detailed " * 20
    photos = [photo(1), photo(2)]
    face = torch.cat([FACE, FACE + 1])
    batch = pipe(**arguments("plain", prompt=[long_prompt, PROMPTS[0]], input_id_images=photos,
                             id_embeds=face, generator=seeds(1, 2))).images
    alone = pipe(**arguments("plain", input_id_images=photos, id_embeds=face,
                             generator=seeds(2))).images
    close(batch[1:], alone, atol=1e-4)


# --------------------------------------------------------------------------- callbacks


@pytest.mark.parametrize("kind", KINDS)
def test_callback_on_step_end_sees_and_replaces_its_tensor_inputs(pipes, expected, kind):
    pipe = pipes[kind]
    names = list(pipe._callback_tensor_inputs)
    seen: list[tuple[int, set[str]]] = []

    def on_step_end(p, i, t, tensors):
        seen.append((i, set(tensors)))
        assert tensors["latents"].shape == (1, 4, SIZE // 2, SIZE // 2)
        assert tensors["prompt_embeds"].shape[0] == 2  # CFG: negative and conditional halves
        if i == 0:
            return {"latents": torch.zeros_like(tensors["latents"])}
        return {}

    images = pipe(**arguments(kind, callback_on_step_end=on_step_end,
                              callback_on_step_end_tensor_inputs=names)).images
    assert seen == [(i, set(names)) for i in range(STEPS)]
    assert np.abs(images - expected[kind]).max() > 1e-3  # the replaced latents were used
    with pytest.raises(ValueError):
        pipe(**arguments(kind, callback_on_step_end=on_step_end,
                         callback_on_step_end_tensor_inputs=["not_a_tensor_input"]))


def test_an_interrupted_call_returns_the_output_type_asked_for(pipes):
    pipe = pipes["plain"]
    steps = []

    def interrupt(p, i, t, tensors):
        steps.append(i)
        p._interrupt = True
        return tensors

    pictures = pipe(**arguments("plain", output_type="pil", callback_on_step_end=interrupt)).images
    assert steps == [0]
    assert isinstance(pictures, list) and isinstance(pictures[0], Image.Image)
    assert pictures[0].size == (SIZE, SIZE)


# --------------------------------------------------------------------------- components


def test_a_pipeline_from_components_is_the_same_pipeline(pipes, expected, cache_dir):
    """diffusers' way to share models: ``cls(**pipe.components)``. The version, the ID tokens
    per photo, the image processor and the trigger word come from the components."""
    for kind, pipe in pipes.items():
        again = CLASSES[kind](**pipe.components)
        again.set_progress_bar_config(disable=True)
        assert (again.pm_version, again.num_tokens_per_image, again.trigger_word) == ("v2", 2, "img")
        close(again(**arguments(kind)).images, expected[kind], atol=0)
    v1 = build_tiny_pipeline("v1", seed=0, cache_dir=cache_dir)
    again = PhotoMakerStableDiffusionXLPipeline(**v1.components)
    assert (again.pm_version, again.num_tokens_per_image) == ("v1", 1)
    # Loading the adapter again through the new pipeline takes the shared UNet's fused LoRA
    # out first (it used to fuse it a second time: the new pipeline counted no fused LoRA).
    weights = {k: v.clone() for k, v in v1.unet.state_dict().items()}
    again.load_photomaker_adapter(
        str(cache_dir / "tiny-photomaker-v1-seed0.bin"), pm_version="v1",
        id_encoder_config=TINY_ENCODER_CONFIG,
    )  # fmt: skip
    for key, value in v1.unet.state_dict().items():
        torch.testing.assert_close(value, weights[key], atol=1e-6, rtol=0, msg=key)
    close(again(**arguments("plain", id_embeds=None)).images,
          v1(**arguments("plain", id_embeds=None)).images, atol=0)
    # and to(dtype) takes every component along, the ID encoder and the fuse module too
    v1.to(torch.float64)
    assert {c.dtype for c in v1.components.values() if isinstance(c, torch.nn.Module)} == {
        torch.float64
    }
    images = v1(**arguments("plain", id_embeds=None)).images
    assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_the_same_images(pipes, expected, cache_dir, tmp_path, kind):
    """``save_pretrained`` writes a plain SDXL folder (the UNet under its own names, the fused
    LoRA taken back out); ``from_pretrained`` + ``load_photomaker_adapter`` restore the
    pipeline."""
    pipe = pipes[kind]
    pipe.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "lora" in k or "base_layer" in k]
    plain_sdxl = StableDiffusionXLPipeline.from_pretrained(tmp_path)  # any SDXL pipeline reads it
    assert not any(t.is_meta for t in plain_sdxl.unet.state_dict().values())
    loaded = CLASSES[kind].from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    loaded.load_photomaker_adapter(
        str(cache_dir / "tiny-photomaker-v2-seed0.bin"), pm_version="v2",
        id_encoder_config=TINY_ENCODER_CONFIG,
    )
    close(loaded(**arguments(kind)).images, expected[kind], atol=1e-4)


# --------------------------------------------------------------------------- memory savers


def test_vae_slicing_and_tiling_keep_the_images(pipes):
    pipe = pipes["plain"]
    def two():  # fresh generators for each call
        return dict(num_images_per_prompt=2, generator=seeds(1, 2))

    reference = pipe(**arguments("plain", **two())).images
    pipe.vae.enable_slicing()
    try:
        close(pipe(**arguments("plain", **two())).images, reference, atol=1e-5)
    finally:
        pipe.vae.disable_slicing()
    vae = pipe.vae
    sizes = vae.tile_sample_min_size, vae.tile_latent_min_size
    vae.enable_tiling()
    # Tiles of half the image (the tiny VAE's default tile is the whole 64-px image).
    vae.tile_sample_min_size, vae.tile_latent_min_size = SIZE // 2, SIZE // 4
    try:
        tiled = pipe(**arguments("plain", **two())).images
    finally:
        vae.disable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = sizes
    # Tiles are blended, so the pixels differ a little: as diffusers' own test, loosely.
    assert tiled.shape == reference.shape
    assert np.abs(tiled - reference).mean() < 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_model_cpu_offload_gives_the_same_images(pipes, expected, kind):
    """The offload hooks (accelerate) run here with the CPU as the execution device: what is
    tested is that every component, the ID encoder, fuse module and adapter included, is
    reached through the hooks and the images are unchanged; the memory saving itself needs
    an accelerator (bench/)."""
    pipe = pipes[kind]
    assert "image_encoder" in pipe.model_cpu_offload_seq.split("->")
    pipe.enable_model_cpu_offload(device="cpu")
    try:
        close(pipe(**arguments(kind)).images, expected[kind], atol=1e-6)
    finally:
        pipe.remove_all_hooks()


# --------------------------------------------------------------------------- schedulers


def test_schedulers_swap_through_from_config(pipes, expected):
    pipe = pipes["plain"]
    original = pipe.scheduler
    try:
        pipe.scheduler = type(original).from_config(original.config)
        close(pipe(**arguments("plain")).images, expected["plain"], atol=0)
        for scheduler in (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler):
            pipe.scheduler = scheduler.from_config(original.config)
            images = pipe(**arguments("plain")).images
            assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()
            assert np.abs(images - expected["plain"]).max() > 1e-4
    finally:
        pipe.scheduler = original


# --------------------------------------------------------------------------- prompts


def test_encode_prompt_alone_gives_the_text_only_conditioning(pipes):
    """``encode_prompt`` on a trigger-word prompt is the conditioning of the first steps (the
    prompt without its trigger word), as the call itself uses it."""
    pipe = pipes["plain"]
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        PROMPTS[0], negative_prompt="blurry img", device=torch.device("cpu"),
        num_images_per_prompt=1, do_classifier_free_guidance=True,
    )
    assert embeds.shape == (1, 77, 64) and pooled.shape == (1, 32)
    without = pipe.encode_prompt("a photo of a woman wearing a red hat", device=torch.device("cpu"),
                                 do_classifier_free_guidance=False)
    close(embeds, without[0], atol=0)
    seen = {}

    def capture(p, i, t, tensors):
        seen.setdefault(i, {k: v.clone() for k, v in tensors.items()})
        return {}

    names = ["prompt_embeds_text_only", "add_text_embeds_text_only"]
    pipe(**arguments("plain", negative_prompt="blurry img", callback_on_step_end=capture,
                     callback_on_step_end_tensor_inputs=names))
    close(seen[0]["prompt_embeds_text_only"], torch.cat([negative, embeds]), atol=1e-6)
    close(seen[0]["add_text_embeds_text_only"], torch.cat([negative_pooled, pooled]), atol=1e-6)
    batch = pipe.encode_prompt(PROMPTS, device=torch.device("cpu"), num_images_per_prompt=2,
                               do_classifier_free_guidance=False)
    assert batch[0].shape == (4, 77, 64)


def test_prompt_2_with_or_without_the_trigger_word(pipes, expected):
    pipe = pipes["plain"]
    close(pipe(**arguments("plain", prompt_2=PROMPTS[0])).images, expected["plain"], atol=0)
    without = pipe(**arguments("plain", prompt_2="a watercolor painting, soft light")).images
    with_trigger = pipe(**arguments("plain", prompt_2="a watercolor of a woman img")).images
    for images in (without, with_trigger):
        assert np.isfinite(images).all()
        assert np.abs(images - expected["plain"]).max() > 1e-4


def test_watermark_is_applied_when_asked(pipes):
    components = pipes["plain"].components
    try:
        import imwatermark  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="invisible-watermark"):
            PhotoMakerStableDiffusionXLPipeline(**components, add_watermarker=True)
        return
    marked = PhotoMakerStableDiffusionXLPipeline(**components, add_watermarker=True)
    assert marked.watermark is not None
    assert PhotoMakerStableDiffusionXLPipeline(**components).watermark is None


def test_the_text_encoder_lora_scale_reaches_every_prompt_encoding(cache_dir):
    """``cross_attention_kwargs["scale"]`` (``lora_scale``) scales text-encoder LoRAs in the ID
    prompt's encoding as in the text-only and negative ones: at 0 all are the base model's."""
    from peft import LoraConfig, inject_adapter_in_model

    pipe = build_tiny_pipeline("v1", seed=0, cache_dir=cache_dir)
    cpu = torch.device("cpu")
    base_id = pipe.encode_prompt_with_trigger_word(PROMPTS[0], device=cpu)[0]
    base_text = pipe.encode_prompt(PROMPTS[0], device=cpu, negative_prompt="blurry")
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        config = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                            init_lora_weights=False)
        inject_adapter_in_model(config, encoder)
    live_id = pipe.encode_prompt_with_trigger_word(PROMPTS[0], device=cpu)[0]
    assert np.abs(as_array(live_id) - as_array(base_id)).max() > 1e-4  # the LoRA acts
    close(pipe.encode_prompt_with_trigger_word(PROMPTS[0], device=cpu, lora_scale=0.0)[0],
          base_id, atol=1e-6)
    off_text = pipe.encode_prompt(PROMPTS[0], device=cpu, negative_prompt="blurry", lora_scale=0.0)
    for off, base in zip(off_text, base_text, strict=True):
        close(off, base, atol=1e-6)
    close(pipe.encode_prompt_with_trigger_word(PROMPTS[0], device=cpu)[0], live_id, atol=0)
