"""The app in-process: create_app() without side effects, the handlers' error looks, cancel,
input checks, the photo preview mapping, settings from an image. A stand-in service keeps
these fast; the real one is driven through the running app in test_app_api.py."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from photomaker import params
from photomaker import web as app
from photomaker.errors import GenerationCancelled, PhotoMakerInputError, PhotoMakerServerError
from photomaker.metadata import build_metadata, save_png
from photomaker.service import GenerationResult
from photomaker.settings import Settings
from photomaker.styles import default_styles

ROOT = Path(__file__).resolve().parent.parent


class StandInService:
    """What the app reads from a PhotoMakerService; generate() does what the test says."""

    trigger_word = "img"
    pm_version = "v2"
    needs_faces = True
    skip_faceless_photos = False

    def __init__(self, generate=None):
        self.style_names = default_styles().names
        self.pipe = SimpleNamespace(scheduler=None)
        self._generate = generate
        self.calls = []

    def generate(self, request, run_job=None, cancel=None):
        self.calls.append((request, cancel))
        return self._generate(request, cancel)


def run_generate(handlers: app.AppHandlers, **changes):
    args = dict(
        photos=["a.png"], prompt="a man img", negative_prompt="", style="Photographic (Default)",
        aspect_ratio="1:1 square (1024×1024)", steps=20, style_strength=20, num_outputs=1,
        guidance_scale=5.0, seed=1, randomize_seed=False,
    )  # fmt: skip
    args.update(changes)
    return asyncio.run(handlers.generate(**args))


def handlers_raising(error: Exception) -> app.AppHandlers:
    def generate(request, cancel):
        raise error

    return app.AppHandlers(StandInService(generate), Settings(tiny=True))


# --------------------------------------------------------------------------- the factory


def test_importing_the_app_builds_nothing():
    code = (
        "import sys, app; "
        "assert 'photomaker.loading' not in sys.modules, 'import built a service'; "
        "assert 'demo' not in vars(app); print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_create_app_takes_a_service_and_css_theme_apply_without_launch_arguments():
    demo = app.create_app(Settings(tiny=True), service=StandInService())
    assert isinstance(demo, gr.Blocks)
    # An embedding app (or Gradio's reload mode) calls launch() with no css/theme.
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None)
    try:
        with urllib.request.urlopen(demo.local_url + "config", timeout=30) as response:
            config = json.load(response)
        assert "#photo-view" in config["css"]
        assert config["theme"] == app.theme().name
        assert demo.delete_cache == app.DELETE_CACHE
    finally:
        demo.close()


def test_compile_is_refused_on_zerogpu(monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    with pytest.raises(PhotoMakerInputError, match="not supported on ZeroGPU"):
        app.create_app(Settings(tiny=True, compile=True), service=StandInService())
    monkeypatch.delenv("SPACES_ZERO_GPU")
    app.check_settings(Settings(tiny=True, compile=True))  # fine elsewhere


# --------------------------------------------------------------------------- error looks


def test_user_mistakes_and_server_failures_look_different(caplog):
    with pytest.raises(gr.Error) as mistake:
        run_generate(handlers_raising(PhotoMakerInputError("The prompt has no trigger word.")))
    assert mistake.value.title == "Please check your input"
    assert mistake.value.message == "The prompt has no trigger word."

    oom = PhotoMakerServerError("Out of GPU memory: try fewer images.", error_id="abc123")
    with pytest.raises(gr.Error) as failure:
        run_generate(handlers_raising(oom))
    assert failure.value.title == "Something went wrong on the server"
    assert "Out of GPU memory" in failure.value.message and "abc123" in failure.value.message

    caplog.set_level(logging.ERROR, logger="photomaker.app")
    with pytest.raises(gr.Error) as bug:
        run_generate(handlers_raising(KeyError("secret internals")))
    message = bug.value.message
    assert bug.value.title == "Something went wrong on the server"
    assert "secret internals" not in message and "Traceback" not in message
    error_id = message.rsplit("error id ", 1)[1].rstrip(")")
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log


def test_cancelling_the_handler_sets_the_service_cancel_event():
    started, stopped = threading.Event(), threading.Event()

    def generate(request, cancel):
        started.set()
        assert cancel.wait(30), "the cancel event was never set"
        stopped.set()
        raise GenerationCancelled("stopped at step 3")

    handlers = app.AppHandlers(StandInService(generate), Settings(tiny=True))

    async def scenario():
        task = asyncio.create_task(
            handlers.generate(
                ["a.png"],
                "a man img",
                "",
                "Photographic (Default)",
                "1:1 square (1024×1024)",
                20,
                20,
                1,
                5.0,
                1,
                False,
            )  # fmt: skip
        )
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()  # what Gradio does for the Stop button or a client's cancel
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert stopped.wait(10)


def test_results_are_pngs_named_by_seed_with_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))

    def generate(request, cancel):
        images = [Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")]
        return GenerationResult(
            images=images, seed=9, prompt="p img", negative_prompt="n", style=request.style,
            width=64, height=64, start_merge_step=4, face_reports=None,
            messages=["The merge step is the last step."], timings={}, steps=20,
            style_strength=20.0, guidance_scale=5.0, user_prompt=request.prompt,
            user_negative_prompt="",
        )  # fmt: skip

    handlers = app.AppHandlers(StandInService(generate), Settings(tiny=True))
    gallery, seed = run_generate(handlers, num_outputs=2)
    assert seed == 9
    paths = [Path(p) for p, _ in gallery]
    assert [p.name for p in paths] == ["photomaker-9-1.png", "photomaker-9-2.png"]
    assert all(p.is_relative_to(tmp_path) for p in paths)  # in Gradio's cache: delete_cache
    submit, stop, shown, reuse, download = app.AppHandlers.finished(gallery, seed, True)
    assert shown == "9"
    assert reuse["interactive"] is True and download["visible"] is True
    assert Path(download["value"]).name == "photomaker-9.zip"


def test_the_page_sends_its_sketch_only_when_the_doodle_is_enabled(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))

    def generate(request, cancel):
        return GenerationResult(
            images=[Image.new("RGB", (8, 8))], seed=1, prompt="p img", negative_prompt="",
            style=request.style, width=8, height=8, start_merge_step=0, face_reports=None,
            messages=[], timings={}, likeness=[0.5],
        )  # fmt: skip

    service = StandInService(generate)
    handlers = app.AppHandlers(service, Settings(tiny=True))
    drawing = Image.new("RGBA", (32, 32))
    sketch = {"background": None, "layers": [drawing], "composite": drawing}
    page = [
        ["a.png"], "a man img", "", "Photographic (Default)", "1:1 square (1024×1024)", 20, 20,
        1, 5.0, 1, False,
    ]  # fmt: skip
    for enabled, expected in ((False, None), (True, drawing)):
        gallery, _ = asyncio.run(handlers.generate_from_page(*page, enabled, sketch, 0.6, 0.9))
        request = service.calls[-1][0]
        assert request.doodle is expected
        assert (request.adapter_conditioning_scale, request.adapter_conditioning_factor) == (
            0.6,
            0.9,
        )
        assert gallery[0][1].endswith(" · likeness 0.50")  # the caption carries the likeness
    assert app.AppHandlers.read_doodle(True, None) is None
    run_generate(handlers)  # the API's call without the doodle parameters: their defaults
    request = service.calls[-1][0]
    assert request.doodle is None and request.adapter_conditioning_scale == 0.7


# --------------------------------------------------------------------------- input checks

STEPS = params.param("steps")
SEED = params.param("seed")


@pytest.mark.parametrize(
    "param, value, expected",
    [
        (STEPS, 30, 30),
        (STEPS, 30.0, 30),
        (SEED, None, None),
        (params.Param("g", "number", "G", "", low=0, high=20), 7, 7.0),
        (params.Param("r", "bool", "R", ""), False, False),
        (params.Param("s", "choice", "S", "", choices=("a", "b")), "b", "b"),
    ],
)
def test_good_values_pass(param, value, expected):
    assert params.check_value(param, value) == expected


@pytest.mark.parametrize(
    "param, value, message",
    [
        (STEPS, 2.5, "whole number .* got 2.5"),
        (STEPS, "abc", "got 'abc'"),
        (STEPS, None, "required"),
        (STEPS, float("nan"), "got nan"),
        (STEPS, True, "got True"),
        (STEPS, 0, "from 1 to 100, got 0"),
        (SEED, 1.5, "whole number"),
        (SEED, 2**31, "from 0 to 2147483647, got 2147483648"),  # not 2.14748e+09
        (params.Param("r", "bool", "Randomize seed", ""), 1, "true or false"),
        (params.Param("s", "choice", "Style", "", choices=("a",)), None, "required"),
        (params.Param("p", "text", "Prompt", ""), "x" * 5000, "too long; keep it to 2000 at most"),
    ],
)
def test_bad_values_name_the_parameter(param, value, message):
    with pytest.raises(
        PhotoMakerInputError, match=rf"^{param.label} \({param.name}\): .*{message}"
    ):
        params.check_value(param, value)


@pytest.mark.parametrize(
    "payload, message",
    [
        ("abc", "expected a list"),
        (
            {"path": "/tmp/gradio/x/me.jpg"},
            r"expected a list of image files, got one file; put it in a list .*\[handle_file",
        ),
        ([{"path": 3}], "item 1 is not a file"),
        ([{"path": "/etc/passwd"}], "photo 1 names a file on the server"),
    ],
)
def test_file_values_must_be_uploads(payload, message):
    with pytest.raises(PhotoMakerInputError, match=rf"Photos \(photos\): {message}"):
        app.check_file_payload("Photos", "photos", payload)
    app.check_file_payload("Photos", "photos", [{"path": "https://example.com/a.png"}])


@pytest.mark.parametrize(
    "payload, message",
    [
        ("abc", "expected an image file or null"),
        ([{"path": "https://example.com/a.png"}], "expected an image file or null"),
        ({"url": "data:image/png;base64,AAAA"}, "the value is not a file"),
        ({"path": "/etc/passwd"}, "it names a file on the server .* handle_file\\('doodle.png'\\)"),
    ],
)
def test_the_doodle_must_be_one_upload_or_none(payload, message):
    with pytest.raises(PhotoMakerInputError, match=rf"Doodle \(doodle\): {message}"):
        app.check_file_payload("Doodle", "doodle", payload, multiple=False)
    app.check_file_payload("Doodle", "doodle", None, multiple=False)
    app.check_file_payload("Doodle", "doodle", {"path": "https://example.com/a.png"}, False)


# --------------------------------------------------------------------------- photo area


def test_the_preview_maps_back_to_the_uploads():
    photos = ["/up/a.jpg", "/up/b.heic", "/up/c.png"]
    view = [("/cache/1.png", "1 ✓ face"), ("/cache/3.png", "3 ✗ no face"), ("/up/new.jpg", None)]
    assert app.AppHandlers.photos_from_view(view, photos) == [
        "/up/a.jpg",
        "/up/c.png",
        "/up/new.jpg",
    ]
    unchanged = [("/cache/1.png", "1 ✓ face"), ("/cache/2.png", "2 ✓"), ("/cache/3.png", "3 ✓")]
    assert app.AppHandlers.photos_from_view(unchanged, photos) == gr.skip()
    assert app.AppHandlers.photos_from_view([], photos) is None


class PhotoLoadingService(StandInService):
    """Loads photos as the service does (its limit of 10); never gets to the faces."""

    def load_photos(self, photos):
        from photomaker.images import load_id_images

        return load_id_images(photos, max_photos=10)

    def analyze_photos(self, photos):
        self.load_photos(photos)
        raise AssertionError("not reached in these tests")


def test_too_many_photos_stay_in_view_with_the_error(tmp_path):
    """12 photos: all stay in the preview (11 and 12 marked), so the preview's round trip
    keeps the 12 and the error, where it used to show 10 and then call them ready."""
    paths = []
    for i in range(12):
        paths.append(str(tmp_path / f"p{i}.png"))
        Image.new("RGB", (128, 128), (i * 20, 90, 90)).save(paths[-1])
    handlers = app.AppHandlers(PhotoLoadingService(), Settings())
    check = handlers.check_photos(paths)
    assert not check.usable and check.kind == "error"
    assert "12 ID photos were given; the limit is 10. Remove 2" in check.status
    captions = [caption for _, caption in check.items]
    assert len(captions) == 12
    assert captions[10:] == ["11 ✗ over the limit of 10", "12 ✗ over the limit of 10"]
    assert captions[0] == "1 · not checked yet"
    assert app.AppHandlers.photos_from_view(check.items, paths) == gr.skip()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    check = handlers.check_photos([paths[0], str(broken)])
    assert [c for _, c in check.items] == ["1 · not checked yet", "2 ✗ not readable"]


def test_load_settings_restores_the_form(tmp_path):
    result = GenerationResult(
        images=[Image.new("RGB", (8, 8))], seed=123, prompt="styled", negative_prompt="sn",
        style="Watercolor", width=1024, height=1024, start_merge_step=1, face_reports=None,
        messages=[], timings={}, steps=4, style_strength=80.0, guidance_scale=7.5,
        user_prompt="a woman img reading", user_negative_prompt="blurry",
    )  # fmt: skip
    path = save_png(result.images[0], tmp_path / "x.png", build_metadata(result, Settings()))
    handlers = app.AppHandlers(StandInService(), Settings())
    values = handlers.load_settings(str(path))
    (
        prompt,
        negative,
        style,
        ratio,
        steps,
        strength,
        count,
        guidance,
        seed,
        randomize,
        adv,
        *doodle,
        mode,
        style_image_scale,
        doodle_on,
        style_area,
    ) = values
    assert (prompt, negative, style) == ("a woman img reading", "blurry", "Watercolor")
    assert doodle == [gr.update(), gr.update()]  # made without a doodle: its sliders stay
    assert mode == "Quality"  # PNGs from before the fast mode were made in quality mode
    assert style_image_scale == gr.update()  # made without a style image: its slider stays
    assert (doodle_on, style_area) == (gr.update(), gr.update())  # neither section opens
    assert ratio == "1:1 square (1024×1024)"
    assert steps["value"] == 4 and steps["minimum"] == 4  # below the UI's 20: range widened
    assert strength["value"] == 80 and strength["maximum"] == 80
    assert guidance["value"] == 7.5 and seed["value"] == 123 and randomize is False
    result.doodle, result.adapter_conditioning_scale, result.adapter_conditioning_factor = (
        True, 0.3, 0.9,
    )  # fmt: skip
    path = save_png(result.images[0], tmp_path / "d.png", build_metadata(result, Settings()))
    *_, scale, factor, _mode, _style_scale, doodle_on, style_area = handlers.load_settings(str(path))
    assert scale["value"] == 0.3 and scale["minimum"] == 0.3  # below the UI's 0.5: widened
    assert factor["value"] == 0.9
    # The doodle section opens (to draw it again) where the server has the doodle.
    assert (doodle_on, style_area) == (gr.update(), gr.update())
    handlers.service.doodle_available = handlers.service.style_image_available = True
    assert handlers.load_settings(str(path))[-2:] == (gr.update(value=True), gr.update())
    result.style_image = True
    path = save_png(result.images[0], tmp_path / "s.png", build_metadata(result, Settings()))
    assert handlers.load_settings(str(path))[-1] == gr.update(open=True)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(gr.Error, match="no PhotoMaker settings") as error:
        handlers.load_settings(str(plain))
    assert error.value.title == "Please check your input"


def test_the_merge_hint_warns_when_the_identity_would_not_come_in():
    # merge step 10: steps 0-10 (from 0) text only, the identity from the 12th step (from 1)
    assert app.merge_hint(50, 20) == "The identity comes in at step 12 of 50."
    assert "never comes in" in app.merge_hint(4, 100)
    assert "never comes in" in app.merge_hint(4, 75)  # merge step 3 of 0-3: none left
    assert "only at the last step" in app.merge_hint(4, 50)  # merge step 2: steps 0-2 text
    assert "never comes in" in app.merge_hint(8, 90) and "only at" in app.merge_hint(8, 80)
    assert app.merge_hint(None, 20) == ""


def test_no_result_means_no_seed_to_reuse():
    submit, stop, shown, reuse, download = app.AppHandlers.finished([], 0, True)
    assert shown == "" and reuse["interactive"] is False and download["visible"] is False
    assert app.AppHandlers.reuse_seed("")[0] == gr.update()
