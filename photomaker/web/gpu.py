"""The app's GPU runner and error mapping: how a job reaches ZeroGPU, and how what fails
reaches the page (``gr.Error`` with a title and, for the server's faults, an error id).

The ZeroGPU runtime itself (the worker, Stop, refusals) is :mod:`photomaker.zerogpu`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from .. import zerogpu
from ..errors import PhotoMakerInputError, PhotoMakerServerError, new_error_id
from ..service import PhotoMakerService

logger = logging.getLogger("photomaker.app")

INPUT_TITLE = "Please check your input"
SERVER_TITLE = "Something went wrong on the server"


def user_error(err: PhotoMakerInputError) -> gr.Error:
    return gr.Error(str(err), title=INPUT_TITLE, print_exception=False)


def server_error(err: BaseException) -> gr.Error:
    """An honest message with an error id that is also in the log, next to the traceback."""
    if isinstance(err, PhotoMakerServerError) and err.error_id:
        # Logged with its traceback where it happened (the service, or the ZeroGPU worker).
        logger.info("server error %s reached the page", err.error_id)
        error_id, message = err.error_id, str(err)
    elif isinstance(err, PhotoMakerServerError):
        error_id = new_error_id()
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
    """``run_job(job, cancel=None)`` for the service on ZeroGPU (``spaces.GPU``, size, duration,
    Stop, refusals and errors across the worker: :mod:`photomaker.zerogpu`); elsewhere None,
    and the service runs the job itself."""
    return zerogpu.gpu_runner(service)
