"""The one error type that the command line turns into a one-line message, and how errors quote values."""

from __future__ import annotations

import reprlib
from pathlib import Path

MAX_QUOTE = 200  # characters: the longest value an error message quotes
MAX_MESSAGE = 1000  # characters: the longest message (path included) a PathouccError carries

_SHORT = reprlib.Repr()  # bounded work: a huge or alias-shared container is summarised, never expanded
_SHORT.maxlevel = 3
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 8
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = MAX_QUOTE


def quote(value: object, limit: int = MAX_QUOTE) -> str:
    """``repr(value)`` in at most ``limit`` characters ("…" marks a cut); containers are summarised
    (``[1, 2, ...]``) without being walked in full, so quoting a 2 GB value costs no more than a short one."""
    text = repr(value[: limit + 1]) if isinstance(value, str) else _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line (line breaks become spaces), cut to ``limit`` characters with "…"."""
    text = " ".join(text.splitlines()) if "\n" in text or "\r" in text else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PathouccError(Exception):
    """A problem with user input (a file, a config, an argument) that is reported without a traceback.

    The message names the offending file or value and says what is wrong, on one line of at most
    :data:`MAX_MESSAGE` characters (longer ones are cut; quote values with :func:`quote`).
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(one_line(f"{path}: {message}" if path is not None else message))


class TrainingInterrupted(Exception):
    """Training stopped on a signal (SIGTERM, SIGUSR1, Ctrl-C) at a step boundary after saving a checkpoint.

    The command line prints the message and exits with ``exit_code`` (128 + the signal number).
    """

    def __init__(self, signal_name: str, step: int, exit_code: int) -> None:
        self.signal_name, self.step, self.exit_code = signal_name, step, exit_code
        super().__init__(f"interrupted by {signal_name} at step {step}; checkpoint saved; continue with --resume")
