"""Cut a slide into tissue patches and write them, with count labels, to one HDF5 file (see :mod:`.tilefile`).

Patches lie on a regular grid of the output level (``stride`` output pixels apart, starting at (0, 0)); those
whose tissue fraction reaches ``tissue_threshold`` are kept. Pixels are read in blocks of about 1024x1024 output
pixels by a pool of threads and streamed into the HDF5 file, so memory does not grow with the slide's size
(apart from the per-patch coordinate and label arrays, tens of bytes per patch). Each file is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from pathoucc.errors import PathouccError
from pathoucc.files import atomic_path, ensure_writable_dir
from pathoucc.options import TileOptions, validate_options
from pathoucc.runtime import progress_bar
from pathoucc.slides.annotations import AnnotationKind, PatchLabels, annotation_for, kind_from_suffix, label_patches
from pathoucc.slides.outputs import changes, input_record, output_lock, output_paths, read_record, remove_orphans
from pathoucc.slides.reader import LevelChoice, Slide, open_slide, pick_level
from pathoucc.slides.tilefile import FORMAT_VERSION, open_tiles
from pathoucc.slides.tissue import TissueMask, detect_tissue, save_mask_png, tissue_fractions

__all__ = ["TileReport", "output_paths", "tile_slide", "tile_slides"]

BLOCK_PIXELS = 1024  # side of a reading block in output pixels (rounded to whole strides)
CHUNK_BYTES = 64 * 1024  # target HDF5 chunk size; at least one patch per chunk


@dataclass
class TileReport:
    """Outcome of :func:`tile_slides`: written (``retiled`` says which of them replaced stale tiles, and why),
    skipped (up to date), failed slides, ``notes`` (regions skipped, unlabelled patches left out of bags, ...)
    and the ``orphans`` (temporary files of killed runs) removed."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    retiled: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class _Outcome:
    path: Path
    written: bool
    stale: str | None = None  # why existing tiles were replaced
    notes: list[str] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)


def tile_slide(slide_path: str | Path, out_dir: str | Path, options: TileOptions | None = None, *,
               annotations: str | Path | None = None, annotation_kind: AnnotationKind | None = None,
               progress: bool = False, **values) -> Path:
    """Tile one slide into ``<out_dir>/<stem>.h5`` (plus ``<stem>_tissue.png``) and return the HDF5 path.

    ``options`` is a :class:`~pathoucc.config.TileOptions`, or give its fields as keywords (``patch_size=224``,
    ``level=0``, ...). ``annotations`` is a label mask image, a QuPath GeoJSON (count-only regions or dense class
    polygons) or a regions CSV (kind from ``annotation_kind`` or the suffix); see :mod:`.annotations`. An existing
    output made from the same inputs (:mod:`.outputs`) is kept unless ``overwrite``; one made from other inputs
    is replaced.
    """
    return _tile(slide_path, out_dir, _options(options, values), annotations, annotation_kind, progress).path


def tile_slides(slide_paths: list[str | Path], out_dir: str | Path, options: TileOptions | None = None, *,
                annotations: str | Path | None = None, annotation_kind: AnnotationKind | None = None,
                on_error=None, progress: bool = False, **values) -> TileReport:
    """Tile several slides; a slide that fails is recorded in the report (and passed to ``on_error(path, msg)``)
    while the others go on. ``annotations`` may be a folder holding ``<stem>.<ext>`` / ``<stem>_mask.<ext>``
    files, a single file for a single slide, or a regions CSV shared by all slides. ``options`` and ``values``
    are those of :func:`tile_slide`.
    """
    options = _options(options, values)
    report = TileReport()
    ensure_writable_dir(out_dir)
    slide_paths = [Path(p) for p in slide_paths]
    kind = annotation_kind or (kind_from_suffix(Path(annotations)) if annotations and
                               not Path(annotations).is_dir() else None)
    if annotations is not None and Path(annotations).is_file() and kind != "csv" and len(slide_paths) > 1:
        raise PathouccError(f"one {kind} file cannot annotate {len(slide_paths)} slides; pass a folder of "
                            "<slide stem>.<ext> files instead", annotations)
    seen: dict[str, Path] = {}
    for slide_path in slide_paths:
        try:
            if slide_path.stem in seen:
                raise PathouccError(f"has the same name as {seen[slide_path.stem]}; outputs would collide",
                                    slide_path)
            seen[slide_path.stem] = slide_path
            source = annotation_for(slide_path, Path(annotations), kind) if annotations is not None else None
            done = _tile(slide_path, out_dir, options, source, kind, progress)
            (report.written if done.written else report.skipped).append(done.path)
            if done.stale:
                report.retiled.append((done.path, done.stale))
            report.notes.extend((slide_path, note) for note in done.notes)
            report.orphans.extend(done.orphans)
        except (PathouccError, OSError) as exc:
            message = str(exc) if isinstance(exc, PathouccError) else f"{slide_path}: {exc}"
            report.failed.append((slide_path, message))
            if on_error is not None:
                on_error(slide_path, message)
    return report


def _options(options: TileOptions | None, values: dict) -> TileOptions:
    if options is not None and values:
        raise TypeError(f"give options or keyword values, not both (got {sorted(values)})")
    return options if options is not None else validate_options(TileOptions, values)


def _tile(slide_path: str | Path, out_dir: str | Path, o: TileOptions, annotations: str | Path | None,
          annotation_kind: AnnotationKind | None, progress: bool) -> _Outcome:
    slide_path = Path(slide_path)
    annotations = None if annotations is None else Path(annotations)
    kind = None if annotations is None else (annotation_kind or kind_from_suffix(annotations))
    h5_path, png_path = output_paths(slide_path, out_dir)
    ensure_writable_dir(out_dir)
    with output_lock(h5_path):
        orphans = remove_orphans(h5_path, png_path)
        with open_slide(slide_path) as slide:
            choice = pick_level(slide, magnification=o.magnification, mpp=o.mpp, level=o.level,
                                downsample=o.downsample)
            if annotations is not None and not annotations.is_file():
                raise PathouccError("annotation file not found", annotations)
            record = input_record(slide_path, annotations, kind, o, choice.level, choice.downsample)
            stale = _stale(h5_path, record) if h5_path.exists() else None
            if stale == "" and not o.overwrite:
                return _Outcome(h5_path, False, orphans=orphans)
            tissue = _tissue(slide, o.tissue_threshold)
            grid = _grid(slide, choice, o.patch_size, o.step, tissue, o.tissue_threshold)
            labels = None if annotations is None else label_patches(
                annotations, kind, slide_path=slide.path, slide_dimensions=slide.dimensions, coords=grid.coords,
                positions=grid.positions, downsample=choice.downsample, options=o)
            save_mask_png(tissue.mask, png_path)
            _write(slide, choice, grid, labels, h5_path, o, record, progress)
    return _Outcome(h5_path, True, stale or None, labels.notes if labels is not None else [], orphans)


def _stale(h5_path: Path, record: dict) -> str:
    """Why the tiles at ``h5_path`` are not those ``record`` makes ("" = up to date)."""
    try:
        open_tiles(h5_path)
        with h5py.File(h5_path, "r") as f:
            old = read_record(f.attrs.get("inputs"))
    except (PathouccError, OSError):
        return "the existing file is unreadable or incomplete"
    return "; ".join(changes(old, record))


def _tissue(slide: Slide, threshold: float) -> TissueMask:
    if threshold > 0:
        return detect_tissue(slide)
    W, H = slide.dimensions
    scale = max(W, H) / 2048 if max(W, H) > 2048 else 1.0
    w, h = max(1, round(W / scale)), max(1, round(H / scale))
    return TissueMask(np.ones((h, w), bool), (W / w, H / h))


@dataclass
class _Grid:
    positions: np.ndarray  # (N, 2) int32 output-level (x, y) of patch top-lefts, in block order
    coords: np.ndarray  # (N, 2) int64 level-0 (x, y)
    blocks: list[tuple[int, int, int, int, int, int]]  # (start, stop, bx, by, bw, bh) in output pixels
    size: tuple[int, int]  # output-level (W, H)


def _grid(slide: Slide, choice: LevelChoice, patch_size: int, stride: int, tissue: TissueMask,
          threshold: float) -> _Grid:
    W0, H0 = slide.dimensions
    ds = choice.downsample
    w_out, h_out = int(W0 / ds + 1e-6), int(H0 / ds + 1e-6)
    if w_out < patch_size or h_out < patch_size:
        raise PathouccError(f"the slide is {w_out}x{h_out} px at the chosen level, smaller than one "
                            f"{patch_size}-px patch", slide.path)
    xs = np.arange(0, w_out - patch_size + 1, stride, dtype=np.int64)
    ys = np.arange(0, h_out - patch_size + 1, stride, dtype=np.int64)
    per_block = max(1, BLOCK_PIXELS // stride)
    extent = patch_size * ds
    span = (per_block - 1) * stride + patch_size
    parts, blocks, count = [], [], 0
    for jb in range(0, len(ys), per_block):  # one row of blocks at a time keeps the temporaries small
        row = []
        for y in ys[jb:jb + per_block]:
            boxes = np.stack([np.rint(xs * ds), np.full(len(xs), np.rint(y * ds)), np.full(len(xs), extent),
                              np.full(len(xs), extent)], axis=1)
            keep = xs[tissue_fractions(tissue, boxes) >= threshold] if threshold > 0 else xs
            row.append(np.stack([keep, np.full_like(keep, y)], axis=1))
        found = np.concatenate(row)
        if not len(found):
            continue
        block_col = found[:, 0] // stride // per_block
        found = found[np.lexsort((found[:, 0], found[:, 1], block_col))]  # block column, then y, then x
        block_col = found[:, 0] // stride // per_block
        starts = np.flatnonzero(np.r_[True, block_col[1:] != block_col[:-1]])
        stops = np.r_[starts[1:], len(found)]
        by = int(ys[jb])
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            bx = int(block_col[a]) * per_block * stride
            blocks.append((count + a, count + b, bx, by, min(span, w_out - bx), min(span, h_out - by)))
        parts.append(found.astype(np.int32))
        count += len(found)
    if not parts:
        raise PathouccError(f"no patch has a tissue fraction >= {threshold:g}; lower --tissue-threshold or the "
                            "patch size", slide.path)
    positions = np.concatenate(parts)
    coords = np.rint(positions * ds).astype(np.int64)
    return _Grid(positions, coords, blocks, (w_out, h_out))


def _write(slide: Slide, choice: LevelChoice, grid: _Grid, labels: PatchLabels | None, h5_path: Path,
           o: TileOptions, record: dict, progress: bool) -> None:
    n, p, stride = len(grid.coords), o.patch_size, o.step
    chunk = int(np.clip(CHUNK_BYTES // (p * p * 3), 1, 16))
    comp = {"gzip": {"compression": "gzip", "compression_opts": 4}, "lzf": {"compression": "lzf"},
            "none": {}}[o.compression]
    workers = o.workers if o.workers is not None else min(4, os.cpu_count() or 1)
    grid_attrs = {"patch_size": p, "patch_level": choice.level, "downsample": float(choice.downsample),
                  "stride": stride, "level_dimensions": np.asarray(grid.size, np.int64)}
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as f:
        coords = f.create_dataset("coords", data=grid.coords, dtype=np.int64)
        for k, v in grid_attrs.items():
            coords.attrs[k] = v
            f.attrs[k] = v
        f.attrs["slide_path"] = str(slide.path.resolve())
        f.attrs["slide_dimensions"] = np.asarray(slide.dimensions, np.int64)
        f.attrs["mpp"] = np.asarray(slide.mpp if slide.mpp else (np.nan, np.nan), np.float64)
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["tissue_threshold"] = float(o.tissue_threshold)
        f.attrs["inputs"] = json.dumps(record)
        if labels is not None:
            f.create_dataset("labels", data=labels.labels.astype(np.int64))
            f.create_dataset("region", data=labels.region.astype(np.int64))
            group = f.create_group("regions")
            group.create_dataset("boxes", data=np.asarray(labels.boxes, np.int64).reshape(-1, 4))
            group.create_dataset("ucc", data=np.asarray(labels.ucc, np.int64))
            if labels.feature is not None:
                group.create_dataset("feature", data=labels.feature.astype(np.int64))
            if labels.class_names is not None:
                f.attrs["class_names"] = json.dumps(list(labels.class_names))
        patches = f.create_dataset("patches", shape=(n, p, p, 3), dtype=np.uint8, chunks=(chunk, p, p, 3),
                                   **comp)
        with (progress_bar(progress, slide.path.name, n) as advance,
              ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tiler") as pool):
            pending: deque[tuple[int, int, Future]] = deque()
            for block in grid.blocks:
                pending.append((block[0], block[1], pool.submit(_read_block, slide, choice, grid, block, p)))
                if len(pending) >= 2 * workers:
                    _drain(pending, patches, advance, 1)
            _drain(pending, patches, advance, len(pending))


def _drain(pending: deque, patches: h5py.Dataset, advance, count: int) -> None:
    for _ in range(count):
        start, stop, future = pending.popleft()
        try:
            patches[start:stop] = future.result()
        except BaseException:
            for _, _, other in pending:
                other.cancel()
            raise
        advance(stop - start)


def _read_block(slide: Slide, choice: LevelChoice, grid: _Grid, block: tuple, p: int) -> np.ndarray:
    """Read one block of the output level and cut its patches -> (n, P, P, 3) uint8."""
    start, stop, bx, by, bw, bh = block
    ds = choice.downsample
    level_ds = slide.level_downsamples[choice.level]
    location = (round(bx * ds), round(by * ds))
    if choice.scale == 1.0:
        pixels = slide.read_region(location, choice.level, (bw, bh))
    else:
        lw, lh = int(np.ceil(bw * ds / level_ds)), int(np.ceil(bh * ds / level_ds))
        raw = slide.read_region(location, choice.level, (lw, lh))
        box = (0.0, 0.0, bw * ds / level_ds, bh * ds / level_ds)
        pixels = np.asarray(Image.fromarray(raw).resize((bw, bh), Image.Resampling.BOX, box=box))
    offsets = grid.positions[start:stop] - np.asarray([bx, by])
    out = np.empty((stop - start, p, p, 3), np.uint8)
    for k, (ox, oy) in enumerate(offsets.tolist()):
        out[k] = pixels[oy:oy + p, ox:ox + p]
    return out
