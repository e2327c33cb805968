"""The fast mode through the table (photomaker/params.py ``fast``): the service, the PNG
metadata, the GPU estimate, the CLI's ``--fast`` and a server without a fast LoRA.

The library side (the LoRA, the scheduler swap, the FLOPs) is tests/test_fast.py's; here the
tiny service built from the settings carries the tiny distillation LoRA (``--tiny``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from photomaker import fast
from photomaker.cli import EXIT_USER_ERROR, main
from photomaker.errors import PhotoMakerInputError
from photomaker.loading import build_service
from photomaker.metadata import build_metadata, parameters_text, read_metadata
from photomaker.service import merge_step
from photomaker.settings import Settings
from tests.test_service_extras import PROMPT, face_photo, pixels, request


@pytest.fixture(scope="module")
def service():
    return build_service(Settings(tiny=True))


class UNetWatch:
    """Each UNet call during a generation: its batch, and the scheduler and adapter state."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.calls: list[tuple[int, str, str, bool]] = []

    def __enter__(self):
        def hook(module, args, kwargs):
            scheduler = self.pipe.scheduler
            spacing = scheduler.config.get("timestep_spacing")
            self.calls.append(
                (args[0].shape[0], type(scheduler).__name__, spacing, fast.fast_enabled(self.pipe))
            )

        self.handle = self.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_the_tiny_service_offers_the_fast_mode(service):
    mode = service.fast_mode
    assert service.fast_available and mode is fast.fast_mode_of(service.pipe)
    assert (mode.steps, mode.guidance_scale) == (8, 0.0)


def test_fast_runs_the_modes_steps_and_guidance_and_quality_comes_back_exactly(service):
    quality_before = service.generate(request())
    with UNetWatch(service.pipe) as watch:
        # The request's steps and guidance are replaced by the mode's.
        fast_result = service.generate(request(fast=True, steps=50, guidance_scale=7.5))
    quality_after = service.generate(request())
    # 8 steps, no classifier-free guidance (batch 1, one call per step), with the mode's
    # scheduler and the adapter on for every call.
    assert watch.calls == [(1, "EulerDiscreteScheduler", "trailing", True)] * 8
    assert (fast_result.steps, fast_result.guidance_scale) == (8, 0.0)
    assert fast_result.start_merge_step == merge_step(20, 8) == 1
    assert fast_result.fast_mode["mode"] == "fast"
    assert not np.array_equal(pixels(fast_result)[0], pixels(quality_before)[0])
    for before, after in zip(pixels(quality_before), pixels(quality_after), strict=True):
        assert np.array_equal(before, after)
    assert quality_before.fast_mode is None and quality_before.steps == 3
    assert not fast.fast_enabled(service.pipe)
    assert service.pipe.scheduler.config.timestep_spacing == "leading"


def test_fast_images_repeat_whatever_steps_and_guidance_the_request_sent(service):
    first = service.generate(request(fast=True, steps=2, guidance_scale=3.0))
    second = service.generate(request(fast=True, steps=90, guidance_scale=12.0))
    assert np.array_equal(pixels(first)[0], pixels(second)[0])
    assert " · fast, 8 steps · " in first.captions[0]


def test_the_style_strength_still_sets_the_merge_step_and_warns_when_never(service):
    result = service.generate(request(fast=True, style_strength=50))
    assert result.start_merge_step == 4  # 50% of 8 steps
    assert not any("never merged in" in m for m in result.messages)
    late = service.generate(request(fast=True, style_strength=100))
    assert late.start_merge_step == 8
    assert any("8 step(s)" in m and "never merged in" in m for m in late.messages)


def test_the_png_records_the_mode_and_the_steps_and_guidance_used(service, tmp_path):
    settings = Settings(tiny=True)
    result = service.generate(request(fast=True, steps=30, guidance_scale=6.0))
    meta = build_metadata(result, settings, scheduler="EulerDiscreteScheduler")
    assert (meta["mode"], meta["steps"], meta["guidance_scale"]) == ("fast", 8, 0.0)
    assert meta["fast_lora"] == "tiny random weights"
    assert meta["fast_scheduler"] == "EulerDiscreteScheduler (timestep_spacing=trailing)"
    assert meta["sampler"] == "Euler trailing" and meta["start_merge_step"] == 1
    text = parameters_text(meta)
    assert "Steps: 8, Sampler: Euler trailing, Mode: fast, CFG scale: 0.0" in text
    quality = build_metadata(
        service.generate(request()), settings, scheduler="EulerDiscreteScheduler"
    )
    assert (quality["mode"], quality["fast_lora"], quality["sampler"]) == ("quality", None, "Euler")


def test_the_gpu_estimate_follows_the_mode(service):
    quality, _ = service.prepare(request(num_outputs=4, steps=50))
    fast_job, _ = service.prepare(request(num_outputs=4, steps=50, fast=True))
    quality.width = quality.height = fast_job.width = fast_job.height = 1024
    assert (fast_job.fast, fast_job.steps, fast_job.unet_calls_per_image) == (True, 8, 8)
    assert quality.unet_calls_per_image == 100
    assert service.estimate_seconds(fast_job) < service.estimate_seconds(quality) // 2


def test_fast_must_be_a_boolean(service):
    with pytest.raises(PhotoMakerInputError, match=r"\(fast\): expected true or false"):
        service.generate(request(fast="yes"))


def test_a_server_without_a_fast_lora_refuses_fast_and_names_the_setting():
    plain = build_service(Settings(tiny=True, fast_lora="none"))
    assert not plain.fast_available and plain.fast_mode is None
    with pytest.raises(PhotoMakerInputError, match="--fast-lora") as error:
        plain.generate(request(fast=True))
    assert "Fast mode (fast) is off on this server" in str(error.value)
    assert len(plain.generate(request()).images) == 1  # quality still works


# --------------------------------------------------------------------------- the page


def test_the_page_choice_sets_and_locks_the_sliders_and_says_what_it_trades(service):
    from photomaker.web.handlers import FAST, QUALITY, AppHandlers

    handlers = AppHandlers(service, Settings(tiny=True))
    steps, guidance, note, kept = handlers.mode_changed(FAST)
    assert (steps["value"], steps["minimum"], steps["interactive"]) == (8, 1, False)
    assert (guidance["value"], guidance["interactive"]) == (0.0, False)
    assert note == service.fast_mode.trade() and "negative prompt has no effect" in note
    steps, guidance, note, kept = handlers.mode_changed(QUALITY, 8, 0.0, kept)
    assert (steps["value"], steps["interactive"], guidance["value"]) == (4, True, 5.0)
    assert note.startswith("Quality: 4 steps") and kept is None
    # The user's own quality values come back after a trip through Fast.
    *_, kept = handlers.mode_changed(FAST, 7, 9.0, None)
    assert kept == (7, 9.0)
    steps, guidance, _, kept = handlers.mode_changed(QUALITY, 8, 0.0, kept)
    assert (steps["value"], guidance["value"], kept) == (7, 9.0, None)


def test_load_settings_of_a_fast_png_picks_fast_and_its_values(service, tmp_path):
    from photomaker.metadata import save_png
    from photomaker.web.handlers import AppHandlers

    settings = Settings(tiny=True)
    result = service.generate(request(fast=True))
    path = save_png(result.images[0], tmp_path / "f.png", build_metadata(result, settings))
    handlers = AppHandlers(service, settings)
    loaded = handlers.load_settings(str(path))
    values = dict(zip(handlers.settings_outputs(), loaded, strict=True))
    assert values["fast"] == "Fast"
    assert (values["steps"]["value"], values["steps"]["interactive"]) == (8, False)
    assert (values["guidance_scale"]["value"], values["guidance_scale"]["interactive"]) == (
        0,
        False,
    )


# --------------------------------------------------------------------------- the CLI


def test_the_cli_fast_flag(tmp_path, capsys):
    photo = tmp_path / "me.png"
    face_photo(0).save(photo)
    argv = ["generate", "--tiny", "--photos", str(photo), "--prompt", PROMPT, "--seed", "3",
            "--steps", "2"]  # fmt: skip
    assert main([*argv, "--fast", "--out", str(tmp_path / "fast")]) == 0
    err = capsys.readouterr().err
    assert "note: fast mode: SDXL-Lightning 8-step, 8 steps, guidance 0 (--steps not used)" in err
    assert main([*argv, "--out", str(tmp_path / "quality")]) == 0
    (fast_png,) = (tmp_path / "fast").glob("*.png")
    (quality_png,) = (tmp_path / "quality").glob("*.png")
    meta = read_metadata(fast_png)
    assert (meta["mode"], meta["steps"], meta["guidance_scale"]) == ("fast", 8, 0.0)
    assert read_metadata(quality_png)["mode"] == "quality"
    assert not np.array_equal(np.asarray(Image.open(fast_png)), np.asarray(Image.open(quality_png)))


def test_the_cli_fast_flag_without_a_fast_lora_is_a_user_error(tmp_path, capsys):
    photo = tmp_path / "me.png"
    face_photo(0).save(photo)
    argv = ["generate", "--tiny", "--photos", str(photo), "--prompt", PROMPT, "--fast",
            "--fast-lora", "none", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == EXIT_USER_ERROR
    assert "error: --fast needs a fast LoRA, and --fast-lora" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
