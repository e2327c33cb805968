"""The service: validation, generation, determinism, the ID cache, and loading from settings."""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from photomaker.errors import GenerationCancelled, PhotoMakerInputError, PhotoMakerServerError
from photomaker.loading import build_analyzer, build_pipeline, build_service
from photomaker.service import (
    ASPECT_RATIOS,
    MAX_NEGATIVE_PROMPT_CHARS,
    MAX_PROMPT_CHARS,
    GenerationRequest,
    PhotoMakerService,
    free_memory,
    gpu_lock,
    log_head,
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
    assert result.captions == [
        f"seed 7 · Watercolor · {i}/2 · {result.likeness_text(i - 1)}" for i in (1, 2)
    ]
    assert len(result.likeness) == 2  # scored with the tiny face pack (see test_service_extras)
    assert [r.found for r in result.face_reports] == [True, True]
    assert result.start_merge_step == merge_step(20, 2) == 0
    assert {"load", "faces", "encode", "denoise", "likeness", "total"} <= set(result.timings)


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
    assert 1 <= small < 30 < service.estimate_seconds(job) <= 300


def test_v1_needs_no_face_analyzer_and_crop_mode_uses_it():
    v1 = build_service(Settings(tiny=True, pm_version="v1"))
    assert v1.analyzer is None and v1.pm_version == "v1"
    result = v1.generate(request(photos=[blank_photo()], prompt="a woman img"))
    assert len(result.images) == 1 and result.face_reports is None

    analyzer = build_analyzer(Settings(tiny=True, pm_version="v1", crop_faces=True))
    cropping = PhotoMakerService(v1.pipe, analyzer, crop_faces=True, tiny=True)
    small_face = draw_tiny_face(Image.new("RGB", (400, 400), (255, 255, 255)), (50, 50, 130, 150))
    job, context = cropping.prepare(request(photos=[small_face]))
    assert context["photo_sizes"][0][0] < 300  # cropped around the face
    assert job.id_pixel_values.shape == (1, 3, 224, 224)
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
    with warnings.catch_warnings(record=True) as caught:  # PEFT's two about the second adapter
        warnings.simplefilter("always")
        pipe = build_pipeline(settings)
    assert not [str(w.message) for w in caught if "peft" in w.filename], caught
    assert calls["location"] == str(checkpoint.parent) and calls["weight_name"] == "tiny-v1.bin"
    assert calls["pm_version"] == "v1" and calls["trigger_word"] == "img"
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert sorted(pipe.get_active_adapters()) == ["photomaker", "style"]
    assert pipe.num_fused_loras == 2  # the style LoRA is fused at its weight too
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    check = pipe.check_prompt("a photo of a man img", 2)
    assert check.num_class_tokens == 2


def test_build_pipeline_reports_missing_base_files(tmp_path):
    with pytest.raises(PhotoMakerInputError, match="does not exist"):
        build_pipeline(Settings(base_model=str(tmp_path / "nope.safetensors"), device="cpu"))
    with pytest.raises(PhotoMakerInputError, match="model_index.json"):
        build_pipeline(Settings(base_model=str(tmp_path), device="cpu"))


# --------------------------------------------------------------------------- one job at a time


class _Job(threading.Thread):
    """``service.generate`` in a thread of its own, keeping its result or its error."""

    def __init__(self, name: str, call) -> None:
        super().__init__(name=name, daemon=True)
        self.call, self.result, self.error = call, None, None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc


@contextlib.contextmanager
def unet_calls(pipe, on_call=None):
    """Record which thread ran each UNet step (one call per step, CFG batched)."""
    calls: list[str] = []

    def hook(module, args, output):
        calls.append(threading.current_thread().name)
        if on_call is not None:
            on_call(calls)

    handle = pipe.unet.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def test_cancel_stops_the_job_and_the_waiting_job_runs_as_if_alone(service):
    """Job A (100 steps) is cancelled at its 3rd step while job B waits for the GPU: A stops
    there and raises GenerationCancelled, B runs alone afterwards and makes its solo images."""
    b_request = request(photos=[face_photo(1), face_photo(0)], seed=5, steps=3, num_outputs=2)
    solo = pixels(service.generate(b_request).images)

    a_at_step_3, b_waiting, cancel_a = threading.Event(), threading.Event(), threading.Event()

    def pause_a_at_step_3(calls):
        if threading.current_thread().name == "A" and calls.count("A") == 3:
            a_at_step_3.set()
            assert cancel_a.wait(120), "job B never reached the GPU part"

    def b_run_job(job, **kwargs):
        b_waiting.set()
        return service.run_job(job, **kwargs)

    with unet_calls(service.pipe, pause_a_at_step_3) as calls:
        a = _Job("A", lambda: service.generate(request(steps=100), cancel=cancel_a))
        b = _Job("B", lambda: service.generate(b_request, run_job=b_run_job))
        a.start()
        assert a_at_step_3.wait(120)
        b.start()
        assert b_waiting.wait(120)
        cancel_a.set()  # A is paused inside its 3rd UNet call, holding the GPU
        a.join(120)
        b.join(120)

    assert isinstance(a.error, GenerationCancelled) and a.result is None
    assert b.error is None, b.error
    assert calls == ["A"] * 3 + ["B"] * 3  # A stopped after step 3, B never overlapped it
    assert all(np.array_equal(x, y) for x, y in zip(pixels(b.result.images), solo, strict=True))


def test_a_job_cancelled_before_it_runs_never_enters_the_pipeline(service):
    cancel = threading.Event()
    cancel.set()
    with unet_calls(service.pipe) as calls, pytest.raises(GenerationCancelled):
        service.generate(request(), cancel=cancel)
    assert calls == []


def test_a_job_cancelled_while_waiting_for_the_gpu_leaves_the_queue(service):
    job, _ = service.prepare(request())
    cancel = threading.Event()
    with gpu_lock(service.pipe):  # another job holds this pipeline
        waiting = _Job("waiting", lambda: service.run_job(job, cancel=cancel))
        waiting.start()
        cancel.set()
        waiting.join(30)
    assert isinstance(waiting.error, GenerationCancelled)


def test_concurrent_requests_are_served_in_turn_and_never_cross(service):
    """4 clients × 2 requests at once: every request is answered with its own solo images, and
    the UNet runs one job's steps at a time."""
    requests = {f"client{i}": request(seed=100 + i, steps=2) for i in range(4)}
    solo = {name: pixels(service.generate(r).images) for name, r in requests.items()}

    def client(name):
        return [pixels(service.generate(requests[name]).images) for _ in range(2)]

    with unet_calls(service.pipe) as calls:
        clients = [_Job(name, lambda name=name: client(name)) for name in requests]
        for c in clients:
            c.start()
        for c in clients:
            c.join(300)
    for c in clients:
        assert c.error is None, c.error
        for images in c.result:
            assert all(np.array_equal(a, b) for a, b in zip(images, solo[c.name], strict=True))
    assert len(calls) == 8 * 2
    assert all(len(set(calls[i : i + 2])) == 1 for i in range(0, len(calls), 2))


# --------------------------------------------------------------------------- failures


def _fail_in(monkeypatch, service, stage: str, exc: BaseException) -> None:
    def fail(*args, **kwargs):
        raise exc

    if stage == "encoding":
        service._id_cache.clear()
        monkeypatch.setattr(service.pipe, "encode_id_images", fail)
    else:
        monkeypatch.setattr(service.pipe.unet, "forward", fail)


@pytest.mark.parametrize("stage", ["encoding", "denoising"])
@pytest.mark.parametrize(
    "oom",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
    ],
    ids=["OutOfMemoryError", "RuntimeError"],
)
def test_out_of_memory_is_a_clear_message_and_the_next_request_is_served(
    service, monkeypatch, stage, oom
):
    freed = []
    monkeypatch.setattr("photomaker.service.runtime.free_memory", lambda: freed.append(True))
    with monkeypatch.context() as patch:
        _fail_in(patch, service, stage, oom)
        with pytest.raises(PhotoMakerServerError) as err:
            service.generate(request())
    message = str(err.value)
    assert "ran out of memory" in message and "fewer images" in message
    assert "smaller size" in message and "--memory model-offload" in message
    assert re.fullmatch(r"[0-9a-f]{8}", err.value.error_id) and err.value.error_id in message
    assert freed == [True]
    assert len(service.generate(request()).images) == 1  # served as usual


def test_an_unexpected_error_carries_an_id_that_is_in_the_log(service, monkeypatch, caplog):
    with monkeypatch.context() as patch:
        _fail_in(patch, service, "denoising", IndexError("index 49408 is out of bounds"))
        with caplog.at_level(logging.ERROR, "photomaker.service"):
            with pytest.raises(PhotoMakerServerError) as err:
                service.generate(request())
    error_id = err.value.error_id
    assert re.fullmatch(r"[0-9a-f]{8}", error_id)
    assert f"error {error_id}" in str(err.value) and "49408" not in str(err.value)
    (record,) = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info and isinstance(record.exc_info[1], IndexError)  # the traceback
    assert len(service.generate(request()).images) == 1


def test_an_input_error_from_the_gpu_part_passes_unchanged(service, monkeypatch):
    mistake = PhotoMakerInputError("something the user can fix")
    with monkeypatch.context() as patch:
        _fail_in(patch, service, "denoising", mistake)
        with pytest.raises(PhotoMakerInputError) as err:
            service.generate(request())
    assert err.value is mistake


def test_free_memory_empties_the_cuda_cache(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    free_memory()
    assert emptied == [True]


# --------------------------------------------------------------------------- prompts


def test_trigger_word_in_any_case_generates_and_inside_a_word_is_refused(service):
    result = service.generate(request(prompt="a photo of a woman IMG in the snow"))
    assert len(result.images) == 1
    with pytest.raises(PhotoMakerInputError, match="no trigger word 'img'.*whole word"):
        service.generate(request(prompt="a photo of a woman imgur in the snow"))


@pytest.mark.parametrize("negative", ["bad img quality", "imgur watermark", "IMG, img"])
def test_a_trigger_word_in_the_negative_prompt_is_ordinary_text(service, negative):
    pipe = service.pipe
    seen: list[torch.Tensor] = []
    hooks = [
        encoder.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(
                kwargs.get("input_ids", args[0] if args else None)
            ),
            with_kwargs=True,
        )
        for encoder in (pipe.text_encoder, pipe.text_encoder_2)
    ]
    try:
        result = service.generate(request(negative_prompt=negative))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(result.images) == 1
    assert result.negative_prompt.endswith(negative) and result.user_negative_prompt == negative
    # The added token never reaches a text encoder (it has no embedding there).
    trigger_ids = {t.convert_tokens_to_ids("img") for t in (pipe.tokenizer, pipe.tokenizer_2)}
    assert len(seen) == 6 and all(not set(ids.flatten().tolist()) & trigger_ids for ids in seen)


@pytest.mark.parametrize(
    "field, limit", [("prompt", MAX_PROMPT_CHARS), ("negative_prompt", MAX_NEGATIVE_PROMPT_CHARS)]
)
def test_huge_prompts_are_refused_with_their_length(service, field, limit):
    text = "a photo of a man img " + "x" * 1_000_000
    with pytest.raises(PhotoMakerInputError) as err:
        service.generate(request(**{field: text}))
    message = str(err.value)
    assert f"{len(text):,} characters" in message and f"limit is {limit:,}" in message
    assert len(message) < 300


def test_only_the_head_of_a_long_prompt_is_logged(service, caplog):
    prompt = "a photo of a man img, " + ", ".join(["sunny snowy mountain"] * 80)
    assert len(prompt) < MAX_PROMPT_CHARS
    with caplog.at_level(logging.DEBUG, "photomaker"):
        service.generate(request(prompt=prompt))
    # Only the project's own records: a library's warning (diffusers quotes the whole
    # truncated prompt, for one) is that library's business and changes with its releases.
    ours = [r for r in caplog.records if r.name == "photomaker" or r.name.startswith("photomaker.")]
    assert any("a photo of a man img" in r.getMessage() for r in ours)
    assert max(len(r.getMessage()) for r in ours) < 600
    assert log_head("x" * 500, 100).endswith("… (+400 characters)")


@pytest.mark.parametrize("steps, strength", [(4, 100), (10, 90), (2, 50)])
def test_a_merge_step_at_the_last_step_is_warned_about(service, steps, strength):
    job, context = service.prepare(request(steps=steps, style_strength=strength))
    assert job.start_merge_step >= steps - 1
    assert any("never merged in" in m and "style strength" in m for m in context["messages"])


def test_the_merge_warning_reaches_the_result_and_only_when_due(service):
    result = service.generate(request(steps=1))
    assert any("never merged in" in m for m in result.messages)
    for steps, strength in [(3, 20), (60, 40), (100, 30)]:
        _, context = service.prepare(request(steps=steps, style_strength=strength))
        assert not any("merged" in m for m in context["messages"])


def test_the_photo_pixel_limit_is_the_services(service):
    strict = PhotoMakerService(
        service.pipe, service.analyzer, service.styles, tiny=True, max_photo_megapixels=0.05
    )
    with pytest.raises(PhotoMakerInputError, match=r"Photo 1: .*the limit is 0.05 megapixels"):
        strict.generate(request())


# --------------------------------------------------------------------------- lean jobs


def _big_face_photos(count: int = 10) -> list[Image.Image]:
    photos = []
    for variant in range(count):
        image = Image.new("RGB", (2048, 1536), (255, 255, 255))
        photos.append(draw_tiny_face(image, (700, 300, 1300, 1100), variant=variant % 2))
    return photos


def test_jobs_are_small_and_survive_pickling(service):
    """10 photos of 2048×1536 (94 MB as PIL photos) cross to the GPU worker as CLIP input."""
    service._id_cache.clear()
    big = request(photos=_big_face_photos(), steps=1)
    job, _ = service.prepare(big)
    assert job.id_pixel_values.shape == (10, 3, 224, 224) and job.id_image_embeds is None
    assert len(pickle.dumps(job)) < 8_000_000
    direct = service.run_job(job)
    output = pickle.loads(pickle.dumps(service.run_job(pickle.loads(pickle.dumps(job)))))
    assert np.array_equal(pixels(direct.images)[0], pixels(output.images)[0])
    assert torch.equal(direct.id_image_embeds, output.id_image_embeds)

    service._remember(job, direct)  # what generate() does after a run: cache the encoding
    hit, _ = service.prepare(big)
    assert hit.id_pixel_values is None and hit.id_embeds is None
    assert hit.id_image_embeds is not None
    assert len(pickle.dumps(hit)) < 1_000_000
    again = service.run_job(pickle.loads(pickle.dumps(hit)))
    assert np.array_equal(pixels(direct.images)[0], pixels(again.images)[0])


def test_a_pipeline_with_one_gpu_thread_runs_every_job_there(service):
    """``use_one_gpu_thread`` (a UNet compiled with CUDA graphs, which PyTorch keeps per
    thread): jobs from any caller thread run their steps on the pipeline's one thread, make the
    same images as inline, take the caller's context variables along, and still cancel."""
    import contextvars

    from photomaker.service import runtime

    inline = pixels(service.generate(request(seed=3)).images)
    own = build_service(Settings(tiny=True))
    runtime.use_one_gpu_thread(own.pipe)
    runtime.use_one_gpu_thread(own.pipe)  # idempotent: still one thread
    results = {}
    with unet_calls(own.pipe) as calls:
        jobs = [
            _Job(name, lambda name=name: results.setdefault(name, own.generate(request(seed=3))))
            for name in ("A", "B")
        ]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(120)
            assert job.error is None, job.error
    assert len(set(calls)) == 1 and calls[0].startswith("photomaker-gpu")
    for result in results.values():
        assert all(np.array_equal(x, y) for x, y in zip(pixels(result.images), inline, strict=True))

    var = contextvars.ContextVar("var", default="unset")
    var.set("caller's")
    assert runtime.in_gpu_thread(own.pipe, var.get) == "caller's"
    assert runtime.in_gpu_thread(service.pipe, threading.current_thread) is threading.current_thread()

    cancel = threading.Event()

    def cancel_at_step_2(calls):
        if len(calls) == 2:
            cancel.set()

    with unet_calls(own.pipe, cancel_at_step_2) as calls, pytest.raises(GenerationCancelled):
        own.generate(request(steps=50), cancel=cancel)
    assert len(calls) == 2
