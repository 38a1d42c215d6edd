"""Stage 6, segmentation: every patch of each slide -> features -> the run's shared k-means -> cluster maps.

:func:`segment_run` is the stage: for each tile file it calls :func:`~.segment.segment_tiles` (clusters per
patch, on the map of :mod:`.grid`), :func:`~.segment.score_segmentation` (against labels or a mask) and
:func:`~.write.write_segmentation` (maps, overlay, GeoJSON, CSV, HDF5; drawing in :mod:`.maps` and
:mod:`.geojson`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathoucc.cluster.features import check_fits_model, default_batch_size, inference_dtype, resolve_device
from pathoucc.cluster.kmeans import ClusterModel, load_or_fit
from pathoucc.cluster.named import fit_with_examples
from pathoucc.errors import PathouccError
from pathoucc.files import ensure_writable_dir
from pathoucc.options import SegmentOptions
from pathoucc.run import kmeans_path, load_run
from pathoucc.segment.grid import MapGrid, accumulate_map, map_grid
from pathoucc.segment.maps import name_colors
from pathoucc.segment.segment import Segmentation, score_segmentation, segment_tiles
from pathoucc.segment.write import write_segmentation
from pathoucc.slides.tilefile import open_tiles

__all__ = [
    "MapGrid", "SegmentOptions", "SegmentReport", "Segmentation", "accumulate_map", "map_grid", "score_segmentation",
    "segment_run", "segment_tiles", "write_segmentation",
]


@dataclass
class SegmentReport:
    """What :func:`segment_run` did: the k-means used (and whether it was fitted now), each slide's result, and
    the notes of the labelled examples (skips), one line each."""

    kmeans: ClusterModel
    kmeans_path: Path
    fitted: bool
    slides: list[Segmentation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _mask_for(mask: Path | None, tiles_path: Path, many: bool) -> Path | None:
    """The mask file of a tile file: ``mask`` itself, or in a folder ``<stem>.png`` / ``<stem>_mask.png`` (…)."""
    if mask is None:
        return None
    if not mask.is_dir():
        if many:
            raise PathouccError("one mask cannot score several slides; pass a folder of <slide stem>_mask.png files",
                                mask)
        return mask
    stem = tiles_path.stem
    for name in (f"{stem}_mask", stem):
        for ext in (".png", ".tif", ".tiff"):
            if (mask / f"{name}{ext}").is_file():
                return mask / f"{name}{ext}"
    return None


def segment_run(run_dir: str | Path, tile_paths: list[str | Path], out: str | Path | None = None,
                options: SegmentOptions | None = None, progress: bool = False,
                slide_dir: str | Path | None = None) -> SegmentReport:
    """Segment every tile file with a trained run; outputs go to ``<out>/<slide stem>/`` (default
    ``<run>/segments``). Every slide is clustered with the run's shared ``kmeans-k{k}.npz`` (the ``train`` fit of
    :class:`~pathoucc.cluster.kmeans.KMeansFit`, fitted on its training data first if absent; with
    ``options.examples`` the ``examples`` fit, refitted and saved, whose clusters carry class names);
    ``scores.json`` records it under ``kmeans``.
    ``slide_dir`` (default: the run's ``data.slide_dir``) holds the slides of CLAM/TRIDENT coordinate files, and
    those of feature files for their overlays (a feature file whose slide is not found gets no overlay, and
    ``extra["notice"]`` says so)."""
    options = options or SegmentOptions()
    run_dir = Path(run_dir)
    dev = resolve_device(options.device)
    cfg, model = load_run(run_dir, dev)
    out = Path(out) if out is not None else run_dir / "segments"
    slide_dir = slide_dir if slide_dir is not None else cfg.data.slide_dir
    paths = [Path(p) for p in tile_paths]
    if not paths:
        raise PathouccError("no tile files given")
    seen: dict[str, Path] = {}
    for path in paths:  # validate everything before any work
        if path.stem in seen:
            raise PathouccError(f"has the same name as {seen[path.stem]}; outputs would collide", path)
        seen[path.stem] = path
        with open_tiles(path, slide_dir, cfg.data.patch_size_level0) as tiles:
            check_fits_model(tiles, cfg, path)
    mask = options.mask
    if mask is not None and not mask.exists():
        raise PathouccError("mask not found", mask)
    masks = [_mask_for(mask, p, len(paths) > 1) for p in paths]
    ensure_writable_dir(out)
    batch_size = options.batch_size or default_batch_size(cfg)
    examples: dict[str, np.ndarray] = {}
    notes: list[str] = []
    if options.examples is not None:  # the examples fit, saved as the run's k-means
        named = fit_with_examples(model, cfg, options.examples, options.k, options.classes, paths,
                                  batch_size=batch_size, device=dev, progress=progress, amp=options.amp,
                                  slide_dir=slide_dir)
        cm, km_path, fitted, examples, notes = (named.kmeans, kmeans_path(run_dir, named.kmeans.k), True,
                                                named.examples, named.notes)
        cm.save(km_path)
    else:
        cm, km_path, fitted = load_or_fit(run_dir, model, cfg, options.k, batch_size=batch_size, device=dev,
                                          progress=progress, amp=options.amp)
    dtype = inference_dtype(cfg, dev, options.amp)  # the precision the k-means was fitted in, by default
    colors = name_colors(cm.cluster_names)
    report = SegmentReport(cm, km_path, fitted, notes=notes)
    for path, slide_mask in zip(paths, masks, strict=True):
        with open_tiles(path, slide_dir, cfg.data.patch_size_level0) as tiles:
            seg = segment_tiles(model, cm, tiles, batch_size, dev, progress, dtype)
            seg.examples = examples.get(str(path.resolve()))
            seg.scores = score_segmentation(seg, tiles, slide_mask, named=cm.names is not None)
            if seg.scores is not None:  # scored with the run's shared ``train`` k-means, not a per-slide fit
                seg.scores["kmeans"] = cm.describe() | {"path": str(km_path.resolve())}
            folder = write_segmentation(seg, tiles, out, colors, {"run": str(run_dir.resolve()),
                                                                  "kmeans": str(km_path.resolve())})
        seg.extra["folder"] = folder
        report.slides.append(seg)
    return report
