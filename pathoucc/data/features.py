"""Pools of feature vectors: foundation-model feature files (TRIDENT, CLAM, ``pathoucc features``) as instances,
count labels attached through their coords.

Each file's rows are placed on its slide by their coords and assigned to the regions of its annotations (a
count-only GeoJSON or CSV, or a label mask) by the same rule as tile patches
(:func:`pathoucc.slides.annotations.label_patches`: the patch centre inside the region), without reading any
pixel. The pool is a :class:`~pathoucc.data.stream.StreamingPool`: it keeps only each row's file, label and region
(24 bytes a row) and reads a step's rows from the files on demand, so memory stays flat however many rows.
A run refuses files of different dimensions or encoders (or weights digests).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np

from pathoucc.config import DataConfig
from pathoucc.data.stream import StreamingPool
from pathoucc.errors import PathouccError
from pathoucc.options import TileOptions
from pathoucc.slides.annotations import annotation_for, label_patches
from pathoucc.slides.features import FeatureFile, open_features

__all__ = ["feature_dim", "feature_paths", "pool_from_features"]

log = logging.getLogger(__name__)

SUFFIXES = (".h5", ".hdf5", ".pt")


def feature_paths(entries: list[str]) -> list[Path]:
    """The feature files of ``entries`` (files, or folders: their ``.h5``/``.hdf5``/``.pt`` files, sorted); two
    files of one slide name are refused (their outputs would collide)."""
    out: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
            if not found:
                raise PathouccError("folder holds no feature files (.h5, .hdf5, .pt)", path)
            out += found
        elif not path.is_file():
            raise PathouccError("feature file not found", path)
        else:
            out.append(path)
    seen: dict[str, Path] = {}
    for path in out:
        if path.stem in seen:
            raise PathouccError(f"has the same slide name as {seen[path.stem]}", path)
        seen[path.stem] = path
    return out


def _open(cfg: DataConfig, path: Path, scan: bool = True) -> FeatureFile:
    return open_features(path, cfg.slide_dir, cfg.patch_size_level0, scan=scan)


def feature_dim(cfg: DataConfig) -> int:
    """D of the run's training feature files (the first one's; :func:`pool_from_features` checks the rest)."""
    paths = feature_paths(cfg.features)
    if not paths:
        raise PathouccError("data.features is empty: list the feature files (or their folders) to train on")
    with _open(cfg, paths[0], scan=False) as f:
        return f.dim


def _check_agree(f: FeatureFile, first: FeatureFile, seen: dict[str, tuple[str, Path]]) -> None:
    """Refuse ``f`` unless it has ``first``'s dimension and the encoder and weights digest seen so far (in
    ``seen``: value and file; unknown ones match any)."""
    if f.dim != first.dim:
        raise PathouccError(f"holds {f.dim}-dimensional features but {first.path} holds {first.dim}: one run "
                            "takes the features of one encoder", f.path)
    for what, value in (("encoder", f.encoder), ("weights digest", f.weights_digest)):
        if value is None:
            continue
        old = seen.setdefault(what, (value, f.path))
        if old[0] != value:
            raise PathouccError(f"{what} {value!r} differs from {old[0]!r} of {old[1]}: one run takes the "
                                "features of one encoder", f.path)


def _labels(f: FeatureFile, cfg: DataConfig, need: bool):
    """Labels and regions of one file's rows from its annotations (None without any, when not ``need``ed)."""
    if cfg.annotations is None:
        if need:
            raise PathouccError("data.annotations is unset: training on feature files needs count-only regions "
                                "(GeoJSON/CSV) or a label mask per slide")
        return None
    slide = Path(f.path.name)  # annotation files are found by the slide's name, the file's stem
    try:
        source = annotation_for(slide, Path(cfg.annotations), None)
    except PathouccError:
        if need:
            raise
        return None
    options = TileOptions(patch_size=f.patch_size, region_size=max(cfg.region_size, f.patch_size))
    positions = np.rint(f.coords / f.downsample).astype(np.int64)
    return label_patches(source, None, slide_path=slide, slide_dimensions=f.slide_dimensions, coords=f.coords,
                         positions=positions, downsample=f.downsample, options=options)


def pool_from_features(paths: list[str | Path], cfg: DataConfig, need_regions: bool) -> StreamingPool:
    """The rows of the feature files ``paths`` as one streamed pool of ``(D,)`` float32 instances, with the labels
    and regions of ``cfg.annotations`` (region indices renumbered across files; a file without annotations has
    none, refused with ``need_regions``). Files are checked (all rows finite) and must agree in D and encoder."""
    files = feature_paths([str(p) for p in paths])
    first: FeatureFile | None = None
    seen: dict[str, tuple[str, Path]] = {}
    labels, region, ucc, sizes = [], [], [], []
    for path in files:
        with _open(cfg, path) as f:
            first = first or f
            _check_agree(f, first, seen)
            n = f.num_patches
            found = _labels(f, cfg, need_regions)
        sizes.append(n)
        if found is None:
            labels.append(np.full(n, -1, np.int64))
            region.append(np.full(n, -1, np.int64))
            continue
        for note in found.notes:
            log.warning("%s", note)
        offset = sum(len(u) for u in ucc)
        labels.append(found.labels.astype(np.int64))
        region.append(np.where(found.region >= 0, found.region + offset, -1))
        ucc.append(found.ucc.astype(np.int64))
    if first is None:
        raise PathouccError("no feature files given")
    meta = (np.concatenate(labels), np.concatenate(region) if ucc else None, np.concatenate(ucc) if ucc else None)
    opener = partial(open_features, slide=cfg.slide_dir, patch_size_level0=cfg.patch_size_level0, scan=False)
    return StreamingPool([str(p) for p in files], sizes, 0, *meta, slide_dir=cfg.slide_dir,
                         shape=first.shape, opener=opener)
