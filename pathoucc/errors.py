"""The one error type that the command line turns into a one-line message."""

from __future__ import annotations

from pathlib import Path


class PathouccError(Exception):
    """A problem with user input (a file, a config, an argument) that is reported without a traceback.

    The message should name the offending file or value and say what is wrong, on one line.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


class TrainingInterrupted(Exception):
    """Training stopped on a signal (SIGTERM, SIGUSR1, Ctrl-C) at a step boundary after saving a checkpoint.

    The command line prints the message and exits with ``exit_code`` (128 + the signal number).
    """

    def __init__(self, signal_name: str, step: int, exit_code: int) -> None:
        self.signal_name, self.step, self.exit_code = signal_name, step, exit_code
        super().__init__(f"interrupted by {signal_name} at step {step}; checkpoint saved; continue with --resume")
