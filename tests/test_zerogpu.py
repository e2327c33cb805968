"""The app under the ``spaces`` package's own ZeroGPU mode, and photomaker.zerogpu's parts.

The emulated Space: ``tests/zerogpu/run_app.py`` starts ``app.py --tiny --device cuda --aot`` with
``SPACES_ZERO_GPU=true`` against ``tests/zerogpu/device_api.py``, a local stand-in for the
device API. spaces runs as on a Space (torch patched at import, weights packed at launch, a
``/schedule`` per call with the visitor's token, a forked worker that gets the packed weights
and the pickled call); only CUDA itself is replaced by the CPU (see run_app.py). Everything is
driven through ``gradio_client``, like a visitor's client. What this cannot show: real CUDA and
VRAM, the real device API's queue and quota bookkeeping, and timings on the real card.

The unit tests at the end cover the duration estimate and the runner without a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from photomaker import zerogpu
from photomaker.errors import GenerationCancelled, PhotoMakerInputError, PhotoMakerServerError
from tests.test_app_api import generate_kwargs, load
from tests.zerogpu.device_api import DeviceAPI

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180
#: A visitor's ``X-IP-Token`` (a JWT as the Hub sends it; spaces reads its payload).
TOKEN = "eyJhbGciOiJub25lIn0.eyJ1c2VyIjoidmlzaXRvciJ9.c2ln"


# --------------------------------------------------------------------------- the Space


def offload_dir(folder: Path) -> Path:
    """Where spaces packs the weights: it writes and reads its pack files with ``O_DIRECT``,
    which some file systems refuse (older tmpfs); the repo's ignored ``build/`` otherwise."""
    for candidate in (folder / "tensors", ROOT / "build" / "zerogpu-tensors"):
        candidate.mkdir(parents=True, exist_ok=True)
        probe = candidate / "probe"
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT))
        except OSError:
            continue
        probe.unlink()
        return candidate
    pytest.fail("no folder here takes O_DIRECT files, which spaces' weight packing needs")


class Space:
    """The emulated Space: the device API stand-in, the app process, its log, the faults."""

    def __init__(self, folder: Path) -> None:
        self.api = DeviceAPI()
        self.folder = folder
        self.faults = folder / "faults.json"
        self.faults.write_text("{}")
        self.log = folder / "app.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            **os.environ,
            "SPACES_ZERO_GPU": "true",
            "SPACES_ZERO_DEVICE_API_URL": self.api.url,
            "ZEROGPU_OFFLOAD_DIR": str(offload_dir(folder)),
            "PHOTOMAKER_TEST_FAULTS": str(self.faults),
            "GRADIO_TEMP_DIR": str(folder / "gradio"),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        for name in ("PHOTOMAKER_VERSION", "PHOTOMAKER_PM_VERSION", "PHOTOMAKER_DEVICE"):
            env.pop(name, None)
        args = ["--tiny", "--device", "cuda", "--aot", "--host", "127.0.0.1", "--port", str(port)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "tests/zerogpu/run_app.py", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: spaces' workers go with it
            )
        self.url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the app exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"the app was not up within {START_TIMEOUT_S}s:\n{self.tail()}")
                time.sleep(0.5)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 4000) -> str:
        return self.text()[-n:]

    def set_faults(self, **faults) -> None:
        self.faults.write_text(json.dumps(faults))

    def moves(self) -> list[str]:
        """The workers that got the packed weights, one line each (not the start-up compile's,
        which ran before anything was packed)."""
        return re.findall(r"moved \d+ bytes from [1-9]\d* pack file\(s\) into worker \d+",
                          self.text())

    def stop(self) -> None:
        """End the app and the GPU workers spaces forked from it (they outlive their parent
        otherwise: the start-up compile's worker and the generation worker stay in its pool)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(0.5)  # the forked workers get the same signal; give them a moment
        self.api.close()


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    space = Space(tmp_path_factory.mktemp("zerogpu"))
    yield space
    space.stop()


@pytest.fixture(scope="module")
def client(space):
    from gradio_client import Client

    return Client(space.url, verbose=False, headers={"X-IP-Token": TOKEN})


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    from photomaker.tiny_faces import draw_tiny_face

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for variant in (0, 1):
        image = Image.new("RGB", (256, 256), (255, 255, 255))
        draw_tiny_face(image, (80, 60, 176, 190), variant=variant)
        paths.append(str(folder / f"face{variant}.png"))
        image.save(paths[-1])
    return paths


def call(client, photos: list[str], **changes):
    return submit(client, photos, **changes).result(timeout=120)


def submit(client, photos: list[str], **changes):
    return client.submit(**generate_kwargs(photos, **changes), api_name="/generate")


def works_again(space: Space, client, photos: list[str]) -> None:
    """A normal call right after: served, and by the same worker (no new weight move)."""
    moves = len(space.moves())
    gallery, seed = call(client, photos[:1], seed=3)
    assert len(gallery) == 1 and seed == 3
    assert len(space.moves()) == moves, "the worker was lost: the weights were moved again"


def wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - start


# --------------------------------------------------------------------------- through the Space


def test_a_call_packs_weights_schedules_with_the_token_and_moves_them_into_the_worker(
    space, client, photos
):
    gallery, seed = call(client, photos[:1], num_outputs=2)
    assert len(gallery) == 2 and seed == 1
    assert not np.array_equal(*load(gallery))
    text = space.text()
    packed = re.findall(r"ZeroGPU tensors packing: 100%.*?/(\d+(?:\.\d+)?)M", text)
    assert packed and float(packed[0]) > 1, "spaces did not pack the weights at launch"
    assert text.index("ZeroGPU tensors packing") < text.index("Running on local URL")
    moved = re.findall(r"moved (\d+) bytes from 1 pack file\(s\) into worker", text)
    assert len(moved) == 1 and int(moved[0]) / 1e6 == pytest.approx(float(packed[0]), rel=0.05)
    assert space.api.named("/startup-report")
    schedule = space.api.named("/schedule")[-1]
    assert schedule.query["token"] == TOKEN  # the visitor's quota, not the Space's
    assert schedule.query["gpuSize"] == "large"
    assert 1 <= int(schedule.query["durationSeconds"]) <= 30  # a tiny job asks little
    allow = space.api.named("/allow")
    assert allow and allow[0].query["pid"] != str(space.proc.pid)  # a forked worker
    assert space.api.named("/release")[-1].query["fail"] == "false"


def test_the_startup_compile_is_a_long_gpu_call_whose_result_the_workers_use(
    space, client, photos
):
    """--aot on the emulated Space: the compile ran in a worker of its own before launch, on
    one /schedule asking for ZeroGPU's start-up maximum, and what it returned (pickled back)
    was put in place here, so the workers forked for generations run it. The compile itself
    is a stand-in (see tests/zerogpu/run_app.py)."""
    compile_call = space.api.named("/schedule")[0]  # the first, whatever ran before
    assert int(compile_call.query["durationSeconds"]) == zerogpu.STARTUP_MAX_S
    assert compile_call.query["gpuSize"] == zerogpu.GPU_SIZE
    text = space.text()
    compiled_in = int(re.search(r"stand-in compile in worker (\d+)", text).group(1))
    assert compiled_in != space.proc.pid
    assert text.index("compiled UNet in place") < text.index("ZeroGPU tensors packing")
    assert "ahead-of-time compilation done in" in text
    call(client, photos[:1])
    ran_in = re.findall(r"compiled stand-in ran in worker (\d+)", space.text())
    assert ran_in and all(int(pid) not in (compiled_in, space.proc.pid) for pid in ran_in)


def test_id_cache_hit_and_doodle_in_the_worker(space, client, photos, tmp_path):
    from gradio_client import handle_file

    first, _ = call(client, photos, seed=7)
    again, _ = call(client, photos, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(load(first), load(again), strict=True))
    jobs = re.findall(r"got a job with (the photos|the cached ID encoding)", space.text())
    assert jobs[-2:] == ["the photos", "the cached ID encoding"]

    doodle = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    from PIL import ImageDraw

    ImageDraw.Draw(doodle).ellipse((70, 30, 230, 220), outline=(0, 0, 0, 255), width=12)
    doodle.save(tmp_path / "doodle.png")
    doodled, _ = call(client, photos, seed=7, doodle=handle_file(str(tmp_path / "doodle.png")))
    assert not np.array_equal(load(doodled)[0], load(first)[0])
    assert len(space.moves()) == 1  # one worker served them all


@pytest.mark.parametrize(
    "refusal, title, words",
    [
        ("quota", "ZeroGPU quota exceeded", r"You have exceeded your ZeroGPU quota .*Try again in"),
        ("busy", "ZeroGPU client error", r"No GPU was available"),
    ],
)
def test_refusals_reach_the_visitor_in_spaces_words(space, client, photos, refusal, title, words):
    from gradio_client.exceptions import AppError

    space.api.refusals.append(refusal)
    with pytest.raises(AppError, match=words) as error:
        call(client, photos[:1])
    assert error.value.title == title
    assert "error id" not in error.value.message  # a notice, not a server fault
    assert ("Fewer images or steps" in error.value.message) == (refusal == "quota")
    lines = [line for line in space.text().splitlines() if "ZeroGPU refused the call" in line]
    assert lines and re.search(words, lines[-1])
    assert (" INFO " if refusal == "quota" else " WARNING ") in lines[-1]
    after = space.text().split(lines[-1], 1)[1]
    assert "Traceback" not in after.split("HTTP Request: POST", 1)[0]
    works_again(space, client, photos)


@pytest.mark.parametrize(
    "fault, title, words, logged",
    [
        ("oom", "Something went wrong on the server", r"ran out of memory.*Try fewer images",
         "out of memory while generating the images [error {}]"),
        ("boom", "Something went wrong on the server", r"Something went wrong on the server",
         "unexpected error while generating the images [error {}]"),
        ("input", "Please check your input", r"Emulated input problem", None),
    ],
)  # fmt: skip
def test_errors_in_the_gpu_call_keep_their_message_id_and_worker(
    space, client, photos, fault, title, words, logged
):
    from gradio_client.exceptions import AppError

    space.set_faults(fault=fault)
    try:
        with pytest.raises(AppError, match=words) as error:
            call(client, photos[:1])
    finally:
        space.set_faults()
    assert error.value.title == title
    if logged:
        error_id = re.search(r"error id ([0-9a-f]{8})", error.value.message).group(1)
        text = space.text()
        assert logged.format(error_id) in text  # the worker's line, with that id
        if fault == "boom":  # ... and the traceback beside it
            after = text.split(logged.format(error_id), 1)[1]
            assert after.lstrip().startswith("Traceback")
            assert "emulated fault inside the GPU call" in after[:6000]
    assert space.api.named("/release")[-1].query["fail"] == "false"
    works_again(space, client, photos)


def test_stop_reaches_the_worker_and_releases_the_gpu_within_seconds(space, client, photos):
    space.set_faults(step_sleep=0.5)
    try:
        releases = len(space.api.named("/release"))
        job = submit(client, photos[:1], steps=40)

        def denoising() -> bool:  # the worker's step progress, as the visitor sees it
            progress = job.status().progress_data or []
            return any(p.length == 40 and (p.index or 0) >= 2 for p in progress)

        wait_for(denoising, 60, "step progress from the worker")
        stopped_at = time.monotonic()
        assert job.cancel()
        wait_for(lambda: len(space.api.named("/release")) > releases, 10, "the release")
        release = space.api.named("/release")[-1]
        held = release.at - stopped_at  # about 1 s here: a step, the decode, the hand-back
        assert held < 5.0, f"the allocation was held {held:.1f}s after Stop"
        assert release.query["fail"] == "false"
    finally:
        space.set_faults()
    steps = len(re.findall("slow step", space.text()))
    assert steps < 10  # of 40: it ended at the next step, not at the last
    wait_for(lambda: "a cancelled generation stopped" in space.text(), 10, "the stop logged")
    assert "stop reached the GPU worker" in space.text()
    time.sleep(1.0)
    assert len(re.findall("slow step", space.text())) == steps  # and nothing ran on
    works_again(space, client, photos)


# --------------------------------------------------------------------------- the parts


def test_the_duration_covers_a_slow_job_and_is_short_for_small_ones():
    # Slow: 4 images x 100 steps at 1344x768, cold worker. On the half card at the H100's
    # measured step time scaled by peak (148.2 ms per 4-image step at 989.4 TFLOP/s,
    # bench/results-gpu-h100.md) it takes 100 x 0.1482 x 989.4 / 251.9 s + the 8.4 GB move.
    slow = zerogpu.estimate_gpu_seconds(1344, 768, steps=100, num_outputs=4)
    measured_like = 100 * 0.1482 * 989.4 / zerogpu.HALF_CARD_TFLOPS + 8.4e9 / 2e9
    assert slow >= 1.2 * measured_like
    # ... and the one-image step (63.5 ms on the H100), 50 steps, cold.
    one = zerogpu.estimate_gpu_seconds(1024, 1024, steps=50, num_outputs=1)
    assert one >= 50 * 0.0635 * 989.4 / zerogpu.HALF_CARD_TFLOPS + 8.4e9 / 2e9
    # Small jobs ask for seconds, not minutes (short requests get queue priority).
    assert zerogpu.estimate_gpu_seconds(1024, 1024, steps=20, num_outputs=1) < 30
    assert zerogpu.estimate_gpu_seconds(896, 1152, steps=50, num_outputs=1) < 45
    # More work, more time; a cached ID encoding and a warm worker a little less.
    assert one < zerogpu.estimate_gpu_seconds(1024, 1024, steps=50, num_outputs=2)
    assert zerogpu.estimate_gpu_seconds(1024, 1024, 50, 1, cold=False) < one
    # What reaches spaces stays under ZeroGPU's cap, whatever the request.
    assert slow <= zerogpu.MAX_S


def test_the_size_is_large_which_holds_the_peak_at_half_the_quota():
    """Half a card holds the peak with room (17.0 GB at four 1024² images,
    bench/results-gpu-h100.md); the whole card would cost twice the quota for nothing."""
    sizes = json.loads((ROOT / "tests" / "data" / "zerogpu.json").read_text())["sizes"]
    assert zerogpu.GPU_SIZE == "large"
    assert sizes["large"]["gpu_memory_gb"] >= 2 * 17.0
    assert sizes["xlarge"]["quota_factor"] > sizes["large"]["quota_factor"]


def test_the_duration_given_to_spaces_allows_for_its_duration_factor(monkeypatch):
    job = type("Job", (), dict(width=1024, height=1024, steps=50, num_outputs=1,
                               guidance_scale=5.0, id_pixel_values=None,
                               id_image_embeds=object()))()  # fmt: skip
    monkeypatch.setattr(zerogpu, "duration_factor", lambda: 1.5)
    assert zerogpu.gpu_duration(job) == pytest.approx(zerogpu.job_seconds(job) / 1.5, abs=1)


def test_the_runner_raises_what_the_worker_sent_and_keeps_the_stream_to_its_end():
    ended = []

    def gpu(kind, value):
        def stream(job):
            yield ("running", None)
            yield (kind, value)
            ended.append(job)

        return stream

    assert zerogpu.ZeroGPURunner(gpu("done", "output"))("job") == "output"
    oom = PhotoMakerServerError("The GPU ran out of memory (error 1234abcd).", "1234abcd")
    with pytest.raises(PhotoMakerServerError) as error:
        zerogpu.ZeroGPURunner(gpu("error", oom))("job")
    assert error.value.error_id == "1234abcd"
    with pytest.raises(PhotoMakerInputError, match="fix this"):
        zerogpu.ZeroGPURunner(gpu("error", PhotoMakerInputError("fix this")))("job")
    assert ended == ["job"] * 3  # read to the end: the worker went back to the pool


def test_spaces_refusals_pass_and_its_worker_errors_are_server_faults(caplog):
    def refusing(error):
        def stream(job):
            raise error
            yield  # a generator, like spaces' wrapper

        return zerogpu.ZeroGPURunner(stream)

    quota = gr.Error("You have exceeded your ZeroGPU quota.", title="ZeroGPU quota exceeded")
    with pytest.raises(zerogpu.ZeroGPURefusal) as refusal:
        refusing(quota)("job")
    assert isinstance(refusal.value, gr.Error) and refusal.value.title == "ZeroGPU quota exceeded"
    assert refusal.value.message == f"{quota.message} {zerogpu.QUOTA_ADVICE}"
    assert all(r.exc_info is None for r in caplog.records)
    with pytest.raises(PhotoMakerServerError, match="GPU task aborted") as aborted:
        refusing(gr.Error("GPU task aborted", title="ZeroGPU worker error"))("job")
    assert aborted.value.error_id in caplog.text


def test_closing_the_stream_stops_the_job_at_its_next_step():
    steps, started = [], threading.Event()

    def run_job(job, cancel):
        for step in range(1000):
            started.set()
            if cancel.is_set():
                raise GenerationCancelled("stopped")
            steps.append(step)
            time.sleep(0.01)
        return "finished"

    stream = zerogpu.gpu_stream(run_job, "job")
    assert next(stream) == ("running", None)
    started.wait(5)
    stream.close()  # what spaces does when the visitor's side closes
    done = len(steps)
    time.sleep(0.1)
    assert len(steps) == done < 1000  # stopped, and nothing runs on

    cancel = threading.Event()
    cancel.set()

    def forever(job):
        while True:
            yield ("running", None)

    with pytest.raises(GenerationCancelled):
        zerogpu.ZeroGPURunner(forever)("job", cancel=cancel)


# --------------------------------------------------------------------------- AOT at start-up


class FakeGPU:
    """``spaces.GPU`` as ZeroGPU runs it, without a worker: records the duration and size each
    call asks for, then runs the function here and sends what it returns across a pickle, as
    spaces' result queue does (or raises what ``refusal`` says, as spaces does when the device
    API refuses)."""

    def __init__(self, refusal: Exception | None = None) -> None:
        self.calls: list[dict] = []
        self.refusal = refusal

    def __call__(self, task, duration=None, size=None):
        def run(*args, **kwargs):
            self.calls.append({"duration": duration, "size": size})
            if self.refusal is not None:
                raise self.refusal
            return pickle.loads(pickle.dumps(task(*args, **kwargs)))

        return run


@pytest.fixture(scope="module")
def tiny_pipe():
    from photomaker import loading
    from photomaker.settings import Settings

    return loading.build_pipeline(Settings(tiny=True, pm_version="v1", fast_lora="none",
                                           doodle_adapter="none", style_adapter="none"))  # fmt: skip


def on_zerogpu_with(monkeypatch, gpu: FakeGPU, compile_unet) -> None:
    """The app's process on ZeroGPU as far as the start-up compile sees it: spaces.GPU is
    ``gpu``, spaces' duration factor is the RTX Pro 6000's 1.5, and the worker's
    ``aot.compile_unet`` is ``compile_unet`` (a real AOTInductor compile is test_aot.py's)."""
    import spaces

    from photomaker import aot

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(spaces, "GPU", gpu)
    monkeypatch.setattr(zerogpu, "duration_factor", lambda: 1.5)
    monkeypatch.setattr(aot, "compile_unet", compile_unet)


AOT_SETTINGS = dict(tiny=True, aot=True, pm_version="v1", fast_lora="none",
                    doodle_adapter="none", style_adapter="none")  # fmt: skip


def test_the_startup_compile_is_one_long_gpu_call_whose_result_is_applied_here(
    tiny_pipe, monkeypatch, caplog
):
    from torch.utils import _pytree as pytree

    from photomaker import aot, loading
    from photomaker.settings import Settings

    settings = Settings(**AOT_SETTINGS)
    example = loading.aot_example_call(tiny_pipe, settings)
    call = aot.capture_unet_call(tiny_pipe, example)
    spec = pytree.tree_flatten((call.args, call.kwargs))[1]
    in_worker = []

    def compile_unet(pipe, example_call, shapes=None, package_path=None):
        in_worker.append((pipe, example_call, shapes))
        # The stand-in for spaces' compiled model: the UNet, which pickles (weights and all)
        # as that does, and computes what the compiled graph would.
        return aot.CompiledUNet(pipe.unet, spec, shapes, 1.0)

    gpu = FakeGPU()
    on_zerogpu_with(monkeypatch, gpu, compile_unet)
    with caplog.at_level(logging.INFO):
        assert loading.compile_ahead_of_time(tiny_pipe, settings) is tiny_pipe
    # One call, long and on the size generations use: 1500 s reach /schedule after spaces'
    # factor (zerogpu.STARTUP_MAX_S, what ZeroGPU allows at start-up).
    assert gpu.calls == [{"duration": 1000, "size": zerogpu.GPU_SIZE}]
    assert zerogpu.startup_duration() * 1.5 == zerogpu.STARTUP_MAX_S
    [(pipe, example_call, shapes)] = in_worker
    assert pipe is tiny_pipe and shapes == aot.ShapeRange.for_tiny()
    assert example_call["guidance_scale"] > 1 and example_call["num_images_per_prompt"] == 1
    # What came back across the pickle is in place in this process.
    forward = aot.compiled_forward_of(tiny_pipe)
    try:
        assert forward is not None and tiny_pipe.unet.forward is forward
        assert isinstance(forward._compiled, type(tiny_pipe.unet))
        assert forward._compiled is not tiny_pipe.unet  # a copy: it crossed the boundary
        assert "ahead-of-time compilation done in" in caplog.text
        monkeypatch.delenv("SPACES_ZERO_GPU")
        tiny_pipe(**{**example, "num_inference_steps": 2})
        assert forward.compiled_calls == 2 and forward.eager_calls == 0
    finally:
        aot.remove_compiled_forward(tiny_pipe)


@pytest.mark.parametrize(
    "failure, reason",
    [
        ("refused", "ZeroGPU quota exceeded: You have exceeded your ZeroGPU quota"),
        ("compile", "RuntimeError: no C++ compiler"),
        ("pickle", "Can't pickle"),
    ],
)
def test_a_failed_startup_compile_on_zerogpu_leaves_the_unet_eager(
    tiny_pipe, monkeypatch, caplog, failure, reason
):
    from photomaker import aot, loading
    from photomaker.settings import Settings

    def compile_unet(pipe, example_call, shapes=None, package_path=None):
        if failure == "compile":
            raise RuntimeError("no C++ compiler")
        return aot.CompiledUNet(lambda *args: None, None, shapes, 1.0)  # does not pickle

    refusal = gr.Error("You have exceeded your ZeroGPU quota.", title="ZeroGPU quota exceeded")
    on_zerogpu_with(monkeypatch, FakeGPU(refusal if failure == "refused" else None), compile_unet)
    with caplog.at_level(logging.INFO):
        loading.compile_ahead_of_time(tiny_pipe, Settings(**AOT_SETTINGS))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("runs eager" in w and reason in w for w in warnings), warnings
    assert aot.compiled_forward_of(tiny_pipe) is None
    assert "forward" not in tiny_pipe.unet.__dict__
