"""The tiles file: one HDF5 per slide with patches, their level-0 coordinates and (optionally) count labels.

Layout (``format_version`` 1)::

    /coords            (N, 2) int64   level-0 (x, y) of each patch's top-left
    /patches           (N, P, P, 3) uint8, chunked and compressed
    /labels            (N,) int64     class index of each patch, -1 unknown        [with annotations]
    /region            (N,) int64     region (bag) index of each patch, -1 none    [with annotations]
    /regions/boxes     (R, 4) int64   level-0 (x, y, w, h) of each region          [with annotations]
    /regions/ucc       (R,) int64     unique class count of each region            [with annotations]
    /regions/feature   (R,) int64     GeoJSON feature index of each region         [count-only regions]

Attributes on the root and on ``coords``: ``patch_size``, ``patch_level``, ``downsample``, ``stride``,
``level_dimensions``; on the root only: ``slide_path``, ``slide_dimensions``, ``mpp``, ``format_version``,
``tissue_threshold``, ``inputs`` (JSON: what made the file, :mod:`.outputs`) and ``class_names`` (JSON list,
with annotations).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pathoucc.errors import PathouccError
from pathoucc.slides.coords import coords_layout, read_coords_file
from pathoucc.slides.features import is_feature_file, open_features
from pathoucc.slides.patchfile import PatchFile

__all__ = ["FORMAT_VERSION", "TileFile", "open_tiles"]

FORMAT_VERSION = 1
GRID_ATTRS = ("patch_size", "patch_level", "downsample", "stride", "level_dimensions")


@dataclass(kw_only=True)
class TileFile(PatchFile):
    """A validated tiles file of ``pathoucc tile``: the patches are stored in it (``/patches``)."""

    _file: h5py.File | None = field(default=None, repr=False)

    def _read_pixels(self, index: slice | np.ndarray) -> np.ndarray:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        data = self._file["patches"]
        if isinstance(index, slice):
            return data[index]
        unique, inverse = np.unique(index, return_inverse=True)
        return data[unique][inverse.ravel()] if unique.size else np.zeros((0, *data.shape[1:]), np.uint8)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict:  # picklable for DataLoader workers: each reopens the file
        state = self.__dict__.copy()
        state["_file"] = None
        return state


def open_tiles(path: str | Path, slide: str | Path | None = None,
               patch_size_level0: float | None = None) -> PatchFile:
    """Open and validate a tiles file; :class:`PathouccError` names the file and what is wrong or missing.

    A coords-only file written by CLAM or TRIDENT opens as a :class:`~pathoucc.slides.coords.CoordsFile` (the
    same :class:`~pathoucc.slides.patchfile.PatchFile`, pixels read from its slide): ``slide`` is that slide or a
    folder holding it (default: by the file's ``name`` attribute, next to the file or up to two folders up).
    A feature file (TRIDENT, CLAM ``.h5``/``.pt``) opens as a :class:`~pathoucc.slides.features.FeatureFile`
    (``patch_size_level0``: the level-0 patch side of CLAM files)."""
    path = Path(path)
    if not path.is_file():
        raise PathouccError("tiles file not found", path)
    if is_feature_file(path):
        return open_features(path, slide, patch_size_level0)
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise PathouccError("not an HDF5 file (or it is truncated)", path) from None
    with f:
        layout = coords_layout(f)
        if layout is not None:
            return read_coords_file(f, path, layout, slide)
        return _read_meta(f, path)


def _read_meta(f: h5py.File, path: Path) -> TileFile:
    def fail(msg: str) -> PathouccError:
        return PathouccError(f"invalid tiles file: {msg}", path)

    missing = [name for name in ("coords", "patches") if not isinstance(f.get(name), h5py.Dataset)]
    if missing:
        raise fail(f"missing dataset(s) {', '.join(missing)}")
    missing = [a for a in (*GRID_ATTRS, "slide_path", "slide_dimensions", "format_version") if a not in f.attrs]
    if missing:
        raise fail(f"missing root attribute(s) {', '.join(missing)}")
    version = int(f.attrs["format_version"])
    if version != FORMAT_VERSION:
        raise fail(f"format_version {version} is not supported (expected {FORMAT_VERSION})")
    coords, patches = f["coords"], f["patches"]
    p = int(f.attrs["patch_size"])
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise fail(f"coords has shape {coords.shape}, expected (N, 2)")
    n = coords.shape[0]
    if n == 0:
        raise fail("it holds zero patches")
    if patches.shape != (n, p, p, 3) or patches.dtype != np.uint8:
        raise fail(f"patches is {patches.shape} {patches.dtype}, expected ({n}, {p}, {p}, 3) uint8")
    out = {}
    for name in ("labels", "region"):
        if name in f:
            arr = np.asarray(f[name][()], dtype=np.int64)
            if arr.shape != (n,):
                raise fail(f"{name} has shape {arr.shape}, expected ({n},)")
            out[name] = arr
    if "regions" in f:
        group = f["regions"]
        missing = [name for name in ("boxes", "ucc") if name not in group]
        if missing:
            raise fail(f"missing dataset(s) {', '.join('regions/' + m for m in missing)}")
        boxes, ucc = np.asarray(group["boxes"][()], np.int64), np.asarray(group["ucc"][()], np.int64)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or ucc.shape != (len(boxes),):
            raise fail(f"regions/boxes {boxes.shape} and regions/ucc {ucc.shape} do not match (R, 4) and (R,)")
        if "region" in out and out["region"].max(initial=-1) >= len(boxes):
            raise fail("region indices exceed the number of regions")
        out["region_boxes"], out["region_count"] = boxes, ucc
    elif "region" in out:
        raise fail("has per-patch region indices but no regions group")
    names = f.attrs.get("class_names")
    class_names = None
    if names is not None:
        try:
            class_names = [str(c) for c in json.loads(names)]
        except (TypeError, ValueError):
            raise fail("class_names is not a JSON list of strings") from None
    mpp = tuple(float(v) for v in np.asarray(f.attrs.get("mpp", [np.nan, np.nan]), dtype=np.float64).ravel()[:2])
    return TileFile(
        path=path,
        coords=np.asarray(coords[()], dtype=np.int64),
        patch_size=p,
        patch_level=int(f.attrs["patch_level"]),
        downsample=float(f.attrs["downsample"]),
        stride=int(f.attrs["stride"]),
        level_dimensions=tuple(int(v) for v in f.attrs["level_dimensions"]),
        slide_path=_str(f.attrs["slide_path"]),
        slide_dimensions=tuple(int(v) for v in f.attrs["slide_dimensions"]),
        mpp=None if len(mpp) < 2 or not np.all(np.isfinite(mpp)) else mpp,
        tissue_threshold=float(f.attrs.get("tissue_threshold", np.nan)),
        class_names=class_names,
        **out,
    )


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
