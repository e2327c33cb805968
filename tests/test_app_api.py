"""The app's public API, through gradio_client, against `app.py` in tiny mode.

One app process serves this module and the browser test (:func:`app_url`); it listens on
127.0.0.1 only, on a free port, and is stopped when the test session ends.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120
PARAMETERS = [
    "photos", "prompt", "negative_prompt", "style", "aspect_ratio", "steps", "style_strength",
    "num_outputs", "guidance_scale", "seed", "randomize_seed", "doodle",
    "adapter_conditioning_scale", "adapter_conditioning_factor", "fast", "style_image",
    "style_image_scale",
]  # fmt: skip
#: The parameters added with the doodle: optional, with defaults that change nothing.
DOODLE_PARAMETERS = {
    "doodle": None,
    "adapter_conditioning_scale": 0.7,
    "adapter_conditioning_factor": 0.8,
}
#: The parameter added with the fast mode: false (quality) unless asked for.
FAST_PARAMETERS = {"fast": False}
#: The parameters added with the style image: none, and a strength that is then unused.
STYLE_PARAMETERS = {"style_image": None, "style_image_scale": 0.5}
LIKENESS = r" · (likeness -?\d\.\d\d|no face found)$"

_server: dict = {}  # the app most tests use
#: Every app started, by name: "default" (_server) and others with settings of their own.
_servers: dict[str, dict] = {"default": _server}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(server: dict) -> None:
    proc = server.get("proc")
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def app_url(name: str = "default", settings_env: dict[str, str] | None = None) -> str:
    """Start `python app.py --tiny` once per test session (``name``: another app, with
    ``settings_env`` as PHOTOMAKER_* variables of its own); return its URL."""
    server = _servers.setdefault(name, {})
    if "url" in server:
        if server["proc"].poll() is not None:
            pytest.fail("the app process died; see " + str(server["log"]))
        return server["url"]
    port = _free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"photomaker-app-{port}.log"
    env = {
        **os.environ,
        "PHOTOMAKER_TINY": "1",
        "PHOTOMAKER_HOST": "127.0.0.1",
        "PHOTOMAKER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    env.pop("PHOTOMAKER_VERSION", None)
    env.pop("PHOTOMAKER_PM_VERSION", None)
    env.update(settings_env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--tiny"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server.update(proc=proc, log=log)
    atexit.register(_stop, server)
    url = f"http://127.0.0.1:{port}/"
    started = time.monotonic()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2) as response:
                if response.status == 200:
                    server.update(url=url, startup_s=time.monotonic() - started)
                    return url
        except OSError:
            time.sleep(0.5)
    _stop(server)
    pytest.fail(f"app.py was not up within {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def face_file(folder: Path, variant: int) -> str:
    from photomaker.tiny_faces import draw_tiny_face

    image = Image.new("RGB", (256, 256), (255, 255, 255))
    draw_tiny_face(image, (80, 60, 176, 190), variant=variant)
    path = folder / f"face{variant}.png"
    image.save(path)
    return str(path)


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    return Client(app_url(), verbose=False, download_files=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    faces = [face_file(folder, 0), face_file(folder, 1)]
    blank = folder / "blank.png"
    Image.new("RGB", (256, 256), (90, 120, 200)).save(blank)
    text = folder / "notes.txt"
    text.write_text("not an image")
    fake = folder / "fake.png"
    fake.write_text("not an image either")
    return {"faces": faces, "blank": str(blank), "text": str(text), "fake": str(fake)}


def generate_kwargs(photo_paths, **changes) -> dict:
    """A small /generate request (2 steps, one image, seed 1) with ``changes``."""
    from gradio_client import handle_file

    kwargs = dict(
        photos=[handle_file(p) for p in photo_paths],
        prompt="a photo of a man img in the snow",
        negative_prompt="blurry",
        style="Photographic (Default)",
        aspect_ratio="1:1 square (1024×1024)",
        steps=2,
        style_strength=20,
        num_outputs=1,
        guidance_scale=5.0,
        seed=1,
        randomize_seed=False,
    )
    kwargs.update(changes)
    return kwargs


def call(client, photo_paths, **changes):
    return client.predict(**generate_kwargs(photo_paths, **changes), api_name="/generate")


def load(gallery) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"])) for item in gallery]


def test_one_public_endpoint(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert list(info["named_endpoints"]) == ["/generate"]
    assert not info["unnamed_endpoints"]
    endpoint = info["named_endpoints"]["/generate"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == PARAMETERS
    assert [r["component"] for r in endpoint["returns"]] == ["Gallery", "Number"]
    defaults = {
        p["parameter_name"]: (p["parameter_has_default"], p["parameter_default"])
        for p in endpoint["parameters"]
    }
    later = {**DOODLE_PARAMETERS, **FAST_PARAMETERS, **STYLE_PARAMETERS}
    assert {name: defaults[name] for name in later} == {
        name: (True, value) for name, value in later.items()
    }
    # photos and prompt must be given (as the README says); the rest have the UI's values
    assert [n for n, (has, _) in defaults.items() if not has] == ["photos", "prompt"]


def test_generate_two_photos(client, photos):
    gallery, seed = call(client, photos["faces"], num_outputs=3, randomize_seed=True, seed=0)
    assert len(gallery) == 3
    assert isinstance(seed, int) and 0 <= seed < 2**31
    assert all(item["caption"].startswith(f"seed {seed} · Photographic") for item in gallery)
    assert all(re.search(LIKENESS, item["caption"]) for item in gallery)
    assert Image.open(gallery[0]["image"]).size == (64, 64)
    names = [Path(item["image"]).name for item in gallery]
    assert names == [f"photomaker-{seed}-{n}.png" for n in (1, 2, 3)]


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_iphone_and_avif_photos_generate(client, photos, tmp_path, suffix):
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:
        pass
    path = tmp_path / f"face{suffix}"
    try:
        Image.open(photos["faces"][0]).save(path)
    except (KeyError, OSError) as err:
        pytest.skip(f"this Pillow cannot write {suffix}: {err}")
    gallery, _ = call(client, [str(path), photos["faces"][1]], steps=1)
    assert len(gallery) == 1


def test_results_carry_their_settings(client, photos):
    from photomaker.metadata import read_metadata

    gallery, seed = call(
        client, photos["faces"], num_outputs=2, seed=77, steps=3, style="Watercolor",
        style_strength=40, guidance_scale=6.5, negative_prompt="ugly, café",
    )  # fmt: skip
    meta = read_metadata(gallery[1]["image"])
    assert (meta["seed"], meta["steps"], meta["image"], meta["num_images"]) == (77, 3, 2, 2)
    assert meta["prompt"] == "a photo of a man img in the snow"
    assert meta["negative_prompt"] == "ugly, café"
    assert (meta["style"], meta["style_strength"], meta["guidance_scale"]) == (
        "Watercolor",
        40,
        6.5,
    )
    assert meta["start_merge_step"] == 1  # int(40% of 3 steps)
    assert meta["aspect_ratio"] == "1:1 square (1024×1024)" and meta["tiny"] is True
    assert meta["photomaker_version"] == "v2" and meta["app"] == "photomaker-open"
    assert meta["likeness_text"] in ("no face found", f"likeness {meta['likeness'] or 0:.2f}")
    assert gallery[1]["caption"].endswith(" · " + meta["likeness_text"])
    assert meta["doodle"] is False
    with Image.open(gallery[1]["image"]) as image:
        assert image.info["parameters"].splitlines()[-1].startswith("Steps: 3, Sampler: Euler")
        assert "Likeness: " in image.info["parameters"]


def test_api_page_has_real_examples_and_descriptions(client):
    info = client.view_api(print_info=False, return_format="dict")
    parameters = info["named_endpoints"]["/generate"]["parameters"]
    for parameter in parameters:
        assert parameter["type"].get("description"), parameter["parameter_name"]
    examples = {p["parameter_name"]: p["example_input"] for p in parameters}
    photo = examples["photos"][0]
    assert photo["url"].lower().endswith((".png", ".jpg")) and "pdf" not in photo["url"]
    assert " img " in examples["prompt"] and examples["prompt"] != "Hello!!"
    assert examples["style"] == "Photographic (Default)" and examples["steps"] >= 20
    described = {p["parameter_name"]: p["type"]["description"] for p in parameters}
    assert "1-100" in described["steps"]  # the API's range, not the UI slider's
    assert examples["doodle"] is None  # no doodle in the example: not a random photo
    assert (
        "0-1" in described["adapter_conditioning_scale"]
        and "UI: 0.5-1" in described["adapter_conditioning_factor"]
    )


def test_same_seed_same_images(client, photos):
    first, seed1 = call(client, photos["faces"], num_outputs=2, seed=1234)
    second, seed2 = call(client, photos["faces"], num_outputs=2, seed=1234)
    assert seed1 == seed2 == 1234
    a, b = load(first), load(second)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], a[1])  # two outputs differ from each other


ERRORS = [
    ("no photos", lambda p: ([], {}), "No photos"),
    ("not an image file", lambda p: ([p["text"]], {}), "(?i)invalid file type|not an image|cannot"),
    ("an image name, not an image", lambda p: ([p["fake"]], {}), "Photo 1"),
    (
        "no trigger word",
        lambda p: (p["faces"], {"prompt": "a photo of a man"}),
        "no trigger word 'img'",
    ),
    ("two trigger words", lambda p: (p["faces"], {"prompt": "a man img and a man img"}), "2 times"),
    (
        "a photo without a face",
        lambda p: ([p["faces"][0], p["blank"]], {}),
        r"No face found in photo 2",
    ),
    ("no photo with a face", lambda p: ([p["blank"]], {}), "No face found in the photo"),
    ("unknown style", lambda p: (p["faces"], {"style": "Nope"}), r"Style \(style\): .*Nope"),
    ("unknown aspect ratio", lambda p: (p["faces"], {"aspect_ratio": "5:4"}), "5:4"),
    ("steps out of range", lambda p: (p["faces"], {"steps": 500}), "Steps.*100"),
    ("outputs out of range", lambda p: (p["faces"], {"num_outputs": 9}), "Number of images.*4"),
    ("negative seed", lambda p: (p["faces"], {"seed": -5}), r"Seed \(seed\): .*from 0"),
]


@pytest.mark.parametrize("case, make, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_reach_the_user_and_the_next_request_works(client, photos, case, make, message):
    from gradio_client.exceptions import AppError

    paths, changes = make(photos)
    with pytest.raises(AppError, match=message) as error:
        call(client, paths, **changes)
    assert error.value.title == "Please check your input"
    gallery, _ = call(client, photos["faces"][:1], steps=1)
    assert len(gallery) == 1


# --------------------------------------------------------------------------- hostile input


def raw_generate(data: list) -> tuple[str, object]:
    """POST /generate as raw JSON (no client-side processing); (last SSE event, its data)."""
    import json

    url = app_url() + "gradio_api/call/generate"
    body = json.dumps({"data": data}).encode()  # NaN stays NaN, as a careless client sends it
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{url}/{event_id}", timeout=300) as response:
        lines = response.read().decode().splitlines()
    events = [line[7:] for line in lines if line.startswith("event: ")]
    datas = [line[6:] for line in lines if line.startswith("data: ")]
    return events[-1], json.loads(datas[-1])


def good_payload(photo_files: list[dict]) -> list:
    return [
        photo_files, "a photo of a man img in the snow", "blurry", "Photographic (Default)",
        "1:1 square (1024×1024)", 2, 20, 1, 5.0, 1, False, None, 0.7, 0.8, False, None, 0.5,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uploaded(photos) -> list[dict]:
    """A face photo uploaded the way every client does (POST /gradio_api/upload), as the
    file value /generate takes."""
    import httpx

    with open(photos["faces"][0], "rb") as f:
        response = httpx.post(
            app_url() + "gradio_api/upload", files={"files": ("face0.png", f)}, timeout=30
        )
    response.raise_for_status()
    return [{"path": path, "meta": {"_type": "gradio.FileData"}} for path in response.json()]


BAD_VALUES = {
    "photos": ["abc", 3, [1], {"path": 5}, [{"url": "x"}]],
    "prompt": [3, ["a"], {"x": 1}],
    "negative_prompt": [3, ["a"]],
    "style": ["abc", None, 3, ["Watercolor"]],
    "aspect_ratio": ["abc", None, 1.5],
    "steps": ["abc", None, float("nan"), 2.5, True, 500, [3]],
    "style_strength": ["abc", None, float("nan"), -1, {}],
    "num_outputs": ["abc", None, 2.5, float("inf"), 9],
    "guidance_scale": ["abc", None, float("nan"), 21],
    "seed": ["abc", float("nan"), 1.5, -5, 2**40],
    "randomize_seed": ["abc", None, 1, "true"],
    "doodle": ["abc", 3, [{"path": "x"}], {"url": "data:image/png;base64,AAAA"}, {"path": 5}],
    "adapter_conditioning_scale": ["abc", None, float("nan"), 1.5, -0.1],
    "adapter_conditioning_factor": ["x", None, 2, [0.5]],
    "fast": ["abc", None, 1, "true", [True]],
    "style_image": ["abc", 3, [{"path": "x"}], {"path": 5}],
    "style_image_scale": ["x", None, 1.5, -0.1, float("nan")],
}


@pytest.mark.parametrize(
    "name, value",
    [(name, value) for name, values in BAD_VALUES.items() for value in values],
    ids=[f"{name}={value!r}" for name, values in BAD_VALUES.items() for value in values],
)
def test_wrong_types_name_the_parameter(uploaded, name, value):
    data = good_payload(uploaded)
    data[PARAMETERS.index(name)] = value
    event, payload = raw_generate(data)
    assert event == "error", payload
    assert f"({name})" in payload["error"], payload["error"]
    assert payload["title"] == "Please check your input"
    assert "Traceback" not in payload["error"]


def test_the_api_and_the_service_agree_on_whole_numbers(uploaded):
    from photomaker.errors import PhotoMakerInputError
    from photomaker.service import GenerationRequest, check_request

    for name, value in (("steps", 2.5), ("seed", 1.5)):
        data = good_payload(uploaded)
        data[PARAMETERS.index(name)] = value
        event, payload = raw_generate(data)
        assert event == "error" and "whole number" in payload["error"]  # refused, not rounded
        request = GenerationRequest(photos=[], prompt="a man img", randomize_seed=False)
        setattr(request, name, value)
        with pytest.raises(PhotoMakerInputError, match="whole number"):
            check_request(request)


def test_the_good_payload_works(uploaded):
    event, payload = raw_generate(good_payload(uploaded))
    assert event == "complete", payload
    gallery, seed = payload
    assert seed == 1 and len(gallery) == 1


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../../etc/hosts", "/tmp", "C:\\\\Windows\\\\win.ini"]
)
def test_server_paths_are_refused_with_a_message(uploaded, path):
    data = good_payload([{"path": path, "meta": {"_type": "gradio.FileData"}}])
    event, payload = raw_generate(data)
    assert event == "error"
    message = payload["error"]
    assert "(photos)" in message and "on the server" in message and "handle_file" in message
    assert payload["title"] == "Please check your input"
    event, _ = raw_generate(good_payload(uploaded))  # and the server still serves
    assert event == "complete"


def test_a_request_with_too_few_or_too_many_values_says_how_many(uploaded):
    for data in ([], good_payload(uploaded)[:10], [*good_payload(uploaded), None]):
        event, payload = raw_generate(data)
        assert event == "error"
        assert f"has {len(data)} values; /generate takes 11 to 17" in payload["error"], payload
        assert "Error id" not in payload["error"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x.png", "https://example.invalid/x.png"])
def test_a_url_the_server_cannot_fetch_is_said_so(uploaded, url):
    """A private address (refused by Gradio's SSRF check) and an unknown host: the message
    says the URL could not be fetched, not that a value has the wrong shape."""
    data = good_payload([{"path": url, "meta": {"_type": "gradio.FileData"}}])
    event, payload = raw_generate(data)
    assert event == "error"
    assert "could not be fetched by the server" in payload["error"], payload
    assert "handle_file" in payload["error"] and "Error id" not in payload["error"]


# --------------------------------------------------------------------------- cancel


def _submit(client, photo_paths, **changes):
    from gradio_client import handle_file

    kwargs = dict(
        photos=[handle_file(p) for p in photo_paths],
        prompt="a photo of a man img in the snow",
        negative_prompt="blurry",
        style="Photographic (Default)",
        aspect_ratio="1:1 square (1024×1024)",
        steps=2,
        style_strength=20,
        num_outputs=1,
        guidance_scale=5.0,
        seed=1,
        randomize_seed=False,
    )
    kwargs.update(changes)
    return client.submit(**kwargs, api_name="/generate")


def test_cancel_does_not_disturb_other_jobs(photos):
    """A user cancels a long job mid-run while two other users wait: both get exactly the
    images of their solo runs, and the cancelled job's worker stops instead of running on."""
    from gradio_client import Client
    from gradio_client.utils import Status

    url = app_url()
    others = [
        dict(seed=11, num_outputs=2, steps=6),
        dict(seed=12, num_outputs=1, steps=8, style="Watercolor"),
    ]
    solo_client = Client(url, verbose=False)
    solo = [load(_submit(solo_client, photos["faces"], **o).result(timeout=300)[0]) for o in others]

    victim_client, *other_clients = (Client(url, verbose=False) for _ in range(3))
    victim = _submit(victim_client, photos["faces"], seed=5, steps=100, num_outputs=4)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it is denoising (step progress shown)
        status = victim.status()
        if status.code in (Status.PROCESSING, Status.PROGRESS) and status.progress_data:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the long job never started denoising: {victim.status()}")
    jobs = [_submit(c, photos["faces"], **o) for c, o in zip(other_clients, others, strict=True)]
    time.sleep(0.5)  # both are queued behind the running job
    assert victim.cancel()
    results = [load(job.result(timeout=300)[0]) for job in jobs]
    for got, want in zip(results, solo, strict=True):
        assert len(got) == len(want)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    log = _server["log"]
    deadline = time.monotonic() + 60
    while "a cancelled generation stopped" not in log.read_text():
        assert time.monotonic() < deadline, "the cancelled job did not stop at a step"
        time.sleep(0.5)


# --------------------------------------------------------------------------- the doodle


@pytest.fixture(scope="module")
def sketch(tmp_path_factory) -> str:
    """A doodle as the Sketchpad draws it: black strokes on a transparent canvas."""
    from PIL import ImageDraw

    canvas = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((70, 30, 230, 220), outline=(0, 0, 0, 255), width=12)
    draw.line((150, 220, 150, 295), fill=(0, 0, 0, 255), width=12)
    path = tmp_path_factory.mktemp("doodle") / "doodle.png"
    canvas.save(path)
    return str(path)


def test_a_doodle_changes_the_images_and_is_recorded(client, photos, sketch):
    from gradio_client import handle_file

    from photomaker.metadata import read_metadata

    plain, _ = call(client, photos["faces"], steps=3, seed=21)
    doodled, _ = call(client, photos["faces"], steps=3, seed=21, doodle=handle_file(sketch))
    again, _ = call(client, photos["faces"], steps=3, seed=21, doodle=handle_file(sketch))
    assert not np.array_equal(load(plain)[0], load(doodled)[0])
    assert np.array_equal(load(doodled)[0], load(again)[0])
    meta = read_metadata(doodled[0]["image"])
    assert meta["doodle"] is True and meta["doodle_adapter"] == "tiny random weights"
    assert (meta["adapter_conditioning_scale"], meta["adapter_conditioning_factor"]) == (0.7, 0.8)
    assert re.search(LIKENESS, doodled[0]["caption"])
    full, _ = call(
        client, photos["faces"], steps=3, seed=21, doodle=handle_file(sketch),
        adapter_conditioning_scale=1.0, adapter_conditioning_factor=1.0,
    )  # fmt: skip
    assert not np.array_equal(load(full)[0], load(doodled)[0])
    assert read_metadata(full[0]["image"])["adapter_conditioning_scale"] == 1


def test_a_request_from_before_the_doodle_runs_as_before(uploaded):
    """Eleven values, as raw clients sent them before the doodle: the same images."""
    old_event, old = raw_generate(good_payload(uploaded)[:11])
    new_event, new = raw_generate(good_payload(uploaded))
    assert (old_event, new_event) == ("complete", "complete"), (old, new)
    old_image, new_image = (np.asarray(Image.open(g[0][0]["image"]["path"])) for g in (old, new))
    assert np.array_equal(old_image, new_image)


def test_the_fast_mode_through_the_api(client, photos):
    """fast=True: the mode's steps and guidance in place of the request's, recorded in the
    PNG, different images; quality around it unchanged."""
    from photomaker.metadata import read_metadata

    quality, _ = call(client, photos["faces"], steps=3, seed=31)
    fast, seed = call(client, photos["faces"], steps=3, seed=31, fast=True)
    again, _ = call(client, photos["faces"], steps=3, seed=31, fast=False)
    assert seed == 31 and not np.array_equal(load(quality)[0], load(fast)[0])
    assert np.array_equal(load(quality)[0], load(again)[0])
    meta = read_metadata(fast[0]["image"])
    assert (meta["mode"], meta["steps"], meta["guidance_scale"]) == ("fast", 8, 0.0)
    assert meta["start_merge_step"] == 1  # 20% of the mode's 8 steps
    assert read_metadata(quality[0]["image"])["mode"] == "quality"
    assert " · fast, 8 steps · " in fast[0]["caption"]
    assert re.search(LIKENESS, fast[0]["caption"])


def test_a_request_from_before_the_fast_mode_runs_as_before(uploaded):
    """Fourteen values, as raw clients sent them before the fast mode: the same images as
    with fast=false."""
    old_event, old = raw_generate(good_payload(uploaded)[:14])
    new_event, new = raw_generate(good_payload(uploaded))
    assert (old_event, new_event) == ("complete", "complete"), (old, new)
    old_image, new_image = (np.asarray(Image.open(g[0][0]["image"]["path"])) for g in (old, new))
    assert np.array_equal(old_image, new_image)


def test_a_style_image_through_the_api(client, photos, sketch):
    """A style image changes the images and is recorded; requests from before it (fourteen
    or fifteen values) give the same images as with none."""
    from gradio_client import handle_file

    from photomaker.metadata import read_metadata

    plain, _ = call(client, photos["faces"], steps=3, seed=41)
    styled, _ = call(
        client, photos["faces"], steps=3, seed=41, style_image=handle_file(sketch),
        style_image_scale=1.0,
    )  # fmt: skip
    assert not np.array_equal(load(plain)[0], load(styled)[0])
    meta = read_metadata(styled[0]["image"])
    assert (meta["style_image"], meta["style_image_scale"]) == (True, 1)
    assert read_metadata(plain[0]["image"])["style_image"] is False


def test_a_request_from_before_the_style_image_runs_as_before(uploaded):
    new_event, new = raw_generate(good_payload(uploaded))
    for length in (14, 15):
        old_event, old = raw_generate(good_payload(uploaded)[:length])
        assert (old_event, new_event) == ("complete", "complete"), (old, new)
        old_image, new_image = (
            np.asarray(Image.open(g[0][0]["image"]["path"])) for g in (old, new)
        )
        assert np.array_equal(old_image, new_image)


def test_a_doodle_that_is_not_an_image_is_named(client, photos):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=r"Doodle: fake\.png is not an image") as error:
        call(client, photos["faces"], doodle=handle_file(photos["fake"]))
    assert error.value.title == "Please check your input"


def _config(url: str) -> dict:
    import json

    with urllib.request.urlopen(url + "config", timeout=30) as response:
        return json.load(response)


def _visible(config: dict, elem_id: str):
    (component,) = [c for c in config["components"] if c["props"].get("elem_id") == elem_id]
    return component["props"].get("visible")


def test_the_page_offers_the_doodle_where_the_server_has_it(client):
    assert _visible(_config(app_url()), "enable-doodle") is True
    assert _visible(_config(app_url()), "doodle-area") is False  # until enabled


def test_the_page_offers_the_fast_mode_where_the_server_has_it(client):
    config = _config(app_url())
    assert _visible(config, "mode") is True and _visible(config, "mode-note") is True
    (radio,) = [c for c in config["components"] if c["props"].get("elem_id") == "mode"]
    assert [choice[0] for choice in radio["props"]["choices"]] == ["Quality", "Fast"]
    assert radio["props"]["value"] == "Quality"


SMALL = {
    "PHOTOMAKER_QUEUE_SIZE": "1",
    "PHOTOMAKER_DOODLE_ADAPTER": "none",
    "PHOTOMAKER_FAST_LORA": "none",
    "PHOTOMAKER_STYLE_ADAPTER": "none",
}


def test_a_doodle_on_a_server_without_it_is_refused_clearly(photos, sketch):
    """`--doodle-adapter none`: no doodle on the page, and a doodle sent through the API gets
    a message that says so; the same request without it works."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url = app_url("small", SMALL)
    assert _visible(_config(url), "enable-doodle") is False
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="The doodle is off on this server") as error:
        call(client, photos["faces"], doodle=handle_file(sketch))
    assert error.value.title == "Please check your input"
    gallery, _ = call(client, photos["faces"], steps=1)
    assert len(gallery) == 1 and re.search(LIKENESS, gallery[0]["caption"])


def test_the_fast_mode_on_a_server_without_it_is_refused_clearly(photos):
    """`--fast-lora none`: no Quality/Fast choice on the page, and fast=True through the API
    gets a message that names the setting; the same request without it works."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url = app_url("small", SMALL)
    assert _visible(_config(url), "mode") is False
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match=r"Fast mode \(fast\) is off on this server") as error:
        call(client, photos["faces"], fast=True)
    assert "--fast-lora" in str(error.value) and error.value.title == "Please check your input"
    gallery, _ = call(client, photos["faces"], steps=1, fast=False)
    assert len(gallery) == 1


def test_a_style_image_on_a_server_without_the_adapter_is_refused_clearly(photos, sketch):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url = app_url("small", SMALL)
    assert _visible(_config(url), "style-image-area") is False
    assert _visible(_config(app_url()), "style-image-area") is True
    with pytest.raises(AppError, match="The style image is off on this server") as error:
        call(Client(url, verbose=False), photos["faces"], style_image=handle_file(sketch))
    assert error.value.title == "Please check your input"


# --------------------------------------------------------------------------- a full queue


def test_queue_overflow_is_refused_with_a_message(photos):
    """`--queue-size 1`: one job runs, one waits, a third is refused at once with Gradio's
    queue-full message; the server then serves the waiting job and a normal request."""
    from gradio_client import Client
    from gradio_client.utils import QueueError, Status

    url = app_url("small", SMALL)
    running_client, waiting_client, extra_client = (Client(url, verbose=False) for _ in range(3))
    running = _submit(running_client, photos["faces"], seed=5, steps=100, num_outputs=4)
    deadline = time.monotonic() + 120
    while running.status().code not in (Status.PROCESSING, Status.PROGRESS):
        assert time.monotonic() < deadline, f"the long job never started: {running.status()}"
        time.sleep(0.1)
    waiting = _submit(waiting_client, photos["faces"], seed=6, steps=1)
    deadline = time.monotonic() + 60
    while waiting.status().code != Status.IN_QUEUE:
        assert time.monotonic() < deadline, f"the second job is not waiting: {waiting.status()}"
        assert not running.done(), "the long job ended before the queue was full"
        time.sleep(0.05)
    extra = _submit(extra_client, photos["faces"], seed=7, steps=1)
    with pytest.raises(QueueError) as refused:  # Gradio's own type; its wording is Gradio's
        extra.result(timeout=60)
    assert str(refused.value).strip(), "the refusal came without a message"
    assert not running.done(), "the long job ended before the refusal: nothing was shown"
    running.cancel()
    gallery, seed = waiting.result(timeout=300)
    assert seed == 6 and len(gallery) == 1
    gallery, _ = call(Client(url, verbose=False), photos["faces"], steps=1)  # and the next one
    assert len(gallery) == 1
