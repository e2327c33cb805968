"""The one error type that reaches users.

Everything a person can fix themselves (a prompt without the trigger word, a photo
without a face, a checkpoint with the wrong layout) is raised as
:class:`PhotoMakerInputError`, whose message says what is wrong *and* what to do.
The UI shows it with ``gr.Error``, the CLI prints it, and the server keeps running.
Anything else that escapes is a bug.
"""

from __future__ import annotations


class PhotoMakerInputError(ValueError):
    """A problem with what the user supplied, phrased so the user can fix it."""
