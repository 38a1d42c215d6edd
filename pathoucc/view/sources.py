"""What the viewer shows: segmentation folders (``pathoucc segment`` outputs) found under the given paths, each with
its cluster map, patches, cluster colours and names, and the slide it was made from.

A path may be one segmentation folder (it holds ``clusters.h5``), a folder of them (``segment --out``), or a run
folder whose ``segments/`` holds them. Everything is checked before anything is served: a folder without
segmentation outputs, a ``clusters.h5`` that cannot be read, a slide that is gone (and not found by name in
``slide_dir``) or no longer the size it had when it was segmented are each a :class:`PathouccError` naming the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pathoucc.errors import PathouccError, quote
from pathoucc.segment.maps import cluster_colors
from pathoucc.slides.reader import open_slide

__all__ = ["CLUSTERS_FILE", "SlideView", "find_segmentations", "load_view", "load_views"]

CLUSTERS_FILE = "clusters.h5"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class SlideView:
    """One segmented slide as the viewer needs it.

    id : the slide's name in URLs (the folder name when URL-safe, else ``slide-<i>``); name : the folder name.
    slide_path : the slide file; dimensions : its level-0 (W, H) px; mpp : µm per level-0 px, or None.
    cluster_map : (H, W) int16 map cells (-1 = no patch), each ``cell`` level-0 px square, from level-0 (0, 0).
    coords : (N, 2) int64 level-0 top-left of each patch, ``extent`` level-0 px square; clusters : (N,) int64;
    distance : (N,) float32 feature distance of each patch to its cluster's centre, or None if not recorded.
    colors : (K, 3) uint8, the stored ``cluster_colors`` (else the default palette); names : K cluster names;
    counts : (K,) patches per cluster.
    """

    id: str
    name: str
    folder: Path
    slide_path: Path
    dimensions: tuple[int, int]
    mpp: float | None
    cluster_map: np.ndarray
    cell: float
    coords: np.ndarray
    extent: float
    clusters: np.ndarray
    distance: np.ndarray | None
    colors: np.ndarray
    names: list[str]
    counts: np.ndarray

    @property
    def k(self) -> int:
        return len(self.names)


def find_segmentations(path: str | Path) -> list[Path]:
    """The segmentation folders at ``path``: itself, its subfolders, or its ``segments/`` subfolders (sorted)."""
    path = Path(path)
    if not path.exists():
        raise PathouccError("not found", path)
    if path.is_file():
        if path.name == CLUSTERS_FILE:
            return [path.parent]
        raise PathouccError(f"is a file; give a segmentation folder (with {CLUSTERS_FILE}) or a folder of them",
                            path)
    if (path / CLUSTERS_FILE).is_file():
        return [path]
    for base in (path, path / "segments"):
        found = sorted(p for p in base.iterdir() if (p / CLUSTERS_FILE).is_file()) if base.is_dir() else []
        if found:
            return found
    raise PathouccError(f"no segmentation outputs here: no {CLUSTERS_FILE} in the folder, its subfolders or its "
                        "segments/ (write them with `pathoucc segment`)", path)


def load_views(paths: list[str | Path], slide_dir: str | Path | None = None) -> list[SlideView]:
    """Every segmentation under ``paths``, checked and loaded; ids are unique."""
    folders = [folder for p in paths for folder in find_segmentations(p)]
    if not folders:
        raise PathouccError("no segmentation folders given")
    views: list[SlideView] = []
    seen: set[str] = set()
    for i, folder in enumerate(dict.fromkeys(f.resolve() for f in folders)):
        view = load_view(folder, slide_dir)
        if not _SAFE_ID.fullmatch(view.id) or view.id in seen:
            view.id = f"slide-{i}"
        seen.add(view.id)
        views.append(view)
    return views


def load_view(folder: str | Path, slide_dir: str | Path | None = None) -> SlideView:
    """Read ``folder/clusters.h5`` and check its slide (looked up as ``slide_dir/<file name>`` if it moved)."""
    folder = Path(folder)
    path = folder / CLUSTERS_FILE
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            cluster_map = np.asarray(f["map"][()], np.int16)
            cell = float(f["map"].attrs["cell"])
            span = int(f["map"].attrs.get("span", 1))
            coords = np.asarray(f["coords"][()], np.int64).reshape(-1, 2)
            clusters = np.asarray(f["cluster"][()], np.int64).ravel()
            dist2 = np.asarray(f["distances"][()], np.float32) if "distances" in f else None
            names = _names(f, attrs)
            stored = np.asarray(attrs["cluster_colors"], np.uint8) if "cluster_colors" in attrs else None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise PathouccError(f"not a readable segmentation file ({type(exc).__name__}: {exc})", path) from None
    k = int(attrs.get("k", 0)) or (int(clusters.max()) + 1 if clusters.size else 1)
    if cluster_map.ndim != 2 or len(coords) != len(clusters) or (clusters.size and not 0 <= clusters.min() <=
                                                                  clusters.max() < k) or cell <= 0:
        raise PathouccError("inconsistent segmentation file (map, coords, clusters or k disagree)", path)
    if names is not None and len(names) != k:
        raise PathouccError(f"has {len(names)} cluster names for k = {k} clusters", path)
    colors = stored if stored is not None and stored.shape == (k, 3) else cluster_colors(k)
    distance = None
    if dist2 is not None and dist2.shape == (len(clusters), k):
        distance = np.sqrt(np.maximum(dist2[np.arange(len(clusters)), clusters], 0)).astype(np.float32)
    slide_path, dims, mpp = _check_slide(path, attrs, slide_dir)
    return SlideView(
        id=folder.name, name=folder.name, folder=folder, slide_path=slide_path, dimensions=dims, mpp=mpp,
        cluster_map=cluster_map, cell=cell, coords=coords, extent=cell * span, clusters=clusters, distance=distance,
        colors=colors, names=names or [f"cluster {c}" for c in range(k)],
        counts=np.bincount(clusters, minlength=k)[:k])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _names(f: h5py.File, attrs: dict) -> list[str] | None:
    """Cluster names the segmentation carries (``cluster_names``: an attribute, a JSON list or a dataset), or None."""
    raw = f["cluster_names"][()] if "cluster_names" in f else attrs.get("cluster_names")
    if raw is None:
        return None
    if isinstance(raw, str | bytes):
        text = _text(raw)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            raw = [text]
    return [_text(v) for v in np.asarray(raw, dtype=object).ravel()]


def _check_slide(path: Path, attrs: dict, slide_dir: str | Path | None) -> tuple[Path, tuple[int, int], float | None]:
    """The slide of a segmentation (``slide_path``, or by name in ``slide_dir``), its size (checked) and mpp."""
    recorded = _text(attrs.get("slide_path", ""))
    if not recorded:
        raise PathouccError("records no slide (slide_path is empty); the viewer needs the slide file", path)
    slide = Path(recorded)
    if not slide.exists() and slide_dir is not None and (Path(slide_dir) / slide.name).exists():
        slide = Path(slide_dir) / slide.name
    if not slide.exists():
        hint = f"; not in {slide_dir} either" if slide_dir is not None else "; give --slide-dir where it is now"
        raise PathouccError(f"its slide {quote(recorded)} is not there (moved since segmentation?){hint}", path)
    with open_slide(slide) as s:
        dims, mpp = s.dimensions, (None if s.mpp is None else float(np.mean(s.mpp)))
    want = tuple(int(v) for v in np.asarray(attrs.get("slide_dimensions", dims)).ravel()[:2])
    if tuple(dims) != want:
        raise PathouccError(f"its slide {slide} is {dims[0]} x {dims[1]} px, but the segmentation was made on a "
                            f"{want[0]} x {want[1]} px slide: not the same slide", path)
    return slide, (int(dims[0]), int(dims[1])), mpp
