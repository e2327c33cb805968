"""The errors that reach users.

:class:`PhotoMakerError` is the one type a front end (UI, CLI, API) catches and shows; its
message is written for the person who sent the request. It comes in two kinds that the UI
shows differently:

* :class:`PhotoMakerInputError`: something the user can fix themselves (a prompt without the
  trigger word, a photo without a face, a checkpoint with the wrong layout). The message says
  what is wrong *and* what to do.
* :class:`PhotoMakerServerError`: the server failed (out of GPU memory, a bug). The message is
  honest and carries an ``error_id`` that is also in the server log next to the traceback.

:class:`GenerationCancelled` is raised when a generation stops because its user cancelled or
disconnected; nobody needs to be told about it but the log.
"""

from __future__ import annotations

import uuid


def new_error_id() -> str:
    """The id of one server error: 8 hex digits, shown to the user and logged beside the
    traceback (the one helper the service, the app and the ZeroGPU runtime share)."""
    return uuid.uuid4().hex[:8]


class PhotoMakerError(Exception):
    """Base of every error whose message is meant for the user."""


class PhotoMakerInputError(PhotoMakerError, ValueError):
    """A problem with what the user supplied, phrased so the user can fix it."""


class PhotoMakerServerError(PhotoMakerError, RuntimeError):
    """The server could not complete a valid request (out of memory, an internal error)."""

    def __init__(self, message: str, error_id: str | None = None) -> None:
        super().__init__(message)
        self.error_id = error_id


class GenerationCancelled(PhotoMakerError):
    """The generation was stopped at a step boundary because it was cancelled."""
