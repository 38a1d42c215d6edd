"""Files in and out. Everything pathoucc writes goes to a temporary file (or folder) first, is fsync'ed and is
renamed into place (a crash leaves the old file or the new one); a full disk is a one-line error naming the file.
Every ``.pt``/``.pth`` file is written by :func:`write_torch` and read by :func:`read_torch`, the one
``torch.load`` (``weights_only=True``)."""

from __future__ import annotations

import contextlib
import errno
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
_FULL = (errno.ENOSPC, errno.EDQUOT)  # errno values of a full disk or quota
_NEARLY_FULL = 1 << 20  # bytes: less free space than this after a failed write means the disk filled up


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same folder (so the rename is atomic) and is removed on error,
    so an interrupted writer never leaves a partial file under the final name.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(exc, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as exc:  # the writer's own errors pass through, except a full disk
            if is_disk_full(exc):
                raise write_error(exc, path) from None
            raise
        try:
            os.chmod(tmp_path, 0o666 & ~UMASK)
            fsync(tmp_path)  # the data is on disk before the name points at it: a crash leaves old or new
            os.replace(tmp_path, path)
            fsync(path.parent)  # and the rename itself is durable
        except OSError as exc:
            raise write_error(exc, path) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def fsync(path: str | Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk. Folders that cannot be opened are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():
            return  # some platforms and filesystems do not open folders
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if not Path(path).is_dir() or exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    """True for an error saying the disk (or quota) is full, however the library that hit it words it."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    return any(text in str(exc) for text in ("No space left on device", "Disk quota exceeded"))


def write_error(exc: OSError, path: Path) -> PathouccError:
    """A failed write as a one-line error naming the final file (the previous version, if any, is untouched)."""
    kept = "; the previous file is unchanged" if path.exists() else ""
    what = "no space left on device" if is_disk_full(exc) else "cannot write"
    return PathouccError(f"{what} ({_first_line(exc)}){kept}", path)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (fsync'ed, then renamed). A full disk is a :class:`PathouccError` naming ``path``,
    also when torch words it as ``PytorchStreamWriter failed`` / ``inline_container ... unexpected pos``."""
    import torch  # imported on use, as in read_torch

    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            text = str(exc)
            if not any(m in text for m in ("PytorchStreamWriter", "inline_container", "unexpected pos")):
                raise
            try:
                full = is_disk_full(exc) or shutil.disk_usage(tmp.parent).free < _NEARLY_FULL
            except OSError:
                full = False
            err = OSError(errno.ENOSPC if full else errno.EIO, f"torch: {_first_line(exc)}")
            raise write_error(err, path) from None


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
