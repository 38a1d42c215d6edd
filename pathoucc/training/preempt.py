"""Stopping training cleanly: SIGTERM (a scheduler's kill), SIGUSR1 (SLURM's warning before it) and SIGINT
(Ctrl-C) only set a flag while :func:`stop_requests` is active; the training loop checks it at each step
boundary, saves a checkpoint and raises :class:`~pathoucc.errors.TrainingInterrupted` (exit code 128 + signal).
A second Ctrl-C aborts at once (``KeyboardInterrupt``), keeping the last checkpoint."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from pathoucc.runtime import STOP_SIGNALS

__all__ = ["StopRequest", "stop_requests"]


class StopRequest:
    """The first stop signal received (``signum`` None until then)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's code for death by that signal: 143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1."""
        return 0 if self.signum is None else 128 + int(self.signum)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without waiting for the step to end
        if self.signum is None:
            self.signum = signum


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Catch the stop signals for the duration of the block (then restore the previous handlers). Outside the
    main thread, where Python cannot install handlers, nothing is caught and the request never fires."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request._handle) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
