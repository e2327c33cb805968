"""The tiny PhotoMaker pipeline end to end, and its agreement with the reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline
from photomaker.tiny import TINY_IMAGE_SIZE, build_tiny_pipeline
from tests import reference

STEPS = 4


def photo(seed: int, size=(96, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=["v1", "v2"])
def pipe(request, tmp_path_factory):
    return build_tiny_pipeline(request.param, seed=0, cache_dir=tmp_path_factory.mktemp("tiny"))


def face_embeds(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 512, generator=torch.Generator().manual_seed(seed)) * 10


def generate(pipe, photos, seed=7, **overrides):
    kwargs = dict(
        prompt="a photo of a woman img wearing a red hat, detailed",
        negative_prompt="blurry",
        input_id_images=photos,
        num_inference_steps=STEPS,
        height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE,
        start_merge_step=1,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    if pipe.pm_version == "v2" and "id_image_embeds" not in overrides:
        kwargs["id_embeds"] = face_embeds(len(photos))
    kwargs.update(overrides)
    return pipe(**kwargs).images


def test_generates_and_is_deterministic(pipe):
    photos = [photo(1), photo(2)]
    first = generate(pipe, photos)  # how fast: bench/, not a test that flakes on a busy machine
    assert first.shape == (1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, generate(pipe, photos))


def test_merge_step_and_id_photo_change_the_output(pipe):
    photos = [photo(1), photo(2)]
    base = generate(pipe, photos)
    assert np.abs(base - generate(pipe, photos, start_merge_step=2)).max() > 1e-6
    assert np.abs(base - generate(pipe, [photo(1), photo(3)])).max() > 1e-6
    # start_merge_step beyond the last step: the ID never enters, so the photos do not matter.
    late = generate(pipe, photos, start_merge_step=STEPS)
    np.testing.assert_array_equal(late, generate(pipe, [photo(5), photo(6)], start_merge_step=STEPS))


def test_two_images_per_prompt_differ(pipe):
    images = generate(pipe, [photo(1)], num_images_per_prompt=2)
    assert images.shape[0] == 2
    assert np.abs(images[0] - images[1]).max() > 1e-6


def test_precomputed_id_embeddings_give_the_same_images(pipe):
    photos = [photo(1), photo(2)]
    embeds = pipe.encode_id_images(photos, face_embeds(2) if pipe.pm_version == "v2" else None)
    assert embeds.shape == (2, pipe.num_tokens_per_image, 64)
    np.testing.assert_array_equal(
        generate(pipe, photos), generate(pipe, None, id_image_embeds=embeds)
    )


def test_preprocessed_photos_and_id_embeddings_are_read_or_refused_clearly(pipe, caplog, tmp_path):
    photos = [photo(1), photo(2)]
    ids = face_embeds(2) if pipe.pm_version == "v2" else None
    embeds = pipe.encode_id_images(photos, ids)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]  # pathlib paths, as str paths are read
    for image, path in zip(photos, paths, strict=True):
        image.save(path)
    torch.testing.assert_close(pipe.encode_id_images(paths, ids), embeds, rtol=0, atol=0)
    # preprocess_id_images' own [N, 3, 224, 224] tensor is N photos (it was read as one)
    pixels = pipe.preprocess_id_images(photos)
    torch.testing.assert_close(pipe.encode_id_images(pixels, ids), embeds, rtol=0, atol=0)
    # ID embeddings of the wrong shape: what encode_id_images returns is asked for, not a
    # silent cut to the first photo ([1, N, T, D]) or a torch error deep inside
    for wrong in (embeds[None], embeds[:, :, :32], embeds[0]):
        with pytest.raises(ValueError, match=r"`id_image_embeds` must be \[num_photos, "):
            generate(pipe, None, id_image_embeds=wrong)
    # A prompt made for 1 photo with the ID embedding of 2: refused, not photo 2 dropped
    prompt_embeds, pooled, mask = pipe.encode_prompt_with_trigger_word("a woman img", num_id_images=1)
    with pytest.raises(ValueError, match=r"marks \d+ class-token positions, but the ID embedding has"):
        generate(pipe, None, prompt=None, id_image_embeds=embeds, prompt_embeds=prompt_embeds,
                 pooled_prompt_embeds=pooled, class_tokens_mask=mask, negative_prompt=None,
                 prompt_embeds_text_only=prompt_embeds, pooled_prompt_embeds_text_only=pooled)
    if pipe.pm_version == "v2":  # ArcFace embeddings of another width: said, not a matmul error
        with pytest.raises(ValueError, match=r"`id_embeds` must be \[2, 512\]"):
            pipe.encode_id_images(photos, torch.zeros(2, 256))
        as_rows = pipe.encode_id_images(photos, list(ids))  # a list of rows, as numpy's list
        torch.testing.assert_close(as_rows, embeds, rtol=0, atol=0)
    else:  # V1 takes no face embeddings: said, not silently
        with caplog.at_level("WARNING", logger="photomaker.pipeline"):
            pipe.encode_id_images(photos, face_embeds(5))
        assert "are for PhotoMaker V2" in caplog.text
    with pytest.raises(ValueError, match="num_images_per_prompt` must be at least 1"):
        generate(pipe, photos, num_images_per_prompt=0)
    # A merge step that leaves no step for the ID: the official pipeline's behaviour, but said
    with caplog.at_level("WARNING", logger="photomaker.pipeline"):
        generate(pipe, photos, start_merge_step=STEPS - 1)
    assert "the ID embedding is never used" in caplog.text


def test_callbacks_and_latent_output(pipe):
    seen = []

    def on_step_end(p, i, t, tensors):
        seen.append((i, tuple(tensors["latents"].shape)))
        return tensors

    latents = generate(pipe, [photo(1)], output_type="latent", callback_on_step_end=on_step_end)
    assert latents.shape == (1, 4, TINY_IMAGE_SIZE // 2, TINY_IMAGE_SIZE // 2)
    assert [i for i, _ in seen] == list(range(STEPS))


def test_v2_requires_face_embeddings(tmp_path):
    pipe = build_tiny_pipeline("v2", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="id_embeds"):
        pipe(prompt="a man img", input_id_images=[photo(1)], num_inference_steps=1)


@pytest.mark.parametrize("num_photos", [1, 3])
def test_matches_the_reference_implementation(pipe, num_photos):
    """Same components, same checkpoint: the reference pipeline's images, to 1e-4 (fp32, CPU)."""
    oracle = reference.load_oracle()
    if oracle is None:
        pytest.skip("the reference implementation is not unpacked in .oracle/ (scripts/test.sh does it)")
    photos = [photo(10 + i) for i in range(num_photos)]
    ids = face_embeds(num_photos) if pipe.pm_version == "v2" else None
    ref = reference.oracle_pipeline(oracle, pipe.components, pipe, pipe.pm_version, ids)
    common = dict(
        prompt="a photo of a man img in a spacesuit, detailed",
        negative_prompt="blurry, lowres",
        input_id_images=photos,
        num_inference_steps=STEPS,
        start_merge_step=1,
        guidance_scale=5.0,
        height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE,
        num_images_per_prompt=2,
        output_type="np",
    )
    expected = ref(generator=torch.Generator().manual_seed(3), **common).images
    ours = pipe(generator=torch.Generator().manual_seed(3), id_embeds=ids, **common).images
    reference.assert_close(ours, expected)
    # and the ID genuinely entered both: not equal to a run that never merges it
    never = pipe(generator=torch.Generator().manual_seed(3), id_embeds=ids,
                 **{**common, "start_merge_step": STEPS}).images
    assert np.abs(never - expected).max() > 1e-6


def test_from_pretrained_folder_round_trip(tmp_path):
    pipe = build_tiny_pipeline("v1", cache_dir=tmp_path)
    folder = tmp_path / "sdxl"
    pipe.unload_lora_weights()
    pipe.save_pretrained(folder)
    loaded = PhotoMakerStableDiffusionXLPipeline.from_pretrained(folder)
    assert isinstance(loaded, PhotoMakerStableDiffusionXLPipeline)
    assert loaded.id_encoder is None
    with pytest.raises(RuntimeError, match="load_photomaker_adapter"):
        loaded(prompt="a man img", input_id_images=[photo(1)], num_inference_steps=1)


def test_to_takes_the_id_encoder_along(tmp_path):
    pipe = build_tiny_pipeline("v2", cache_dir=tmp_path)
    pipe.to(torch.float64)
    assert {p.dtype for p in pipe.id_encoder.parameters()} == {torch.float64}
    images = generate(pipe, [photo(1)], num_inference_steps=2)
    assert images.shape == (1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
