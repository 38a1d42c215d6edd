"""Dense class annotations as a label raster (class index per pixel), and the majority class under each patch.

A label mask (:mod:`.mask`) and GeoJSON class polygons (:mod:`.geojson`) both become a :class:`LabelRaster`
in level-0 coordinates of the slide; :func:`patch_labels` gives each patch the class covering most of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pathoucc.errors import PathouccError
from pathoucc.slides.boxsum import box_sums, integral_image

__all__ = ["MAX_RASTER_PIXELS", "LabelRaster", "check_file", "patch_labels", "rasterise_polygons"]

MAX_RASTER_PIXELS = 2**26  # label rasters above this many pixels must be given at a lower resolution
_CHUNK = 1 << 18  # patches per chunk: keeps the temporaries small for millions of patches


@dataclass
class LabelRaster:
    """Per-pixel class indices ``labels`` (h, w) int16 (-1 = unlabelled) covering the slide.

    ``downsample`` = (sx, sy) level-0 pixels per raster pixel; ``class_names[i]`` names class ``i``.
    """

    labels: np.ndarray
    downsample: tuple[float, float]
    class_names: list[str]
    source: Path | None


def check_file(path: Path, what: str) -> None:
    """Raise naming ``path`` if it is missing or empty (``what`` names the kind of file)."""
    if not path.is_file():
        raise PathouccError(f"{what} file not found", path)
    if path.stat().st_size == 0:
        raise PathouccError(f"{what} file is empty", path)


def rasterise_polygons(shapes: list[tuple[str, list]], names: list[str], slide_dimensions: tuple[int, int],
                       downsample: float, path: Path) -> LabelRaster:
    """Fill ``shapes`` (class name, polygon as a list of rings: outer first, then holes) at ``downsample``.

    Class ``names[i]`` is index ``i``; later shapes win where they overlap, holes are cleared. Raises if no
    polygon overlaps the ``(W, H)`` level-0 slide.
    """
    index = {name: i for i, name in enumerate(names)}
    W, H = slide_dimensions
    downsample = max(float(downsample), math.sqrt(W * H / MAX_RASTER_PIXELS), 1.0)
    rw, rh = max(1, math.ceil(W / downsample)), max(1, math.ceil(H / downsample))
    canvas = Image.new("L", (rw, rh), 0)
    draw = ImageDraw.Draw(canvas)
    overlaps = False
    for name, polygon in shapes:
        for k, ring in enumerate(polygon):
            pts = np.asarray(ring, dtype=np.float64)
            if pts.ndim != 2 or pts.shape[0] < 3 or pts.shape[1] < 2:
                continue
            if k == 0:
                overlaps |= bool(pts[:, 0].max() > 0 and pts[:, 1].max() > 0 and pts[:, 0].min() < W
                                 and pts[:, 1].min() < H)
            draw.polygon([tuple(p) for p in (pts[:, :2] / downsample)], fill=index[name] + 1 if k == 0 else 0)
    if not overlaps:
        raise PathouccError(f"no annotation overlaps the slide (level 0 is {W}x{H} px); are the coordinates in "
                            "level-0 pixels of this slide?", path)
    labels = np.asarray(canvas).astype(np.int16) - 1
    return LabelRaster(labels, (W / rw, H / rh), list(names), path)


def patch_labels(raster: LabelRaster, coords: np.ndarray, extent: float, min_coverage: float = 0.5) -> np.ndarray:
    """Majority class under each patch: ``coords`` (N, 2) level-0 top-left, ``extent`` level-0 side length.

    A patch whose labelled pixels cover less than ``min_coverage`` of it gets -1. Returns (N,) int64.
    """
    coords = np.asarray(coords).reshape(-1, 2)
    h, w = raster.labels.shape
    n = len(coords)
    best = np.full(n, -1, np.int64)
    best_count = np.zeros(n, np.int32)
    labelled = np.zeros(n, np.int32)
    integral = np.zeros((h + 1, w + 1), np.int32)
    for c in range(len(raster.class_names)):
        hit = raster.labels == c
        if not hit.any():
            continue
        integral_image(hit, out=integral)
        for a in range(0, n, _CHUNK):
            chunk = slice(a, a + _CHUNK)
            count = box_sums(integral, *_raster_boxes(coords[chunk], extent, raster))
            labelled[chunk] += count
            better = count > best_count[chunk]
            best[chunk][better] = c
            best_count[chunk][better] = count[better]
    for a in range(0, n, _CHUNK):
        chunk = slice(a, a + _CHUNK)
        x0, y0, x1, y1 = _raster_boxes(coords[chunk], extent, raster)
        area = np.maximum((x1 - x0) * (y1 - y0), 1)
        best[chunk][labelled[chunk] < min_coverage * area] = -1
    return best


def _raster_boxes(coords: np.ndarray, extent: float, raster: LabelRaster) -> tuple[np.ndarray, ...]:
    """Raster-pixel bounds x0, y0, x1, y1 (int64, at least one pixel unless outside) of level-0 patch boxes."""
    h, w = raster.labels.shape
    sx, sy = raster.downsample
    coords = coords.astype(np.float64)
    x0 = np.clip(np.floor(coords[:, 0] / sx + 1e-6), 0, w).astype(np.int64)
    y0 = np.clip(np.floor(coords[:, 1] / sy + 1e-6), 0, h).astype(np.int64)
    x1 = np.clip(np.ceil((coords[:, 0] + extent) / sx - 1e-6), 0, w).astype(np.int64)
    y1 = np.clip(np.ceil((coords[:, 1] + extent) / sy - 1e-6), 0, h).astype(np.int64)
    return x0, y0, np.maximum(x1, np.minimum(x0 + 1, w)), np.maximum(y1, np.minimum(y0 + 1, h))
