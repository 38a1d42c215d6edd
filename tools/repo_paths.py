"""How the benchmark tools record what they ran: commands and paths relative to the repository."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def relative(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (``data/...``), else as given."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def command(script: str, argv: list[str]) -> str:
    """``python tools/<script> <args>``, every argument that names a path inside the repository made relative."""
    args = [relative(a) if os.sep in a and Path(a).is_absolute() else a for a in argv]
    return " ".join(["python", f"tools/{script}", *args])


def header_lines(result: dict) -> list[str]:
    """The first lines of a benchmark's ``results.md``: date, machine and the command as run."""
    m = result["machine"]
    return [f"Date {result['date']}, {m['cpus']} CPUs, {m['platform']}, Python {m['python']}.", "",
            f"Command: `{result['command']}`", ""]


def machine() -> dict:
    """What a benchmark ran on: CPU model and count, platform, Python, torch and its device."""
    import torch

    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "device": "cuda" if torch.cuda.is_available() else "cpu"}
