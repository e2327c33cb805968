"""The app's GPU runner and error mapping: how a job reaches ZeroGPU, and how what fails
reaches the page (``gr.Error`` with a title and, for the server's faults, an error id).

Kept together and small on purpose: the ZeroGPU runtime (issue 15) replaces this module's
``gpu_runner`` and error mapping as one piece.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import gradio as gr
import spaces

from ..errors import PhotoMakerInputError, PhotoMakerServerError
from ..service import GenerationJob, PhotoMakerService, new_error_id
from ..settings import on_zerogpu

logger = logging.getLogger("photomaker.app")

INPUT_TITLE = "Please check your input"
SERVER_TITLE = "Something went wrong on the server"


def user_error(err: PhotoMakerInputError) -> gr.Error:
    return gr.Error(str(err), title=INPUT_TITLE, print_exception=False)


def server_error(err: BaseException) -> gr.Error:
    """An honest message with an error id that is also in the log, next to the traceback."""
    if isinstance(err, PhotoMakerServerError):
        error_id = err.error_id or new_error_id()
        logger.error("server error %s: %s", error_id, err, exc_info=err)
        message = str(err)
    else:
        error_id = new_error_id()
        logger.error("unexpected error %s", error_id, exc_info=err)
        message = (
            "The generation failed because of a problem on the server, not with your photos "
            "or settings. Try again; if it keeps failing, report the error id."
        )
    return gr.Error(f"{message} (error id {error_id})", title=SERVER_TITLE, print_exception=False)


def gpu_runner(service: PhotoMakerService) -> Callable[..., Any] | None:
    """``run_job(job, cancel=None)`` for the service on ZeroGPU: inside ``spaces.GPU``, with
    a duration estimated from the job. Elsewhere None: the service's own (``spaces.GPU``
    would do nothing there anyway)."""
    if not on_zerogpu():
        return None

    def gpu_seconds(job: GenerationJob) -> int:
        return service.estimate_seconds(job)

    @spaces.GPU(duration=gpu_seconds)
    def run_on_gpu(job: GenerationJob):
        return service.run_job(job)

    def run_job(job: GenerationJob, cancel: threading.Event | None = None):
        # The job crosses to ZeroGPU's worker process by pickling, and an Event does not
        # pickle: there a cancelled job runs to its end (its user no longer waits for it).
        return run_on_gpu(job)

    return run_job
