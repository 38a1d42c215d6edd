"""Files in and out. Everything pathoucc writes goes to a temporary file (or folder) first, is fsync'ed and is
renamed into place (a crash leaves the old file or the new one); a full disk is a one-line error naming the file.
Temporary files and folders are created with modes 0o666 / 0o777 for the kernel to apply the process umask, as for
any new file (the umask is never read or changed). Every ``.pt``/``.pth`` file is written by :func:`write_torch` and
read by :func:`read_torch`, the one ``torch.load`` (``weights_only=True``); YAML is read by :func:`read_yaml`
(safe tags only, alias bombs refused)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from pathoucc.errors import PathouccError

MAX_YAML_NODES = 100_000  # nodes a YAML document may hold once its aliases are expanded (configs hold ~100)
MAX_YAML_DEPTH = 100  # nesting levels of a YAML document (configs have 3; PyYAML scans deep flow nesting slowly)
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
        tmp_path = _new_temp(path, ".tmp", _create_file)
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        try:
            yield tmp_path
        except OSError as exc:  # the writer's own errors pass through, except a full disk
            if is_disk_full(exc):
                raise write_error(exc, path) from None
            raise
        try:
            fsync(tmp_path)  # the data is on disk before the name points at it: a crash leaves old or new
            os.replace(tmp_path, path)
            fsync(path.parent)  # and the rename itself is durable
        except OSError as exc:
            raise write_error(exc, path) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))


def _new_temp(path: Path, suffix: str, create: Callable[[Path], None]) -> Path:
    """Create (with ``create``, which must fail if the name exists) and return a new ``.<name>.<random><suffix>``
    next to ``path`` (the pattern by which a killed run's leftovers are recognised)."""
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


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


def read_torch(path: str | Path, what: str = "file", mmap: bool = False) -> Any:
    """Read a torch file safely (``weights_only=True``: tensors, numbers, strings, containers; no code) on the
    CPU; ``mmap``: its tensors are memory-mapped from the file, not read into memory. Anything unreadable is a
    :class:`PathouccError` naming ``path``; ``what`` names the kind of file."""
    import torch  # imported on use: tiling and the command line's start-up never need torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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
    ensure_writable_dir(final.parent)
    tmp = _new_temp(final, ".partial", _create_dir)
    try:
        yield tmp
        old = None
        if final.exists():
            old = _new_temp(final, ".old", _create_dir)
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _create_dir(path: Path) -> None:
    os.mkdir(path, 0o777)


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """The YAML document in ``path``, read as :func:`parse_yaml` does. Every problem (missing, unreadable, invalid
    YAML, an alias bomb) is a :class:`PathouccError` naming ``path``; ``what`` names the kind of file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PathouccError(f"{what} file not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PathouccError(f"cannot read {what} ({exc})", path) from None
    try:
        return parse_yaml(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise PathouccError(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}", path) from None


def parse_yaml(text: str, source: str | Path = "YAML") -> Any:
    """``yaml.safe_load(text)`` (standard tags only: no objects, no code) that refuses documents whose aliases
    expand past :data:`MAX_YAML_NODES` nodes ("billion laughs"), recursive aliases and nesting deeper than
    :data:`MAX_YAML_DEPTH`: each a :class:`PathouccError` naming ``source``. Anchors and aliases within the budget
    work as usual; malformed YAML raises ``yaml.YAMLError``."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return loader.construct_document(node)
    except RecursionError:
        raise PathouccError("YAML nested too deeply to read", source) from None
    except _Refused as exc:
        raise PathouccError(str(exc), source) from None
    finally:
        loader.dispose()


class _Refused(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing to nest deeper than :data:`MAX_YAML_DEPTH` while it scans (before any recursion)."""

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        if self.flow_level >= MAX_YAML_DEPTH:
            raise _Refused(f"YAML nested more than {MAX_YAML_DEPTH} levels deep")
        super().fetch_flow_collection_start(token_class)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= MAX_YAML_DEPTH:
            raise _Refused(f"YAML nested more than {MAX_YAML_DEPTH} levels deep")
        return super().add_indent(column)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Nodes in ``node`` with every alias expanded, counted once per distinct node (``sizes``: memo by ``id``)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise _Refused("a YAML alias refers to a node that contains it (recursive alias)")
    open_nodes.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_nodes)
        if total > MAX_YAML_NODES:
            raise _Refused(f"YAML aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?); "
                           "write the values out")
    open_nodes.discard(key)
    sizes[key] = total
    return total
