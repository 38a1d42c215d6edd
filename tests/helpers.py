"""Helpers shared by the tests: running the CLI in this process or as a subprocess, checking one-line errors,
and the paths of the repository and of the small data files in tests/assets/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pathoucc.cli import main

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"  # small real data (tests/assets/README.md says where each file is from)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``pathoucc ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["pathoucc", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def one_line_error(err: str, *needles: str) -> None:
    """``err`` is one ``error: ...`` line, no traceback, containing every needle."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def run_tile(*args, cwd=None) -> subprocess.CompletedProcess:
    """``pathoucc tile ARGS`` as a subprocess (text output, 120 s timeout)."""
    return subprocess.run([sys.executable, "-m", "pathoucc.cli", "tile", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)
