"""Patch labels and region (bag) unique class counts from slide annotations.

Three sources, all in level-0 coordinates of the slide:

* a label-mask image aligned with the slide (one class index per pixel, possibly at lower resolution),
* a QuPath GeoJSON export (polygons with ``properties.classification.name``), rasterised at a reduced scale,
* a CSV of regions ``slide,x,y,width,height,ucc`` (bag-level counts only; patch labels stay unknown).

A mask or GeoJSON becomes a :class:`LabelRaster` (class index per pixel, -1 = unlabelled); patches take the
majority class under them, regions are fixed windows and their UCC is counted from the patch labels.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pathoucc.errors import PathouccError

__all__ = [
    "LabelRaster", "RegionTable", "assign_regions", "grid_regions", "patch_labels", "read_geojson",
    "read_label_mask", "read_regions_csv", "region_ucc",
]

MAX_RASTER_PIXELS = 2**26  # label rasters above this many pixels must be given at a lower resolution


@dataclass
class LabelRaster:
    """Per-pixel class indices ``labels`` (h, w) int16 (-1 = unlabelled) covering the slide.

    ``downsample`` = (sx, sy) level-0 pixels per raster pixel; ``class_names[i]`` names class ``i``.
    """

    labels: np.ndarray
    downsample: tuple[float, float]
    class_names: list[str]
    source: Path


@dataclass
class RegionTable:
    """Regions given explicitly: ``boxes`` (R, 4) int64 level-0 (x, y, w, h) and their ``ucc`` (R,) int64."""

    boxes: np.ndarray
    ucc: np.ndarray
    source: Path


def read_label_mask(path: str | Path, slide_dimensions: tuple[int, int], *, zero_is_background: bool = True,
                    classes: list[str] | None = None) -> LabelRaster:
    """Read a single-channel label mask (PNG/TIFF, 8 or 16 bit) covering the whole slide.

    Pixel value ``v`` is class ``v - 1`` with 0 = unlabelled if ``zero_is_background``, else class ``v``.
    The mask may be smaller than level 0 (same aspect ratio): it is scaled by its size relative to level 0.
    """
    path = Path(path)
    _check_file(path, "label mask")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS, old = MAX_RASTER_PIXELS, Image.MAX_IMAGE_PIXELS
            try:
                image = Image.open(path)
                image.load()
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except Image.DecompressionBombError:
        raise PathouccError(f"label mask has more than {MAX_RASTER_PIXELS} pixels; save it at a lower resolution "
                            "(it is scaled to the slide by its size)", path) from None
    except (OSError, ValueError, SyntaxError):
        raise PathouccError("not an image Pillow can read (expected a single-channel label mask)", path) from None
    if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise PathouccError(f"label mask must be single-channel (one class index per pixel), got mode {image.mode}",
                            path)
    values = np.asarray(image).astype(np.int64)
    mw, mh = image.size
    W, H = slide_dimensions
    sx, sy = W / mw, H / mh
    if abs(sx / sy - 1) > 0.02:
        raise PathouccError(f"label mask is {mw}x{mh} px, which does not match the slide's aspect ratio "
                            f"({W}x{H} at level 0)", path)
    labels = values - 1 if zero_is_background else values
    if labels.min() < -1:
        raise PathouccError(f"label mask has negative value {values.min()}", path)
    num = int(labels.max()) + 1
    if num <= 0:
        raise PathouccError("label mask has no labelled pixel (all background); the annotations do not overlap "
                            "the slide", path)
    if classes is not None and num > len(classes):
        value = num if zero_is_background else num - 1
        raise PathouccError(f"label mask has value {value} (class {num - 1}) but only {len(classes)} classes are "
                            f"named ({', '.join(classes)})", path)
    names = list(classes) if classes is not None else [str(i) for i in range(num)]
    return LabelRaster(labels.astype(np.int16), (sx, sy), names, path)


def read_geojson(path: str | Path, slide_dimensions: tuple[int, int], *, classes: list[str] | None = None,
                 downsample: float = 8.0) -> LabelRaster:
    """Rasterise a QuPath GeoJSON export (FeatureCollection, list of features or one feature) at ``downsample``.

    Polygons and MultiPolygons are filled with their ``properties.classification.name`` class (holes cleared;
    later features win where they overlap); features without a classification and other geometries are ignored.
    Class indices follow ``classes`` if given (a name not in it is an error), else the sorted names in the file.
    """
    path = Path(path)
    _check_file(path, "GeoJSON")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PathouccError(f"not valid GeoJSON ({exc})", path) from None
    features = _features(data, path)
    shapes: list[tuple[str, list]] = []
    for i, feature in enumerate(features):
        props = feature.get("properties") or {}
        cls = props.get("classification")
        name = cls.get("name") if isinstance(cls, dict) else cls
        if not name:
            continue
        for polygon in _polygons(feature.get("geometry"), path, i):
            shapes.append((str(name), polygon))
    if not shapes:
        raise PathouccError("no classified Polygon/MultiPolygon features (QuPath properties.classification.name)",
                            path)
    names = sorted({name for name, _ in shapes}) if classes is None else list(classes)
    index = {name: i for i, name in enumerate(names)}
    for name, _ in shapes:
        if name not in index:
            raise PathouccError(f"class {name!r} is not one of the given classes ({', '.join(names)})", path)
    if len(names) > 254:
        raise PathouccError(f"too many classes ({len(names)} > 254)", path)
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
    return LabelRaster(labels, (W / rw, H / rh), names, path)


def read_regions_csv(path: str | Path, slide_path: str | Path, slide_dimensions: tuple[int, int]) -> RegionTable:
    """Read the rows of a ``slide,x,y,width,height,ucc`` CSV that belong to ``slide_path``.

    A row belongs to the slide if its ``slide`` value equals the slide's file name or stem (or a path with that
    name). Boxes are level-0 pixels. Raises if no row names the slide or none overlaps it.
    """
    path, slide_path = Path(path), Path(slide_path)
    _check_file(path, "regions CSV")
    required = ["slide", "x", "y", "width", "height", "ucc"]
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in fields]
            if missing:
                raise PathouccError(f"regions CSV lacks column(s) {', '.join(missing)} (need {','.join(required)})",
                                    path)
            rows = []
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                name = Path(row["slide"])
                if name.name not in (slide_path.name, slide_path.stem) and name.stem != slide_path.stem:
                    continue
                try:
                    values = [int(float(row[c])) for c in required[1:]]
                except ValueError:
                    raise PathouccError(f"line {line}: x, y, width, height, ucc must be numbers", path) from None
                if values[2] <= 0 or values[3] <= 0 or values[4] < 0:
                    raise PathouccError(f"line {line}: width and height must be positive and ucc >= 0", path)
                rows.append(values)
    except UnicodeDecodeError:
        raise PathouccError("regions CSV is not UTF-8 text", path) from None
    if not rows:
        raise PathouccError(f"no rows for slide {slide_path.name} (the 'slide' column must hold its file name "
                            "or stem)", path)
    table = np.asarray(rows, dtype=np.int64)
    W, H = slide_dimensions
    boxes = table[:, :4]
    inside = (boxes[:, 0] < W) & (boxes[:, 1] < H) & (boxes[:, 0] + boxes[:, 2] > 0) & (boxes[:, 1] + boxes[:, 3] > 0)
    if not inside.any():
        raise PathouccError(f"none of the {len(rows)} regions for {slide_path.name} overlaps the slide "
                            f"(level 0 is {W}x{H} px)", path)
    return RegionTable(boxes, table[:, 4].copy(), path)


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
        np.cumsum(hit, axis=0, out=integral[1:, 1:])
        np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
        for a in range(0, n, 1 << 18):  # chunks keep the temporaries small for millions of patches
            chunk = coords[a:a + (1 << 18)]
            x0, y0, x1, y1 = _raster_boxes(chunk, extent, raster)
            count = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            labelled[a:a + len(chunk)] += count
            better = count > best_count[a:a + len(chunk)]
            best[a:a + len(chunk)][better] = c
            best_count[a:a + len(chunk)][better] = count[better]
    for a in range(0, n, 1 << 18):
        chunk = coords[a:a + (1 << 18)]
        x0, y0, x1, y1 = _raster_boxes(chunk, extent, raster)
        area = np.maximum((x1 - x0) * (y1 - y0), 1)
        best[a:a + len(chunk)][labelled[a:a + len(chunk)] < min_coverage * area] = -1
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


def grid_regions(positions: np.ndarray, patch_size: int, region_size: int, downsample: float,
                 slide_dimensions: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed ``region_size`` windows (output-level pixels) on a grid starting at (0, 0).

    ``positions`` (N, 2) are patch top-lefts in output-level pixels. A patch belongs to the window containing it
    entirely (-1 if it straddles a border). Returns ``region`` (N,) int64 indices into ``boxes`` (R, 4) int64
    level-0 (x, y, w, h) of the windows that hold at least one patch, in row-major order.
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    if region_size < patch_size:
        raise PathouccError(f"region size {region_size} is smaller than the patch size {patch_size}")
    cell = positions // region_size
    inside = np.all(positions - cell * region_size + patch_size <= region_size, axis=1)
    region = np.full(len(positions), -1, np.int64)
    if not inside.any():
        return region, np.zeros((0, 4), np.int64)
    cols = int(cell[:, 0].max()) + 1
    keys, inverse = np.unique(cell[inside, 1] * cols + cell[inside, 0], return_inverse=True)  # row-major
    region[inside] = inverse.ravel()
    W, H = slide_dimensions
    x = np.rint(keys % cols * region_size * downsample).astype(np.int64)
    y = np.rint(keys // cols * region_size * downsample).astype(np.int64)
    side = round(region_size * downsample)
    boxes = np.stack([x, y, np.minimum(side, W - x), np.minimum(side, H - y)], axis=1)
    return region, boxes


def assign_regions(coords: np.ndarray, extent: float, boxes: np.ndarray) -> np.ndarray:
    """Index of the first box (level-0 x, y, w, h) that contains each whole patch, or -1. Returns (N,) int64."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    region = np.full(len(coords), -1, np.int64)
    order = np.argsort(coords[:, 1], kind="stable")
    ys = coords[order, 1]
    for r, (bx, by, bw, bh) in enumerate(np.asarray(boxes, dtype=np.float64)):
        lo, hi = np.searchsorted(ys, by - 0.5, "left"), np.searchsorted(ys, by + bh - extent + 0.5, "right")
        idx = order[lo:hi]
        xs = coords[idx, 0]
        idx = idx[(xs >= bx - 0.5) & (xs + extent <= bx + bw + 0.5) & (region[idx] < 0)]
        region[idx] = r
    return region


def region_ucc(labels: np.ndarray, region: np.ndarray, num_regions: int) -> np.ndarray:
    """Number of distinct known classes (label >= 0) among each region's patches -> (R,) int64."""
    labels, region = np.asarray(labels), np.asarray(region)
    ok = (labels >= 0) & (region >= 0)
    if not ok.any():
        return np.zeros(num_regions, np.int64)
    classes = int(labels[ok].max()) + 1
    pairs = np.unique(region[ok].astype(np.int64) * classes + labels[ok])  # one entry per (region, class)
    return np.bincount(pairs // classes, minlength=num_regions).astype(np.int64)


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise PathouccError(f"{what} file not found", path)
    if path.stat().st_size == 0:
        raise PathouccError(f"{what} file is empty", path)


def _features(data: object, path: Path) -> list[dict]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        data = [data]
    if not isinstance(data, list) or not all(isinstance(f, dict) for f in data):
        raise PathouccError("expected a GeoJSON FeatureCollection, a Feature or a list of features", path)
    return data


def _polygons(geometry: object, path: Path, index: int) -> list[list]:
    """Polygons (each a list of rings: outer first, then holes) of a geometry; non-areas give none."""
    if not isinstance(geometry, dict):
        return []
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    try:
        if kind == "Polygon":
            return [list(coordinates)]
        if kind == "MultiPolygon":
            return [list(p) for p in coordinates]
        if kind == "GeometryCollection":
            return [p for g in geometry.get("geometries", []) for p in _polygons(g, path, index)]
    except TypeError:
        raise PathouccError(f"feature {index}: malformed {kind} coordinates", path) from None
    return []
