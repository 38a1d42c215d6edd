"""``pathoucc view --export DIR``: the viewer as static files (the page, DZI pyramids, data) that open from disk
or from any web server.

The export is built in ``DIR.partial`` and swapped in for ``DIR`` when complete, so ``DIR`` is the previous
export or the new one, never a mix. Each tile is written under a temporary name and renamed, so an interrupted
export (Ctrl-C, a kill) leaves only whole tiles, and the next run with the same inputs keeps them and renders only
the rest; ``DIR.partial/export.json`` records the inputs, and a partial export of other inputs is started afresh.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pathoucc.errors import PathouccError
from pathoucc.files import ensure_writable_dir, fsync, write_error, write_json
from pathoucc.runtime import progress_bar
from pathoucc.view.site import Site
from pathoucc.view.sources import CLUSTERS_FILE

__all__ = ["MANIFEST", "ExportReport", "export_site"]

MANIFEST = "export.json"
_FORMAT = 1


@dataclass
class ExportReport:
    """What :func:`export_site` did: the folder, the tiles rendered now and those kept from an interrupted run."""

    out: Path
    rendered: int
    resumed: int
    files: int


def _manifest(site: Site) -> dict:
    """The inputs an export depends on (a partial export of other inputs is not resumed)."""
    def stamp(path: Path) -> list[int]:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]

    return {"format": _FORMAT, "slides": [{"id": v.id, "slide": str(v.slide_path), "slide_file": stamp(v.slide_path),
                                           "segmentation": str(v.folder.resolve() / CLUSTERS_FILE),
                                           "segmentation_file": stamp(v.folder / CLUSTERS_FILE)} for v in site.views]}


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name next to ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, path) from None


def _prepare(out: Path, partial: Path, manifest: dict) -> None:
    """Check ``out`` may be replaced; keep ``partial`` only if it was started with the same inputs."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise PathouccError("exists and is not an export of `pathoucc view`; give a new or empty folder", out)
    if partial.exists():
        try:
            same = json.loads((partial / MANIFEST).read_text()) == manifest
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(partial)
        else:  # a tile being written when the last run stopped
            for leftover in partial.rglob(".*.tmp"):
                leftover.unlink()
    ensure_writable_dir(partial)
    write_json(partial / MANIFEST, manifest)


def export_site(site: Site, out: str | Path, workers: int | None = None, progress: bool = False) -> ExportReport:
    """Write every file of ``site`` to ``out`` (see the module docstring); returns what was done."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    ensure_writable_dir(out.parent)
    manifest = _manifest(site)
    _prepare(out, partial, manifest)
    files = site.paths()
    for name in files:  # small: written anew every time
        _write(partial / name, site.get(name)[0])
    tiles = site.tile_paths()
    todo = [t for t in tiles if not (partial / t).is_file()]
    workers = workers or min(8, os.cpu_count() or 1)

    def render(name: str) -> None:
        _write(partial / name, site.get(name)[0])

    with progress_bar(progress, "export tiles", len(tiles), len(tiles) - len(todo), "tiles") as advance, \
            ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(todo), 4096):  # bounded: never more than a few thousand tiles in flight
            for _ in pool.map(render, todo[start:start + 4096]):
                advance(1)
    os.sync()  # every tile on disk before the export is swapped in
    _swap(partial, out)
    return ExportReport(out, len(todo), len(tiles) - len(todo), len(files) + len(tiles))


def _swap(partial: Path, out: Path) -> None:
    """Put the finished ``partial`` in place of ``out`` (a previous export is removed after the swap)."""
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    try:
        if out.exists():
            os.replace(out, old)
        os.replace(partial, out)
        fsync(out.parent)
    except OSError as exc:
        raise write_error(exc, out) from None
    shutil.rmtree(old, ignore_errors=True)
