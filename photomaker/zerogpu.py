"""The GPU part of a generation on a ZeroGPU Space, through the ``spaces`` package.

On ZeroGPU (``SPACES_ZERO_GPU=true``) ``spaces.GPU`` asks the device API for a GPU with the
visitor's token (``/schedule``), forks a worker process (or reuses an idle one), moves the
weights packed at launch into it, pickles the arguments over, runs the function there and
pickles what it returns or raises back. Four things follow, and this module does them:

* **Refusals are the visitor's to act on.** Out of quota (429) or no GPU free (503), spaces
  raises ``gr.Error`` in its own words ("ZeroGPU quota exceeded", how long to wait, how to get
  more). :class:`ZeroGPURefusal` carries those words unchanged past the service's catch-all
  (it is a :class:`~photomaker.errors.PhotoMakerError`) to the visitor (it is a ``gr.Error``);
  the log gets one line, without a traceback.
* **Errors keep their message and their id.** Only ``gr.Error`` crosses spaces' process
  boundary as raised, and any raised error costs the worker (the next call forks a new one and
  moves all the weights in again). So the GPU function does not raise the project's errors: it
  sends them back as values (:class:`~photomaker.errors.PhotoMakerInputError`, or
  :class:`~photomaker.errors.PhotoMakerServerError` with the id the worker logged beside the
  traceback), the worker goes back to the pool, and :class:`ZeroGPURunner` raises them in the
  app's process, where the app shows them exactly as it does off ZeroGPU.
* **Stop reaches the worker.** The GPU function is a generator: spaces streams what it yields
  and, when the consumer closes the stream, stops the worker's generator at its next item.
  The worker yields a heartbeat every :data:`HEARTBEAT_S` while the pipeline runs in a thread
  of its own; when closed it sets the service's cancel event (the pipeline stops at the end of
  its current step) and waits for it, so the allocation is released within about a step.
* **Size and duration.** ``size="large"`` (half an RTX Pro 6000 Blackwell, 48 GB; peak use
  here is 11-17 GB), never ``xlarge`` (twice the quota), and a ``duration`` computed from the
  work: :func:`estimate_gpu_seconds`.

Off ZeroGPU :func:`gpu_runner` returns None and the service runs the job in-process.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from .errors import GenerationCancelled, PhotoMakerError, PhotoMakerServerError, new_error_id
from .settings import on_zerogpu

logger = logging.getLogger(__name__)

#: ZeroGPU's half RTX Pro 6000 Blackwell (48 GB). ``xlarge`` (the whole card) costs twice the
#: quota and is never needed: peak use is 11-17 GB (bench/results-gpu-h100.md). spaces would
#: pick ``xlarge`` by itself when the packed weights pass its threshold, hence the explicit size.
GPU_SIZE = "large"

# -- the duration estimate (bench/results-flops.md, bench/results-gpu-h100.md) ------------

#: One UNet forward with CFG (batch 2) at 1024², in TFLOP (bench/flops.py).
UNET_TFLOP_1024 = 13.52
#: One VAE decode at 1024², in TFLOP.
VAE_TFLOP_1024 = 10.47
#: The ID encoder (V2) per photo and the text encoders per call, in TFLOP.
ID_TFLOP_PER_PHOTO = 0.18
TEXT_TFLOP = 0.33
#: Dense bf16 tensor throughput of half an RTX Pro 6000 Blackwell (503.8 TFLOP/s for the
#: whole card, FP32 accumulate), in TFLOP/s.
HALF_CARD_TFLOPS = 251.9
#: The share of that peak eager SDXL reaches: 22% at one image, 37% at four on an H100
#: (bench/results-gpu-h100.md); the lower one, so one-image jobs are not cut short. An H200
#: machine bound by kernel launches reached only 13% (107.5 ms per step, bench/results-gpu.md),
#: still well inside the 268 ms per step this allows on the half card.
EFFICIENCY = 0.2
#: A cold worker first moves the weights in: 8.4 GB resident at full size (bench), at the
#: disk -> pinned -> GPU rate of spaces' pack reader (taken low: 2 GB/s).
WEIGHT_BYTES = 8.4e9
MOVE_BYTES_PER_S = 2e9
#: Fork, CUDA init, scheduler set-up, PIL conversion.
FIXED_S = 3.0
#: Head room over the estimate: an over-run is aborted, an over-ask only costs priority.
MARGIN = 1.25
#: ZeroGPU's cap for one call; a longer request is refused ("illegal duration").
MAX_S = 300

#: How often the worker's generator yields while the pipeline runs: how soon a Stop is seen.
HEARTBEAT_S = 0.25


def estimate_gpu_seconds(
    width: int,
    height: int,
    steps: int,
    num_outputs: int,
    guidance_scale: float = 5.0,
    num_photos: int = 1,
    cached_id: bool = False,
    cold: bool = True,
) -> float:
    """Seconds of half an RTX Pro 6000 Blackwell for one job: its FLOPs (UNet per step and
    image, scaled by pixels; CFG doubles the UNet batch; VAE decode per image; ID and text
    encoders) at :data:`EFFICIENCY` of the card's dense bf16 peak, plus a cold worker's
    weight move and a fixed start, times :data:`MARGIN`. Not capped (see :func:`gpu_duration`)."""
    scale = width * height / (1024 * 1024)
    unet = UNET_TFLOP_1024 * scale * (1.0 if guidance_scale > 1 else 0.5)
    tflop = steps * num_outputs * unet + num_outputs * VAE_TFLOP_1024 * scale + TEXT_TFLOP
    if not cached_id:
        tflop += num_photos * ID_TFLOP_PER_PHOTO
    seconds = tflop / (HALF_CARD_TFLOPS * EFFICIENCY) + FIXED_S
    if cold:
        seconds += WEIGHT_BYTES / MOVE_BYTES_PER_S
    return seconds * MARGIN


def job_seconds(job: Any) -> float:
    """:func:`estimate_gpu_seconds` for a :class:`~photomaker.service.GenerationJob`."""
    photos = job.id_pixel_values.shape[0] if job.id_pixel_values is not None else 0
    return estimate_gpu_seconds(
        job.width,
        job.height,
        job.steps,
        job.num_outputs,
        guidance_scale=job.guidance_scale,
        num_photos=photos,
        cached_id=job.id_image_embeds is not None,
    )


def duration_factor() -> float:
    """spaces multiplies a ``large`` request by its card's ``duration_factor`` (1.5 on the
    RTX Pro 6000, whose half is slower than the H200 slice durations were written for); 1
    off ZeroGPU."""
    if not on_zerogpu():
        return 1.0
    try:
        from spaces.zero.config import get_config

        return float(get_config()["duration_factor"]) or 1.0
    except Exception:  # an older or newer spaces: ask for our own estimate as it is
        return 1.0


def gpu_duration(job: Any) -> int:
    """The ``duration`` to give ``spaces.GPU``: :func:`job_seconds` divided by spaces'
    :func:`duration_factor` (so that what reaches ``/schedule`` is our estimate), rounded up,
    at most :data:`MAX_S`."""
    return min(math.ceil(job_seconds(job) / duration_factor()), MAX_S)


# -- refusals ---------------------------------------------------------------------------

#: spaces' ``gr.Error`` titles that are not refusals but a worker that failed or was killed.
WORKER_ERROR_TITLE = "ZeroGPU worker error"


#: Added to spaces' words when the visitor's quota is short: the request's duration follows
#: the job (:func:`gpu_duration`), so a smaller job may fit in what is left.
QUOTA_ADVICE = "Fewer images or steps, or Fast mode, ask for less GPU time."


class ZeroGPURefusal(PhotoMakerError, gr.Error):
    """ZeroGPU refused the call (out of quota, no GPU free, a duration over the limit): spaces'
    own words, for the visitor to act on. Not a server fault: nothing failed here."""

    def __init__(self, message: str = "ZeroGPU refused the call.", title: str = "ZeroGPU"):
        gr.Error.__init__(self, message, title=title, print_exception=False)


def is_refusal(err: BaseException) -> bool:
    """A ``gr.Error`` spaces raised before the work started: its titles all begin with
    "ZeroGPU" ("ZeroGPU quota exceeded", "ZeroGPU client error" for no GPU free, "ZeroGPU
    illegal duration", "ZeroGPU queue timeout"), except a worker's failure."""
    title = str(getattr(err, "title", "") or "")
    return isinstance(err, gr.Error) and title.startswith("ZeroGPU") and title != WORKER_ERROR_TITLE


def from_spaces_error(err: gr.Error) -> PhotoMakerError:
    """What a ``gr.Error`` raised by spaces becomes: a refusal passes through in spaces' own
    words (logged on one line); a worker that died or was aborted is a server fault with an
    error id (spaces printed the worker's traceback, if any, to the log)."""
    title = str(getattr(err, "title", "") or "ZeroGPU")
    message = getattr(err, "message", str(err))
    if is_refusal(err):
        level = logging.INFO if "quota" in title.lower() else logging.WARNING
        logger.log(level, "ZeroGPU refused the call (%s): %s", title, message)
        if "quota" in title.lower():  # what this app's visitor can change to ask for less
            message = f"{message} {QUOTA_ADVICE}"
        return ZeroGPURefusal(message, title=title)
    error_id = new_error_id()
    logger.error("ZeroGPU worker failed [error %s]: %s: %s", error_id, title, message)
    return PhotoMakerServerError(
        f"The GPU worker stopped before the images were finished ({message}; error "
        f"{error_id}). Please try again; fewer images or steps finish sooner.",
        error_id,
    )


# -- the worker side --------------------------------------------------------------------


def gpu_stream(run_job: Callable[..., Any], job: Any) -> Iterator[tuple[str, Any]]:
    """The GPU function's body, in the worker: ``run_job(job, cancel=...)`` in a thread,
    yielding ``("running", None)`` every :data:`HEARTBEAT_S` and then one
    ``("done", JobOutput)`` or ``("error", PhotoMakerError)``.

    Closed early (the visitor pressed Stop; spaces closes it at the next heartbeat), it sets
    the job's cancel event, so the pipeline stops after its current step, and returns only
    once the pipeline has stopped: the worker is then free for the next call."""
    cancel = threading.Event()
    outcome: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)

    def work() -> None:
        try:
            outcome.put(("done", run_job(job, cancel=cancel)))
        except PhotoMakerError as err:
            outcome.put(("error", err))
        except Exception as exc:  # not the service's own: a bug, with the traceback here
            error_id = new_error_id()
            logger.error("unexpected error in the GPU worker [error %s]", error_id, exc_info=exc)
            outcome.put(
                (
                    "error",
                    PhotoMakerServerError(
                        f"Something went wrong on the server while generating the images "
                        f"(error {error_id}). Please try again; if it happens again, report "
                        "this error id.",
                        error_id,
                    ),
                )
            )

    # In the caller's context: Gradio's progress tracking (the denoising bar) lives in it.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(work,), name="photomaker-gpu", daemon=True)
    thread.start()
    try:
        yield ("running", None)  # at once: a Stop during the start is seen at the first step
        while True:
            try:
                kind, value = outcome.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                if thread.is_alive() or not outcome.empty():
                    yield ("running", None)
                    continue
                kind, value = (
                    "error",
                    PhotoMakerServerError(  # it died without a word
                        "The generation stopped on the GPU without a result. Please try again.",
                        new_error_id(),
                    ),
                )
                logger.error("the GPU thread ended without a result [error %s]", value.error_id)
            if isinstance(value, PhotoMakerError):
                value.__traceback__ = None  # what crosses is the message and the id
                value.__cause__ = value.__context__ = None
            yield (kind, value)
            break
    except GeneratorExit:  # closed early: stop at the next step and wait for it
        cancel.set()
        logger.info("stop reached the GPU worker; the job ends after its current step")
        thread.join()
        raise
    thread.join()


# -- the app side -----------------------------------------------------------------------


class ZeroGPURunner:
    """``run_job(job, cancel=None)`` on ZeroGPU: consumes the GPU function's stream, closes it
    when ``cancel`` is set (spaces then stops the worker and releases the GPU), and raises what
    the worker sent back, or spaces' refusal, as the project's errors."""

    def __init__(self, gpu_function: Callable[[Any], Iterator[tuple[str, Any]]]) -> None:
        self.gpu_function = gpu_function

    def __call__(self, job: Any, cancel: threading.Event | None = None) -> Any:
        outcome: tuple[str, Any] | None = None
        try:
            with contextlib.closing(self.gpu_function(job)) as stream:
                for kind, value in stream:
                    if cancel is not None and cancel.is_set():
                        stream.close()  # spaces stops the worker's generator, then releases
                        raise GenerationCancelled("The generation was cancelled.")
                    if kind != "running":
                        outcome = (kind, value)
                # Read to its end: the worker is back in spaces' pool and the GPU released.
        except gr.Error as err:
            if isinstance(err, PhotoMakerError):
                raise
            raise from_spaces_error(err) from None
        if outcome is None:
            error_id = new_error_id()
            logger.error("the GPU worker ended without a result [error %s]", error_id)
            raise PhotoMakerServerError(
                f"The GPU worker ended without a result (error {error_id}). Please try again.",
                error_id,
            )
        kind, value = outcome
        if kind == "error":
            if isinstance(value, PhotoMakerServerError):
                logger.info("the GPU worker reported error %s (logged there)", value.error_id)
            raise value
        return value


# -- ahead-of-time compilation at start-up ----------------------------------------------

#: The longest ``spaces.GPU`` call ZeroGPU grants while a Space starts (the limit in Hugging
#: Face's ZeroGPU ahead-of-time compilation guide), for the one-off compile.
STARTUP_MAX_S = 1500


def startup_duration() -> int:
    """The ``duration`` of the start-up compile call: :data:`STARTUP_MAX_S` divided by
    spaces' :func:`duration_factor`, so that what reaches ``/schedule`` is at most that."""
    return math.floor(STARTUP_MAX_S / duration_factor())


def compile_unet_on_gpu(pipe: Any, example_call: Any, shapes: Any) -> Any:
    """:func:`photomaker.aot.compile_unet` in one long ``spaces.GPU`` call at start-up, its
    result (the compiled model, pickled back by spaces) put in place here in the main
    process by :func:`photomaker.aot.apply_compiled`: what a GPU worker changes does not
    persist, and the workers forked for generations later inherit the compiled forward.
    The eager weights stay (not drained), for what the graph does not cover.

    Returns the compiled forward, or ``None`` with a warning saying why when anything fails:
    the export or compile in the worker (its message comes back as a value, so the reason is
    not reduced to an exception class), ZeroGPU refusing the call, the worker dying, or its
    result not crossing back."""
    import spaces

    from . import aot

    def compile_in_worker() -> Any:
        try:
            return aot.compile_unet(pipe, example_call, shapes)
        except Exception as error:  # reported as a value; the worker stays usable
            logger.warning("ahead-of-time compilation failed in the GPU worker", exc_info=error)
            return f"{type(error).__name__}: {error}"

    gpu = spaces.GPU(compile_in_worker, duration=startup_duration(), size=GPU_SIZE)
    try:
        compiled = gpu()
    except Exception as error:  # refused, aborted, or the result did not cross back
        title = getattr(error, "title", None) or type(error).__name__
        message = getattr(error, "message", None) or str(error)
        compiled = f"{title}: {message}"
    if isinstance(compiled, str):
        logger.warning(
            "ahead-of-time compilation of the UNet on ZeroGPU failed, so it runs eager: %s",
            compiled,
        )
        return None
    return aot.apply_compiled(pipe, compiled)


def gpu_runner(service: Any) -> ZeroGPURunner | None:
    """The service's ``run_job`` inside ``spaces.GPU(size="large", duration=...)`` on ZeroGPU;
    None elsewhere (the service runs the job itself; ``spaces.GPU`` would change nothing)."""
    if not on_zerogpu():
        return None
    import spaces

    def run_on_gpu(job: Any) -> Iterator[tuple[str, Any]]:
        yield from gpu_stream(service.run_job, job)

    return ZeroGPURunner(spaces.GPU(run_on_gpu, duration=gpu_duration, size=GPU_SIZE))
