"""The GPU runtime: one job at a time per pipeline, cancelling between steps, and failures
turned into messages (out of memory with what to change, anything else with an error id that
is in the log beside the traceback).

The lock is per pipeline (:func:`gpu_lock`): two services on two pipelines (two GPUs, or a
GPU and a CPU) run side by side; two jobs never share one pipeline, whatever the caller's
concurrency. A pipeline whose UNet runs as CUDA graphs also runs its jobs on one thread of its
own (:func:`use_one_gpu_thread`).
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from ..errors import GenerationCancelled, PhotoMakerError, PhotoMakerServerError, new_error_id

logger = logging.getLogger(__name__)

_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_PLAIN_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
_GPU_THREADS: weakref.WeakKeyDictionary[Any, ThreadPoolExecutor] = weakref.WeakKeyDictionary()
T = TypeVar("T")


def gpu_lock(pipe: Any) -> threading.Lock:
    """The lock of ``pipe``: held while a job runs on it."""
    with _LOCKS_GUARD:
        try:
            return _LOCKS.setdefault(pipe, threading.Lock())
        except TypeError:  # not weakly referable (None, a plain value): one lock per object id
            return _PLAIN_LOCKS.setdefault(id(pipe), threading.Lock())


def use_one_gpu_thread(pipe: Any) -> None:
    """From now on run every job on ``pipe`` on one thread of its own (:func:`in_gpu_thread`).

    For a UNet compiled with CUDA graphs (``--compile-mode reduce-overhead``): PyTorch keeps
    its CUDA graph trees per thread, and the app's jobs come from a pool of worker threads, so
    each of them would record its own graphs, in its own memory pool."""
    with _LOCKS_GUARD:
        if pipe not in _GPU_THREADS:
            _GPU_THREADS[pipe] = ThreadPoolExecutor(1, thread_name_prefix="photomaker-gpu")


def in_gpu_thread(pipe: Any, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` on ``pipe``'s own thread if it has one (:func:`use_one_gpu_thread`),
    else here; waits for it and returns or raises what it did. The caller's context variables
    go along (Gradio's progress tracking lives in them)."""
    executor = _GPU_THREADS.get(pipe)
    if executor is None:
        return work(*args)
    return executor.submit(contextvars.copy_context().run, work, *args).result()


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a RuntimeError saying so (older torch, MPS, cuDNN)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def free_memory() -> None:
    """Give back what a failed job held: Python garbage, then the CUDA cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def gpu_turn(
    pipe: Any, cancel: threading.Event | None = None, poll_s: float = 0.05
) -> Iterator[None]:
    """Hold ``pipe``'s lock (:func:`gpu_lock`) for one job. A job cancelled while it waits
    leaves the queue at once, without ever entering the pipeline."""
    lock = gpu_lock(pipe)
    if cancel is None:
        lock.acquire()
    else:
        while not lock.acquire(timeout=poll_s):
            if cancel.is_set():
                raise GenerationCancelled("The generation was cancelled before it started.")
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def server_errors(stage: str, pipe: Any = None) -> Iterator[None]:
    """Turn what fails in ``stage`` into a :class:`PhotoMakerServerError` for the user.

    :class:`PhotoMakerError` (input errors, cancellations) passes unchanged. Out of
    memory: a message that says what to change, and the memory is given back so the
    next request is served. Anything else: an honest message with an error id, logged
    with its traceback under the same id."""
    try:
        yield
    except PhotoMakerError:
        raise
    except Exception as exc:
        raise server_error(exc, stage, pipe) from exc


def server_error(exc: Exception, stage: str, pipe: Any = None) -> PhotoMakerServerError:
    """The message for ``exc`` raised while ``stage``; memory given back (see above)."""
    error_id = new_error_id()
    if is_out_of_memory(exc):
        logger.warning("out of memory while %s [error %s]: %s", stage, error_id, exc)
        message = (
            f"The GPU ran out of memory while {stage} (error {error_id}). Try fewer images, "
            "a smaller size, or start the server with --memory encoder-offload (--memory "
            "model-offload needs less still)."
        )
    else:
        logger.error("unexpected error while %s [error %s]", stage, error_id, exc_info=exc)
        message = (
            f"Something went wrong on the server while {stage} (error {error_id}). Please "
            "try again; if it happens again, report this error id."
        )
    release_memory(pipe)
    return PhotoMakerServerError(message, error_id)


def release_memory(pipe: Any = None) -> None:
    """Offloaded models back to the CPU, then Python's and CUDA's caches."""
    with contextlib.suppress(Exception):  # best effort: the error is being reported anyway
        free_hooks = getattr(pipe, "maybe_free_model_hooks", None)
        if free_hooks is not None:
            free_hooks()
    free_memory()


def _raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled("The generation was cancelled.")


def _interrupt_when_set(cancel: threading.Event) -> Callable[..., dict]:
    """A ``callback_on_step_end`` that stops the denoising loop once ``cancel`` is set, by
    diffusers' own interrupt flag (the loop skips the remaining steps)."""

    def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        if cancel.is_set():
            pipe._interrupt = True
        return callback_kwargs

    return on_step_end


