"""A slide's tile outputs: their names, what made them, and one writer at a time.

Each tile file records what made it in the root attribute ``inputs`` (JSON, :func:`input_record`): the slide
(absolute path, size, modification time, SHA-256 of its first and last MiB), the annotation file (path, kind,
SHA-256 of the whole file), every option that changes the tiles, and :data:`RECIPE_VERSION`. A re-run whose
record differs tiles the slide again and says why (:func:`changes`); an identical record means "up to date".
The modification time is recorded but not compared: copying a slide changes it, not its pixels.

While a slide is tiled, ``.<stem>.h5.lock`` next to the output holds an exclusive ``flock``; a second process
asking for the same output stops with an error instead of racing. Holding the lock, the tiler removes the
``.<stem>.h5.*.tmp`` (and ``.<stem>_tissue.png.*.tmp``) files that a killed run left behind: no live writer can
own them (on systems without ``fcntl`` there is no lock and orphans are still removed).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from pathoucc.errors import PathouccError
from pathoucc.options import TileOptions

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

__all__ = ["RECIPE_VERSION", "changes", "input_record", "output_lock", "output_paths", "read_record",
           "remove_orphans"]

RECIPE_VERSION = 1  # bump when tissue detection, the grid or the assignment of patches to bags changes
EDGE_BYTES = 1 << 20  # a slide's digest covers its first and last MiB (the whole file if smaller)
_NOT_TILES = {"workers", "overwrite"}  # options that do not change what is written
_RESOLUTION = {"stride", "level", "magnification", "mpp", "downsample"}  # recorded as chosen, not as asked
_ANNOTATION_OPTIONS = {"region_size", "classes", "zero_is_background", "min_label_coverage"}


def output_paths(slide_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """``(<out>/<stem>.h5, <out>/<stem>_tissue.png)`` for a slide."""
    stem = Path(slide_path).stem
    return Path(out_dir) / f"{stem}.h5", Path(out_dir) / f"{stem}_tissue.png"


def input_record(slide_path: Path, annotations: Path | None, kind: str | None, options: TileOptions,
                 level: int, downsample: float) -> dict:
    """What makes a slide's tiles: the slide and annotation files (with digests), the options, and the
    resolution they chose (``level``, ``downsample``: ``--mpp 0.5`` and ``--level 1`` may be the same tiles)."""
    exclude = _NOT_TILES | _RESOLUTION | (_ANNOTATION_OPTIONS if annotations is None else set())
    chosen = {"stride": options.step, "level": int(level), "downsample": round(float(downsample), 6)}
    return {
        "recipe_version": RECIPE_VERSION,
        "slide": _file_record(slide_path, edges_only=True),
        "annotations": None if annotations is None else {**_file_record(annotations), "kind": kind},
        "options": {**options.model_dump(mode="json", exclude=exclude), **chosen},
    }


def read_record(value: object) -> dict | None:
    """The record stored in a tile file's ``inputs`` attribute, or None when absent or unreadable."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        record = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def changes(old: dict | None, new: dict) -> list[str]:
    """Why tiles made from ``old`` are not those ``new`` would make (empty: up to date)."""
    if old is None:
        return ["it does not record what made it (written by an older pathoucc)"]
    out = []
    if old.get("recipe_version") != new["recipe_version"]:
        out.append(f"made by tiling recipe {old.get('recipe_version')}, this pathoucc uses {new['recipe_version']}")
    slide_old, slide_new = old.get("slide") or {}, new["slide"]
    if slide_old.get("path") != slide_new["path"]:
        out.append(f"the slide was {slide_old.get('path')}")
    elif (slide_old.get("size"), slide_old.get("sha256")) != (slide_new["size"], slide_new["sha256"]):
        out.append("the slide file changed")
    ann_old, ann_new = old.get("annotations"), new["annotations"]
    if (ann_old is None) != (ann_new is None):
        out.append("annotations added" if ann_old is None else "annotations removed")
    elif ann_new is not None and (ann_old.get("sha256"), ann_old.get("kind")) != (ann_new["sha256"], ann_new["kind"]):
        out.append(f"the annotation file changed ({Path(ann_new['path']).name})")
    opts_old, opts_new = old.get("options") or {}, new["options"]
    keys = set(opts_old) | set(opts_new)
    if (ann_old is None) != (ann_new is None):  # the annotation options come and go with the annotations
        keys = set(opts_old) & set(opts_new)
    for key in sorted(keys):
        if opts_old.get(key) != opts_new.get(key):
            out.append(f"{key} {_show(opts_old.get(key))} -> {_show(opts_new.get(key))}")
    return out


@contextlib.contextmanager
def output_lock(h5_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``h5_path``'s output; raises if another process holds it."""
    if fcntl is None:
        yield
        return
    lock_path = h5_path.with_name(f".{h5_path.name}.lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PathouccError("is being tiled by another process right now (it holds "
                                f"{lock_path.name}); wait for it, or give this run another --out", h5_path) from None
        try:  # the file locked must still be the lock file (a finishing run unlinks it)
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


def remove_orphans(*paths: Path) -> list[Path]:
    """Remove the temporary files ``.<name>.*.tmp`` that killed runs left next to ``paths``; return them."""
    removed = []
    for path in paths:
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _file_record(path: Path, edges_only: bool = False) -> dict:
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if edges_only and stat.st_size > 2 * EDGE_BYTES:
            digest.update(f.read(EDGE_BYTES))
            f.seek(stat.st_size - EDGE_BYTES)
            digest.update(f.read(EDGE_BYTES))
        else:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256": digest.hexdigest()}


def _show(value: object) -> str:
    return "unset" if value is None else json.dumps(value)
