"""The service: validation, generation, determinism, the ID cache, and loading from settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from photomaker.errors import PhotoMakerInputError
from photomaker.loading import build_analyzer, build_pipeline, build_service
from photomaker.service import (
    ASPECT_RATIOS,
    GenerationRequest,
    PhotoMakerService,
    merge_step,
    size_for,
    tiny_size,
)
from photomaker.settings import Settings
from photomaker.tiny_faces import draw_tiny_face

PROMPT = "a photo of a man img in the snow"


def face_photo(variant: int, size: int = 256) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    return draw_tiny_face(
        image, (size * 0.3, size * 0.25, size * 0.7, size * 0.75), variant=variant
    )


def blank_photo() -> Image.Image:
    return Image.new("RGB", (256, 256), (90, 120, 200))


@pytest.fixture(scope="module")
def service() -> PhotoMakerService:
    return build_service(Settings(tiny=True))


def request(**changes) -> GenerationRequest:
    values = dict(
        photos=[face_photo(0), face_photo(1)],
        prompt=PROMPT,
        steps=2,
        num_outputs=1,
        seed=7,
        randomize_seed=False,
        aspect_ratio="1:1 square (1024×1024)",
    )
    values.update(changes)
    return GenerationRequest(**values)


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(img) for img in images]


def test_generate_v2(service):
    result = service.generate(
        request(num_outputs=2, aspect_ratio="3:4 portrait (896×1152)", style="Watercolor")
    )
    assert len(result.images) == 2
    assert result.images[0].size == (result.width, result.height) == tiny_size(896, 1152)
    assert result.seed == 7
    assert result.prompt.startswith("watercolor painting, " + PROMPT)
    assert "photorealistic" in result.negative_prompt
    assert result.captions == ["seed 7 · Watercolor · 1/2", "seed 7 · Watercolor · 2/2"]
    assert [r.found for r in result.face_reports] == [True, True]
    assert result.start_merge_step == merge_step(20, 2) == 0
    assert {"load", "faces", "encode", "denoise", "total"} <= set(result.timings)


def test_same_seed_same_images_and_the_cache_changes_nothing(service):
    service._id_cache.clear()
    first = service.generate(request(seed=11))
    hits = service.cache_hits
    second = service.generate(request(seed=11))
    assert service.cache_hits == hits + 1  # the second run reused the ID encoding
    assert all(
        np.array_equal(a, b)
        for a, b in zip(pixels(first.images), pixels(second.images), strict=True)
    )
    other = service.generate(request(seed=12))
    assert not np.array_equal(pixels(first.images)[0], pixels(other.images)[0])


def test_randomized_seed_is_reported(service):
    result = service.generate(request(randomize_seed=True, seed=0))
    again = service.generate(request(randomize_seed=False, seed=result.seed))
    assert np.array_equal(pixels(result.images)[0], pixels(again.images)[0])


def test_merge_step_mapping():
    assert merge_step(20, 50) == 10
    assert merge_step(50, 100) == 30  # capped
    assert merge_step(0, 50) == 0
    assert merge_step(15, 4) == 0


def test_sizes():
    for name, (w, h) in ASPECT_RATIOS.items():
        assert size_for(name) == (w, h) and w % 64 == 0 and h % 64 == 0
        tw, th = size_for(name, tiny=True)
        assert max(tw, th) == 64 and tw % 16 == 0 and th % 16 == 0
        assert (tw >= th) == (w >= h)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"photos": []}, "No photos"),
        ({"photos": None}, "No photos"),
        ({"photos": [b"not an image"]}, "Photo 1"),
        ({"prompt": "a photo of a man"}, "no trigger word"),
        ({"prompt": "a man img with a woman img"}, "2 times"),
        ({"prompt": "img in the snow"}, "class word"),
        ({"prompt": "  "}, "prompt is empty"),
        ({"photos": [face_photo(0), blank_photo()]}, r"No face found in photo 2 \(of 2\)"),
        ({"photos": [blank_photo(), blank_photo()]}, "No face found in any of the photos"),
        ({"style": "Nope"}, "Unknown style 'Nope'"),
        ({"aspect_ratio": "5:4"}, "Unknown aspect ratio"),
        ({"steps": 0}, "steps must be between 1 and 100"),
        ({"steps": 2.5}, "whole number"),
        ({"num_outputs": 5}, "num outputs must be between 1 and 4"),
        ({"guidance_scale": float("nan")}, "guidance scale"),
        ({"style_strength": 120}, "style strength"),
        ({"seed": -1}, "seed must be between"),
        ({"seed": "abc"}, "seed must be a number"),
    ],
)
def test_user_errors(service, changes, message):
    with pytest.raises(PhotoMakerInputError, match=message):
        service.generate(request(**changes))


def test_prompt_too_long_after_style(service):
    long_prompt = "a photo of a man img " + ", ".join(["very detailed background scenery"] * 20)
    with pytest.raises(PhotoMakerInputError) as err:
        service.generate(
            request(prompt="portrait, " + long_prompt.replace("img ", "") + " man img")
        )
    assert "token" in str(err.value)


def test_skipping_photos_without_a_face(service):
    lenient = PhotoMakerService(
        service.pipe, service.analyzer, service.styles, skip_faceless_photos=True, tiny=True
    )
    result = lenient.generate(request(photos=[face_photo(0), blank_photo(), face_photo(1)]))
    assert len(result.images) == 1
    assert any("photo 2" in m and "skipped" in m for m in result.messages)
    with pytest.raises(PhotoMakerInputError, match="No face found"):
        lenient.generate(request(photos=[blank_photo()]))


def test_analyze_photos(service):
    analysis = service.analyze_photos([face_photo(0), blank_photo()])
    assert analysis.captions == ["photo 1: face found ✓", "photo 2: no face found ✗"]
    assert analysis.num_with_face == 1
    with pytest.raises(PhotoMakerInputError):
        service.analyze_photos([])


def test_estimate_seconds_grows_with_the_work(service):
    job, _ = service.prepare(request(steps=20, num_outputs=1))
    small = service.estimate_seconds(job)
    job.steps, job.num_outputs, job.width, job.height = 50, 4, 1024, 1024
    assert 20 <= small < service.estimate_seconds(job) <= 240


def test_v1_needs_no_face_analyzer_and_crop_mode_uses_it():
    v1 = build_service(Settings(tiny=True, pm_version="v1"))
    assert v1.analyzer is None and v1.pm_version == "v1"
    result = v1.generate(request(photos=[blank_photo()], prompt="a woman img"))
    assert len(result.images) == 1 and result.face_reports is None

    analyzer = build_analyzer(Settings(tiny=True, pm_version="v1", crop_faces=True))
    cropping = PhotoMakerService(v1.pipe, analyzer, crop_faces=True, tiny=True)
    small_face = draw_tiny_face(Image.new("RGB", (400, 400), (255, 255, 255)), (50, 50, 130, 150))
    job, _ = cropping.prepare(request(photos=[small_face]))
    assert job.id_images[0].size[0] < 300  # cropped around the face
    with pytest.raises(PhotoMakerInputError, match="Cropping around faces"):
        cropping.prepare(request(photos=[blank_photo()]))


def test_v2_service_without_analyzer_is_a_programming_error(service):
    with pytest.raises(ValueError, match="face analyzer"):
        PhotoMakerService(service.pipe, None)


# --------------------------------------------------------------------------- real loading


def test_build_pipeline_from_a_diffusers_folder_with_a_style_lora(tmp_path, monkeypatch):
    """The non-tiny path: folder base model, checkpoint file, style LoRA, Euler, device."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline
    from photomaker.tiny import TINY_ENCODER_CONFIG, build_tiny_components, write_tiny_checkpoint

    components = build_tiny_components(0)
    StableDiffusionXLPipeline(**components).save_pretrained(tmp_path / "base")
    checkpoint = write_tiny_checkpoint(
        tmp_path / "pm" / "tiny-v1.bin", "v1", unet=components["unet"]
    )

    # A style LoRA for the tiny UNet, saved the usual diffusers way.
    unet = build_tiny_components(0)["unet"]
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]))
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
    )
    lora_file = next((tmp_path / "lora").glob("*.safetensors"))

    calls = {}
    original = PhotoMakerStableDiffusionXLPipeline.load_photomaker_adapter

    def load_tiny_adapter(self, location, **kwargs):
        calls.update(kwargs, location=location)
        return original(self, location, id_encoder_config=TINY_ENCODER_CONFIG, **kwargs)

    monkeypatch.setattr(
        PhotoMakerStableDiffusionXLPipeline, "load_photomaker_adapter", load_tiny_adapter
    )
    settings = Settings(
        base_model=str(tmp_path / "base"),
        pm_version="v1",
        checkpoint=str(checkpoint),
        style_lora=str(lora_file),
        style_lora_weight=0.6,
        doodle_adapter="none",  # the default sketch adapter is a download
        device="cpu",
    )
    pipe = build_pipeline(settings)
    assert calls["location"] == str(checkpoint.parent) and calls["weight_name"] == "tiny-v1.bin"
    assert calls["pm_version"] == "v1" and calls["trigger_word"] == "img"
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert sorted(pipe.get_active_adapters()) == ["photomaker", "style"]
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    check = pipe.check_prompt("a photo of a man img", 2)
    assert check.num_class_tokens == 2


def test_build_pipeline_reports_missing_base_files(tmp_path):
    with pytest.raises(PhotoMakerInputError, match="does not exist"):
        build_pipeline(Settings(base_model=str(tmp_path / "nope.safetensors"), device="cpu"))
    with pytest.raises(PhotoMakerInputError, match="model_index.json"):
        build_pipeline(Settings(base_model=str(tmp_path), device="cpu"))
