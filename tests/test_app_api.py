"""The app's public API, through gradio_client, against `app.py` in tiny mode.

One app process serves this module and the browser test (:func:`app_url`); it listens on
127.0.0.1 only, on a free port, and is stopped when the test session ends.
"""

from __future__ import annotations

import atexit
import os
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
    "num_outputs", "guidance_scale", "seed", "randomize_seed",
]  # fmt: skip

_server: dict = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop() -> None:
    proc = _server.get("proc")
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def app_url() -> str:
    """Start `python app.py --tiny` once per test session; return its URL."""
    if "url" in _server:
        if _server["proc"].poll() is not None:
            pytest.fail("the app process died; see " + str(_server["log"]))
        return _server["url"]
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
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--tiny"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _server.update(proc=proc, log=log)
    atexit.register(_stop)
    url = f"http://127.0.0.1:{port}/"
    started = time.monotonic()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2) as response:
                if response.status == 200:
                    _server.update(url=url, startup_s=time.monotonic() - started)
                    return url
        except OSError:
            time.sleep(0.5)
    _stop()
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


def call(client, photo_paths, **changes):
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
    return client.predict(**kwargs, api_name="/generate")


def load(gallery) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"])) for item in gallery]


def test_tiny_app_starts_quickly(client):
    assert _server["startup_s"] < 60, f"app.py --tiny took {_server['startup_s']:.0f}s to start"


def test_one_public_endpoint(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert list(info["named_endpoints"]) == ["/generate"]
    assert not info["unnamed_endpoints"]
    endpoint = info["named_endpoints"]["/generate"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == PARAMETERS
    assert [r["component"] for r in endpoint["returns"]] == ["Gallery", "Number"]


def test_generate_two_photos(client, photos):
    gallery, seed = call(client, photos["faces"], num_outputs=3, randomize_seed=True, seed=0)
    assert len(gallery) == 3
    assert isinstance(seed, int) and 0 <= seed < 2**31
    assert all(item["caption"].startswith(f"seed {seed} · Photographic") for item in gallery)
    assert Image.open(gallery[0]["image"]).size == (64, 64)


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
    ("unknown style", lambda p: (p["faces"], {"style": "Nope"}), "Style: .*Nope"),
    ("unknown aspect ratio", lambda p: (p["faces"], {"aspect_ratio": "5:4"}), "5:4"),
    ("steps out of range", lambda p: (p["faces"], {"steps": 500}), "Steps.*100"),
    ("outputs out of range", lambda p: (p["faces"], {"num_outputs": 9}), "Number of images.*4"),
    ("negative seed", lambda p: (p["faces"], {"seed": -5}), "Seed: .*minimum"),
]


@pytest.mark.parametrize("case, make, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_reach_the_user_and_the_next_request_works(client, photos, case, make, message):
    from gradio_client.exceptions import AppError

    paths, changes = make(photos)
    with pytest.raises(AppError, match=message):
        call(client, paths, **changes)
    gallery, _ = call(client, photos["faces"][:1], steps=1)
    assert len(gallery) == 1
