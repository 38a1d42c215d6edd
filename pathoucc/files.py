"""Files in and out. Everything pathoucc writes goes to a temporary file (or folder) first and is renamed into
place; every ``.pt``/``.pth`` file is read by :func:`read_torch`, the one ``torch.load`` (``weights_only=True``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pathoucc.errors import PathouccError

UMASK = os.umask(0)
os.umask(UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same folder (so the rename is atomic) and is removed on error,
    so an interrupted writer never leaves a partial file under the final name.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_torch(path: str | Path, what: str = "file") -> Any:
    """Read a torch file safely (``weights_only=True``: tensors, numbers, strings, containers; no code) on the
    CPU. Anything unreadable is a :class:`PathouccError` naming ``path``; ``what`` names the kind of file."""
    import torch  # imported on use: tiling and the command line's start-up never need torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PathouccError(f"corrupt or unreadable {what} ({type(exc).__name__})", path) from None


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be created in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PathouccError(f"cannot create output folder ({exc.strerror or exc})", path) from None
    if not path.is_dir():
        raise PathouccError("output path exists and is not a folder", path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PathouccError("output folder is not writable", path)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; swap it in for ``path`` (replacing any old one) only if the
    block succeeds, so readers see the old folder or the complete new one, never a partial one."""
    final = Path(path)
    parent = ensure_writable_dir(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~UMASK)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
