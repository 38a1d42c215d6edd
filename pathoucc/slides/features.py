"""Feature files: one foundation-model feature vector per patch, with the patch's level-0 coordinates.

One reader per format (every one a :class:`FeatureFile`, read like a tile file: ``len``, ``shape`` ``(D,)``,
``read(index) -> (n, D) float32``, ``coords``, the patch grid):

- **TRIDENT** (``<job>/<mag>x_<size>px_<overlap>px_overlap/features_<encoder>/<slide>.h5``, ``save_h5``): ``features``
  (N, D) float (chunks of one row) with attributes ``name``, ``savetodir``, ``encoder``; ``coords`` (N, 2) int64
  level-0 (x, y) with the patching attributes of its coords file (``patch_size``, ``patch_size_level0``,
  ``level0_magnification``, ``target_magnification``, ``overlap``, ``name``, ``savetodir``, ``level0_width``,
  ``level0_height``). ``pathoucc features`` writes this layout plus two root attributes, ``encoder`` and
  ``weights_digest``.
- **CLAM h5** (``extract_features_fp.py`` -> ``<feat_dir>/h5_files/<slide>.h5``, ``save_hdf5``): ``features`` (N, D)
  float32 and ``coords`` (N, 2) int32, no attributes: the patch's level-0 side is ``patch_size_level0`` (the
  config's ``data.patch_size_level0``) or, by default, the smallest gap between the coordinates (CLAM's default
  step is the patch size).
- **CLAM pt** (``<feat_dir>/pt_files/<slide>.pt``): ``torch.save`` of the same (N, D) float32 tensor, read with
  ``weights_only=True`` and memory-mapped; its coords are those of ``<feat_dir>/h5_files/<slide>.h5``.

The encoder is the root ``encoder`` attribute, else the ``features`` dataset's (TRIDENT), else the
``features_<encoder>`` folder name, else unknown. Every problem (no coords, rows != coords, NaN/inf rows, coords off
the slide, a ``.pt`` that is not a plain tensor) is a one-line :class:`PathouccError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pathoucc.errors import PathouccError
from pathoucc.files import read_torch
from pathoucc.slides.coords import find_slide, grid_stride, positive_int, slide_name
from pathoucc.slides.h5rows import RawRows, read_h5_rows
from pathoucc.slides.patchfile import PatchFile
from pathoucc.slides.reader import open_slide

__all__ = ["FeatureFile", "is_feature_file", "open_features"]

_SCAN_ROWS = 8192  # rows checked for NaN/inf at once when a file is opened (32 MB at D = 1024)


@dataclass(kw_only=True)
class FeatureFile(PatchFile):
    """The feature vectors of one slide (``layout`` ``trident``, ``clam`` or ``clam-pt``); ``patch_level`` is 0
    and ``slide_path`` is ``""`` when the slide was not found (then there is no overlay).

    dim : D, values per vector; encoder : the encoder's name, or None when unknown; weights_digest : hex sha256 of
    its weights (``pathoucc features`` files), or None.
    """

    dim: int
    encoder: str | None = None
    weights_digest: str | None = None
    _data: Any = field(default=None, repr=False)
    _file: h5py.File | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """(D,) of one instance: a feature vector."""
        return (self.dim,)

    @property
    def has_pixels(self) -> bool:
        return False

    def _rows(self) -> Any:
        if self._data is None:
            if self.layout == "clam-pt":
                self._data = _read_pt(self.path, mmap=True).numpy()
            else:  # raw reads need no HDF5 handle (nor its metadata cache, megabytes for one-row chunks)
                self._file = h5py.File(self.path, "r")
                self._data = RawRows.of(self._file["features"], self.path) or self._file["features"]
                if isinstance(self._data, RawRows):
                    self._file.close()
                    self._file = None
        return self._data

    def _read_pixels(self, index: slice | np.ndarray) -> np.ndarray:
        """Feature rows ``index`` as ``(n, D)`` float32; a NaN/inf row is an error naming the file."""
        data = self._rows()
        if isinstance(data, RawRows):
            index = np.arange(self.num_patches)[index] if isinstance(index, slice) else index
            unique, inverse = np.unique(index, return_inverse=True)
            rows = np.asarray(data.read(unique), np.float32)[inverse.ravel()]
        elif isinstance(index, slice) or isinstance(data, np.ndarray):
            rows = np.asarray(data[index], np.float32)
        else:
            rows = read_h5_rows(data, index)
        if not np.isfinite(rows).all():
            raise PathouccError("feature rows hold NaN or inf values", self.path)
        return rows

    def close(self) -> None:
        if isinstance(self._data, RawRows):
            self._data.close()
        if self._file is not None:
            self._file.close()
        self._file, self._data = None, None

    def __getstate__(self) -> dict:  # picklable for DataLoader workers: each reopens the file
        state = self.__dict__.copy()
        state["_file"], state["_data"] = None, None
        return state


def is_feature_file(path: str | Path) -> bool:
    """True for a ``.pt`` file or an HDF5 file with a ``features`` dataset (without ``patches``)."""
    path = Path(path)
    if path.suffix.lower() == ".pt":
        return True
    try:
        with h5py.File(path, "r") as f:
            return isinstance(f.get("features"), h5py.Dataset) and "patches" not in f
    except OSError:
        return False


def _read_pt(path: Path, mmap: bool = False):
    """The tensor of a CLAM ``.pt`` feature file (weights_only); anything else is an error naming it."""
    import torch  # only .pt feature files need torch here

    value = read_torch(path, "feature file (.pt)", mmap=mmap)
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or not value.is_floating_point():
        kind = type(value).__name__ if not isinstance(value, torch.Tensor) else f"{value.dtype} {tuple(value.shape)}"
        raise PathouccError(f"is not a plain (N, D) float tensor of features (it holds {kind})", path)
    return value.float() if value.dtype != torch.float32 else value


def _str(value: object) -> str | None:
    value = value.decode() if isinstance(value, bytes) else value
    return value.strip() if isinstance(value, str) and value.strip() and value.strip() != "None" else None


def open_features(path: str | Path, slide: str | Path | None = None,
                  patch_size_level0: float | None = None, scan: bool = True) -> FeatureFile:
    """Open and validate a feature file (TRIDENT, CLAM ``.h5`` or ``.pt``, ``pathoucc features``).

    ``slide`` is the slide file or a folder holding it (found by the slide's name, as for coords files; not found:
    no overlay); ``patch_size_level0`` the level-0 patch side for CLAM files. With ``scan`` every row is checked
    for NaN/inf now (in chunks; reads check their rows in any case)."""
    path = Path(path)
    if not path.is_file():
        raise PathouccError("feature file not found", path)
    if path.suffix.lower() == ".pt":
        coords_path = path.parent.parent / "h5_files" / f"{path.stem}.h5"
        if not coords_path.is_file():
            raise PathouccError(f"a CLAM .pt feature file has no coords: {coords_path} (CLAM's h5_files/) is "
                                "missing", path)
        rows = _read_pt(path, mmap=True).numpy()
        with _h5(coords_path) as f:
            coords, attrs = _coords(f, coords_path)
        meta: dict[str, Any] = {"layout": "clam-pt", "root": {}, "features": {}}
        dim = _check_rows(rows, len(coords), path, scan)
    else:
        with _h5(path) as f:
            ds = f.get("features")
            if not isinstance(ds, h5py.Dataset):
                raise PathouccError("has no 'features' dataset: not a feature file", path)
            coords, attrs = _coords(f, path)
            dim = _check_rows(ds, len(coords), path, scan=False)
            raw = RawRows.of(ds, path)  # kept open: the file's first reads need no new lookup
            try:
                if scan:
                    _scan_rows(ds if raw is None else raw, len(coords), path)
            except PathouccError:
                if raw is not None:
                    raw.close()
                raise
            trident = "patch_size_level0" in attrs or "target_magnification" in attrs
            meta = {"layout": "trident" if trident else "clam", "root": dict(f.attrs), "features": dict(ds.attrs)}
        try:
            out = _feature_file(path, coords, attrs, dim, meta, slide, patch_size_level0)
        except PathouccError:
            if raw is not None:
                raw.close()
            raise
        out._data = raw
        return out
    return _feature_file(path, coords, attrs, dim, meta, slide, patch_size_level0)


def _h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError:
        raise PathouccError("not an HDF5 file (or it is truncated)", path) from None


def _coords(f: h5py.File, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    ds = f.get("coords")
    if not isinstance(ds, h5py.Dataset):
        raise PathouccError("has no 'coords' dataset: the feature rows cannot be placed on the slide", path)
    if ds.ndim != 2 or ds.shape[1] != 2 or not np.issubdtype(ds.dtype, np.number):
        raise PathouccError(f"coords is {ds.shape} {ds.dtype}, expected (N, 2) integers", path)
    coords = np.asarray(ds[()], np.float64)
    if not np.isfinite(coords).all():
        raise PathouccError("coords hold NaN or inf values", path)
    return np.rint(coords).astype(np.int64), dict(ds.attrs)


def _check_rows(rows: Any, n: int, path: Path, scan: bool) -> int:
    """D of ``rows`` (N, D) after checking it: as many rows as coords, float, at least one, all finite (``scan``)."""
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.floating):
        raise PathouccError(f"features is {rows.shape} {rows.dtype}, expected (N, D) floats", path)
    if rows.shape[0] != n:
        raise PathouccError(f"holds {rows.shape[0]} feature rows but {n} coords: they must pair one to one", path)
    if n == 0:
        raise PathouccError("it holds zero feature rows", path)
    if scan:
        _scan_rows(rows, n, path)
    return int(rows.shape[1])


def _scan_rows(rows: Any, n: int, path: Path) -> None:
    """Refuse ``rows`` (an array, an HDF5 dataset or a :class:`RawRows`) if any of its ``n`` rows holds NaN/inf."""
    for a in range(0, n, _SCAN_ROWS):
        b = min(n, a + _SCAN_ROWS)
        part = rows.read(np.arange(a, b)) if isinstance(rows, RawRows) else np.asarray(rows[a:b])
        bad = ~np.isfinite(part).all(1)
        if bad.any():
            raise PathouccError(f"feature row {a + int(np.argmax(bad))} holds NaN or inf "
                                f"({int(bad.sum())} such rows in rows {a}..{b - 1})", path)


def _feature_file(path: Path, coords: np.ndarray, attrs: dict[str, Any], dim: int, meta: dict[str, Any],
                  slide: str | Path | None, patch_size_level0: float | None) -> FeatureFile:
    def fail(msg: str) -> PathouccError:
        return PathouccError(f"invalid feature file: {msg}", path)

    layout = meta["layout"]
    if layout == "trident":
        missing = [a for a in ("patch_size",) if a not in attrs]
        if "patch_size_level0" not in attrs and not {"level0_magnification", "target_magnification"} <= set(attrs):
            missing.append("patch_size_level0 (or level0_magnification and target_magnification)")
        if missing:
            raise fail(f"coords lacks attribute(s) {', '.join(missing)}")
        patch_size = positive_int(attrs["patch_size"], "patch_size", fail)
        if "patch_size_level0" in attrs:
            extent = float(np.asarray(attrs["patch_size_level0"]).ravel()[0])
        else:  # as TRIDENT computes it
            extent = patch_size * float(attrs["level0_magnification"]) / float(attrs["target_magnification"])
    else:
        extent = patch_size_level0 or float(grid_stride(coords, 1.0, 1 << 30, {}))
        if extent >= 1 << 30:
            raise fail("the patch's level-0 side is unknown (one row, or rows not on a grid): set "
                       "data.patch_size_level0")
        patch_size = max(1, round(extent))
    if not extent > 0:
        raise fail(f"patch_size_level0 must be positive, got {extent}")
    downsample = extent / patch_size
    name = slide_name(attrs, path)
    slide_file: Path | None
    try:
        slide_file = find_slide(path, name, slide)
    except PathouccError:
        if slide is not None and not Path(slide).exists():
            raise
        slide_file = None
    width, height = (attrs.get(k) for k in ("level0_width", "level0_height"))
    if width is not None and height is not None:
        dims = (int(np.asarray(width).ravel()[0]), int(np.asarray(height).ravel()[0]))
    elif slide_file is not None:
        with open_slide(slide_file) as s:
            dims = tuple(int(v) for v in s.dimensions)
    else:  # unknown: the patches' extent
        dims = tuple(int(np.ceil(v)) for v in coords.max(0) + extent)
    off = (coords < 0).any(1) | (coords[:, 0] >= dims[0]) | (coords[:, 1] >= dims[1])
    if off.any():
        x, y = coords[int(np.argmax(off))].tolist()
        raise fail(f"{int(off.sum())} coords lie outside the slide ({dims[0]}x{dims[1]} level-0 px), e.g. "
                   f"({x}, {y})")
    encoder = (_str(meta["root"].get("encoder")) or _str(meta["features"].get("encoder"))
               or (path.parent.name.removeprefix("features_") if path.parent.name.startswith("features_") else None))
    stride = grid_stride(coords, downsample, patch_size, attrs)
    return FeatureFile(
        path=path, layout=layout, coords=coords, patch_size=patch_size, patch_level=0, downsample=downsample,
        stride=stride, level_dimensions=(int(dims[0] / downsample + 1e-6), int(dims[1] / downsample + 1e-6)),
        slide_path="" if slide_file is None else str(slide_file.resolve()), slide_dimensions=dims, mpp=None,
        dim=dim, encoder=encoder, weights_digest=_str(meta["root"].get("weights_digest")))
