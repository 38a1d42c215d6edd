"""Feature files in TRIDENT's layout (``trident/wsi_objects/WSI.py:extract_patch_features`` and
``trident/IO.py:save_h5, coords_to_h5``), one per slide: ``<out>/features_<encoder>/<slide>.h5`` with

- ``features`` (N, D) float32, attributes ``name`` (the slide), ``savetodir`` (the features folder), ``encoder``;
- ``coords`` (N, 2) int64 level-0 (x, y) patch top-lefts, with TRIDENT's patching attributes: ``patch_size`` (px
  at the patching resolution), ``patch_size_level0``, ``level0_magnification``, ``target_magnification``,
  ``overlap``, ``name``, ``savetodir`` (the folder of the patch file), ``level0_width``, ``level0_height``
  (integers as int64, names as str). From a TRIDENT coords file they are copied as they are (as TRIDENT does);
  otherwise they are computed, the magnifications from the level-0 microns per pixel by TRIDENT's rule (0.25 ->
  40x, 0.5 -> 20x, ...) and, without a known mpp, the string ``'None'`` (TRIDENT's ``save_h5`` writes a None so);
- root attributes of pathoucc's: ``encoder`` (the timm model name or the local name) and ``weights_digest`` (hex
  SHA-256), by which a re-run tells a finished slide from a stale one.

Both datasets are resizable along N (``maxshape (None, ...)``) as TRIDENT makes them; the chunks hold up to 1024
rows rather than TRIDENT's one, so that a reader streaming millions of rows does not fetch them one by one.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from pathoucc.files import atomic_path
from pathoucc.slides.patchfile import PatchFile

__all__ = ["TRIDENT_COORDS_ATTRS", "coords_attributes", "feature_path", "stamp_of", "write_features"]

TRIDENT_COORDS_ATTRS = ("patch_size", "patch_size_level0", "level0_magnification", "target_magnification",
                        "overlap", "name", "savetodir", "level0_width", "level0_height")
CHUNK_ROWS = 1024


def feature_path(out: str | Path, encoder: str, slide: str) -> Path:
    """``<out>/features_<encoder>/<slide>.h5`` (``encoder``: a folder-name part)."""
    return Path(out) / f"features_{encoder}" / f"{slide}.h5"


def slide_name(patches: PatchFile) -> str:
    """The slide's name, as TRIDENT names its outputs: the slide file's name without its extension."""
    return Path(patches.slide_path).stem


def magnification(mpp: float) -> int | None:
    """TRIDENT's ``_fetch_magnification``: level-0 microns per pixel -> 80, 60, 40, 20, 10 or 5 (None beyond)."""
    for limit, mag in ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5)):
        if mpp < limit:
            return mag
    return None


def coords_attributes(patches: PatchFile) -> dict[str, object]:
    """TRIDENT's attributes of ``coords`` for a patch file: copied from a TRIDENT coords file, computed otherwise."""
    if patches.layout == "trident":
        with h5py.File(patches.path, "r") as f:
            attrs = dict(f["coords"].attrs)
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    level0 = None if patches.mpp is None else magnification(float(patches.mpp[0]))
    target = None if level0 is None else round(level0 / patches.downsample)
    return {
        "patch_size": np.int64(patches.patch_size),
        "patch_size_level0": np.int64(max(1, round(patches.patch_size * patches.downsample))),
        "level0_magnification": "None" if level0 is None else np.int64(level0),
        "target_magnification": "None" if target is None else np.int64(target),
        "overlap": np.int64(max(0, patches.patch_size - patches.stride)),
        "name": slide_name(patches),
        "savetodir": str(Path(patches.path).parent),
        "level0_width": np.int64(patches.slide_dimensions[0]),
        "level0_height": np.int64(patches.slide_dimensions[1]),
    }


def write_features(path: Path, features: np.ndarray, coords: np.ndarray, coords_attrs: dict[str, object],
                   name: str, encoder: str, weights_digest: str) -> None:
    """Write one slide's feature file atomically (a crash or an error leaves no file under ``path``).

    features : (N, D) float32; coords : (N, 2) level-0 (x, y); coords_attrs : :func:`coords_attributes`."""
    if features.ndim != 2 or coords.shape != (len(features), 2):
        raise ValueError(f"features {features.shape} and coords {coords.shape} do not match (N, D) and (N, 2)")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        rows = max(1, min(CHUNK_ROWS, len(features)))
        ds = f.create_dataset("features", data=features.astype(np.float32, copy=False),
                              maxshape=(None, features.shape[1]), chunks=(rows, features.shape[1]))
        ds.attrs.update({"name": name, "savetodir": str(path.parent), "encoder": encoder})
        cs = f.create_dataset("coords", data=np.asarray(coords, np.int64), maxshape=(None, 2), chunks=(rows, 2))
        cs.attrs.update(coords_attrs)
        f.attrs.update({"encoder": encoder, "weights_digest": weights_digest})


def stamp_of(path: Path) -> tuple[str, str, np.ndarray] | None:
    """``(encoder, weights_digest, coords)`` of an existing feature file; None when it is unreadable or lacks
    them (then it is written again)."""
    try:
        with h5py.File(path, "r") as f:
            enc, digest = f.attrs.get("encoder"), f.attrs.get("weights_digest")
            if enc is None or digest is None or "features" not in f or "coords" not in f:
                return None
            if f["features"].shape[0] != f["coords"].shape[0]:
                return None
            return _str(enc), _str(digest), np.asarray(f["coords"][()], np.int64)
    except (OSError, KeyError, ValueError):
        return None


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
