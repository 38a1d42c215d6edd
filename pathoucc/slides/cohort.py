"""Which slides a tiling job takes: a slide-list file, and ``--shard I/N`` for job arrays (SLURM, ...).

Sharding is deterministic and needs no coordination: every shard sees the same full list, orders it the same
way and keeps its own part, so no two shards write the same output file.

* The slides are ordered by output name (file stem), then by path; slides sharing a stem (their outputs would
  collide) are kept together in one shard, where the collision is reported.
* Shard ``I`` of ``N`` (**1-based**: ``1/4`` ... ``4/4``, matching ``#SBATCH --array=1-4``) takes the stems at
  positions ``I-1, I-1+N, I-1+2N, ...`` of that order: every N-th slide. A shard may be empty when N exceeds the
  number of slides.
"""

from __future__ import annotations

import re
from pathlib import Path

from pathoucc.errors import PathouccError

__all__ = ["parse_shard", "read_slide_list", "select_inputs", "shard_slides"]


def read_slide_list(path: str | Path) -> list[Path]:
    """The slide paths listed in a text file, one per line; blank lines and lines starting with ``#`` are skipped.
    Relative paths are relative to the current folder (as ``ls`` or ``find`` print them)."""
    path = Path(path)
    if not path.is_file():
        raise PathouccError("slide list not found", path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise PathouccError("slide list is not UTF-8 text (one slide path per line)", path) from None
    slides = [Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not slides:
        raise PathouccError("slide list names no slide (one path per line)", path)
    return slides


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``1 <= I <= N`` (1-based)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise PathouccError(f"--shard: expected I/N with 1 <= I <= N, e.g. 1/4 (got {text!r})")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise PathouccError(f"--shard: {index}/{count} is out of range; shards are 1/{max(count, 1)} .. "
                            f"{max(count, 1)}/{max(count, 1)} (1-based)")
    return index, count


def shard_slides(slides: list[Path], index: int, count: int) -> list[Path]:
    """The slides of shard ``index`` (1-based) of ``count``, in the shared deterministic order."""
    ordered = sorted((Path(p) for p in slides), key=lambda p: (p.stem, str(p)))
    stems = sorted({p.stem for p in ordered})
    mine = set(stems[index - 1::count])
    return [p for p in ordered if p.stem in mine]


def select_inputs(paths: list[Path] | None, list_file: Path | None, shard: str | None, *, what: str,
                  list_option: str, hint: str) -> tuple[list[Path], int, tuple[int, int]]:
    """The inputs of one job: ``paths`` or those listed in ``list_file`` (not both), then shard ``I/N`` of them.

    Returns ``(selected, total, (I, N))`` (``(1, 1)`` without a shard); ``what`` names the inputs in the errors
    (``"slides"``), ``list_option`` is the list's option (``"--slide-list"``) and ``hint`` says what to give when
    there are none."""
    index, count = parse_shard(shard) if shard is not None else (1, 1)
    if paths and list_file is not None:
        raise PathouccError(f"give {what} or {list_option}, not both")
    selected = read_slide_list(list_file) if list_file is not None else list(paths or [])
    if not selected:
        raise PathouccError(f"no {what}: {hint}")
    total = len(selected)
    return (shard_slides(selected, index, count) if shard is not None else selected), total, (index, count)
