"""What every stage needs from the machine: the device, the seeds, and the one progress bar."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pathoucc.errors import PathouccError

if TYPE_CHECKING:
    import torch

__all__ = ["STOP_SIGNALS", "autocast", "autocast_dtype", "cpu_has_bf16", "progress_bar", "seed_everything",
           "select_device"]

# the signals that stop training at a step boundary (SIGTERM, SLURM's SIGUSR1, Ctrl-C): the training loop catches
# them (pathoucc.training.preempt); DataLoader workers leave them to the training process
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a CUDA device is an error."""
    import torch  # imported on use (here and below): tiling uses this module's progress bar, never torch

    if name not in ("auto", "cpu", "cuda"):
        raise PathouccError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise PathouccError("device is 'cuda' but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX; read from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The mixed-precision type for ``device``: bf16 on CUDA GPUs that support it and on CPUs with native bf16,
    fp16 on other CUDA GPUs, None (fp32) otherwise or when not ``enabled``."""
    import torch

    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``device`` and ``dtype``, or a no-op context when ``dtype`` is None."""
    import contextlib

    import torch

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed torch and numpy's global generator; deterministic cuDNN kernels."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.backends.cudnn.benchmark = False


class progress_bar:
    """A rich progress bar on stderr over ``total`` items (nothing when disabled).

    ``with progress_bar(enabled, label, total, completed, unit) as advance:`` then ``advance(n)`` moves it on by
    ``n`` items; ``advance(n, info)`` shows ``info`` instead of the rate (``<items>/s {unit}``).
    """

    def __init__(self, enabled: bool, label: str, total: int, completed: int = 0, unit: str = "patches") -> None:
        self.enabled, self.label, self.total, self.completed, self.unit = enabled, label, total, completed, unit
        self.bar = None

    def __enter__(self) -> Callable[..., None]:
        if not self.enabled:
            return lambda n, info=None: None
        # rich is imported only when a bar is shown
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                  console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task(self.label, total=self.total, completed=self.completed, info="")

        def advance(n: int, info: str | None = None) -> None:
            bar.advance(task, n)
            if info is None:
                speed = bar.tasks[0].speed
                info = f"{speed:.0f} {self.unit}/s" if speed else ""
            bar.update(task, info=info)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
