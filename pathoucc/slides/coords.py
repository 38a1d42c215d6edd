"""Coordinate files written by CLAM or TRIDENT: patch positions only, pixels read from the slide on the fly.

Both write one HDF5 per slide with a dataset ``coords`` (N, 2) int of level-0 (x, y) patch top-lefts and the
patching parameters as attributes of ``coords`` (nothing else is needed here):

- **CLAM** (``create_patches_fp.py`` -> ``<save_dir>/patches/<slide>.h5``): ``patch_size`` and ``patch_level`` (the
  patch is ``patch_size`` px read at pyramid level ``patch_level``), ``downsample``, ``level_dim``,
  ``downsampled_level_dim``, ``name`` (the slide's file name without extension), ``save_path``.
- **TRIDENT** (``extract_tissue_coords`` -> ``<job>/<mag>x_<size>px_<overlap>px_overlap/patches/<slide>_patches.h5``):
  ``patch_size`` (px at ``target_magnification``), ``patch_size_level0`` (its extent in level-0 px),
  ``level0_magnification``, ``target_magnification``, ``overlap``, ``name``, ``savetodir``, ``level0_width``,
  ``level0_height``.

:class:`CoordsFile` is a :class:`~pathoucc.slides.patchfile.PatchFile` like a tile file (``open_tiles`` returns
either): a patch is ``patch_size`` px covering ``patch_size * downsample`` level-0 px, read from the finest pyramid
level that is not finer than needed and resized when that level does not match exactly. Coordinate files carry no
class labels or regions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
from PIL import Image

from pathoucc.errors import PathouccError
from pathoucc.slides.patchfile import PatchFile
from pathoucc.slides.reader import Slide, open_slide

__all__ = ["CoordsFile", "coords_layout", "find_slide", "grid_stride", "positive_int", "read_coords_file", "slide_name"]

Layout = Literal["clam", "trident"]
_H5_SUFFIXES = (".h5", ".hdf5", ".pt")  # never a slide: coords and feature files


def coords_layout(f: h5py.File) -> Layout | None:
    """``"clam"`` or ``"trident"`` for a coords-only HDF5 file written by one of them, else None."""
    coords = f.get("coords")
    if not isinstance(coords, h5py.Dataset) or "patches" in f:
        return None
    attrs = coords.attrs
    if "patch_size_level0" in attrs or "target_magnification" in attrs:
        return "trident"
    if "patch_level" in attrs and "patch_size" in attrs:
        return "clam"
    return None


@dataclass(kw_only=True)
class CoordsFile(PatchFile):
    """A CLAM or TRIDENT coordinate file and its slide (``layout`` ``clam`` or ``trident``); pixels are read from
    the slide at ``patch_level`` and resized to ``patch_size`` when that level does not match exactly."""

    _slide: Slide | None = field(default=None, repr=False)

    @property
    def extent(self) -> int:
        """Level-0 px per patch side."""
        return max(1, round(self.patch_size * self.downsample))

    def _read_pixels(self, index: slice | np.ndarray) -> np.ndarray:
        chosen = self.coords[index]
        if self._slide is None:
            self._slide = open_slide(self.slide_path)
        slide, p = self._slide, self.patch_size
        level_ds = slide.level_downsamples[self.patch_level]
        size = max(1, round(self.extent / level_ds))  # px at the level read
        out = np.empty((len(chosen), p, p, 3), np.uint8)
        for k, (x, y) in enumerate(chosen.tolist()):
            pixels = slide.read_region((x, y), self.patch_level, (size, size))
            if size != p:
                pixels = np.asarray(Image.fromarray(pixels).resize((p, p), Image.Resampling.BOX))
            out[k] = pixels
        return out

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def __getstate__(self) -> dict:  # picklable for DataLoader workers: each reopens the slide
        state = self.__dict__.copy()
        state["_slide"] = None
        return state


def read_coords_file(f: h5py.File, path: Path, layout: Layout, slide: str | Path | None = None) -> CoordsFile:
    """A :class:`CoordsFile` from an open CLAM/TRIDENT file; ``slide`` is the slide file or a folder holding it
    (default: next to ``path`` or up to two folders up, by the file's ``name`` attribute or its own name)."""

    def fail(msg: str) -> PathouccError:
        return PathouccError(f"invalid {layout.upper()} coords file: {msg}", path)

    ds = f["coords"]
    if ds.ndim != 2 or ds.shape[1] != 2 or not np.issubdtype(ds.dtype, np.number):
        raise fail(f"coords is {ds.shape} {ds.dtype}, expected (N, 2) integers")
    if ds.shape[0] == 0:
        raise fail("it holds zero patches")
    coords = np.rint(np.asarray(ds[()], np.float64)).astype(np.int64)
    attrs = dict(ds.attrs)
    need = ("patch_size", "patch_level") if layout == "clam" else ("patch_size",)
    missing = [a for a in need if a not in attrs]
    if layout == "trident" and "patch_size_level0" not in attrs and not {
            "level0_magnification", "target_magnification"} <= set(attrs):
        missing.append("patch_size_level0 (or level0_magnification and target_magnification)")
    if missing:
        raise fail(f"coords lacks attribute(s) {', '.join(missing)}")
    patch_size = positive_int(attrs["patch_size"], "patch_size", fail)
    slide_file = find_slide(path, slide_name(attrs, path), slide)
    with open_slide(slide_file) as s:
        dims, mpp, downsamples = s.dimensions, s.mpp, s.level_downsamples
        if layout == "clam":
            level = positive_int(attrs["patch_level"], "patch_level", fail, zero=True)
            if level >= len(downsamples):
                raise PathouccError(f"{path}: patch_level {level} does not exist in the slide (levels "
                                    f"0..{len(downsamples) - 1})", slide_file)
            downsample = float(downsamples[level])
        else:
            if "patch_size_level0" in attrs:
                extent = float(np.asarray(attrs["patch_size_level0"]).ravel()[0])
            else:  # as TRIDENT computes it
                extent = patch_size * float(attrs["level0_magnification"]) / float(attrs["target_magnification"])
            if not extent > 0:
                raise fail(f"patch_size_level0 must be positive, got {extent}")
            downsample = extent / patch_size
            level = s.best_level(downsample)
    stride = grid_stride(coords, downsample, patch_size, attrs)
    return CoordsFile(
        path=path, layout=layout, coords=coords, patch_size=patch_size, patch_level=level, downsample=downsample,
        stride=stride, level_dimensions=(int(dims[0] / downsample + 1e-6), int(dims[1] / downsample + 1e-6)),
        slide_path=str(Path(slide_file).resolve()), slide_dimensions=(int(dims[0]), int(dims[1])), mpp=mpp)


def positive_int(value: object, name: str, fail, zero: bool = False) -> int:
    try:
        out = int(np.asarray(value).ravel()[0])
    except (TypeError, ValueError, IndexError):
        raise fail(f"{name} is not an integer ({value!r})") from None
    if out < (0 if zero else 1):
        raise fail(f"{name} must be {'>= 0' if zero else 'positive'}, got {out}")
    return out


def grid_stride(coords: np.ndarray, downsample: float, patch_size: int, attrs: dict) -> int:
    """Output px between neighbours: TRIDENT's ``patch_size - overlap``; for CLAM (which does not record its
    step) the smallest gap between patch positions along x or y, else the patch size."""
    if "overlap" in attrs:
        try:
            overlap = int(np.asarray(attrs["overlap"]).ravel()[0])
        except (TypeError, ValueError):
            overlap = 0
        if 0 <= overlap < patch_size:
            return patch_size - overlap
    gaps = [np.diff(np.unique(coords[:, axis])) for axis in (0, 1)]
    gaps = np.concatenate([g[g > 0] for g in gaps])
    if not gaps.size:
        return patch_size
    return max(1, min(patch_size, round(float(gaps.min()) / downsample)))


def slide_name(attrs: dict, path: Path) -> str:
    """The slide's name: the ``name`` attribute, else the file's stem (TRIDENT's ``_patches`` suffix removed)."""
    name = attrs.get("name")
    if isinstance(name, bytes):
        name = name.decode()
    if isinstance(name, str) and name.strip() and name != "None":
        return name.strip()
    return path.stem.removesuffix("_patches")


def find_slide(path: Path, name: str, slide: str | Path | None) -> Path:
    """The slide of coords file ``path``: ``slide`` if it is a file, else ``<folder>/<name>.<ext>`` in ``slide``
    (a folder), then next to ``path`` and up to two folders up (CLAM writes ``<save_dir>/patches/``, TRIDENT
    ``<job_dir>/<mag>x_<size>px_<overlap>px_overlap/patches/``)."""
    if slide is not None and Path(slide).is_file():
        return Path(slide)
    if slide is not None and not Path(slide).exists():
        raise PathouccError(f"the slide of coords file {path} is not there", slide)
    folders = [Path(slide)] if slide is not None else []
    folders += [path.parent, path.parent.parent, path.parent.parent.parent]
    seen: list[Path] = []
    for folder in folders:
        if folder in seen:
            continue
        seen.append(folder)
        candidates = sorted(p for p in folder.glob(f"{_glob_escape(name)}.*")
                            if p.suffix.lower() not in _H5_SUFFIXES and p.stem == name)
        if candidates:
            return candidates[0]
    where = ", ".join(str(f) for f in seen)
    raise PathouccError(f"slide '{name}.*' of this coords file not found (looked in {where}); give the slides' "
                        "folder (data.slide_dir, or --slides)", path)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)
