"""Count-only regions from a QuPath GeoJSON export: polygons labelled only with how many classes they hold.

A pathologist draws a region and says how many tissue types it contains ("2") without outlining each one.
Such a region is a bag of the tissue patches inside it, labelled with that unique class count (UCC).

**File.** A GeoJSON ``FeatureCollection``, a JSON list of features (QuPath's default export) or one ``Feature``.
Coordinates are level-0 pixels of the slide. A feature is a *count-only region* when its ``properties`` give

* ``"ucc": 2`` -- a positive integer (``2.0`` is read as 2; ``true``, ``2.5`` and ``"2"`` are errors), or
* ``"classes": ["tumour", "stroma"]`` -- the names present; the count is the number of distinct names, or
* a QuPath measurement named ``ucc``: ``"measurements": {"ucc": 2}`` or ``[{"name": "ucc", "value": 2}]``.

When several are given they must agree. Its geometry is a ``Polygon`` or ``MultiPolygon`` (holes respected)
whose rings are closed (first point = last point) and which is valid (no self-intersection).

**In QuPath.** Draw an annotation around the region, then give it the count, e.g. with *Automate → Script editor*
``getSelectedObject().getMeasurements().put("ucc", 2)`` (QuPath 0.4+; older versions:
``getSelectedObject().getMeasurementList().putMeasurement("ucc", 2)``), and export with *File → Export objects as
GeoJSON* (*Export objects → GeoJSON*). A ``classes`` list can be added to the exported file's ``properties``.

**Dense class polygons** (``properties.classification.name`` and no count) are full class annotations read by
:mod:`pathoucc.slides.annotations`. A file holding both kinds is refused (:func:`split_features` names the
first feature of each kind): a polygon's class says nothing about the count of a region around it, so mixing
them has no single meaning. Put them in separate files. Features of neither kind are ignored.

**Patch assignment.** A patch belongs to a region when its *centre* (level-0 top-left + extent / 2) lies inside
the polygon (``shapely.contains_xy``: on the boundary or in a hole is outside). Patches outside every region are
in no bag. **Overlapping regions** are refused when they share a patch (:func:`assign_patches` raises, naming
both features): a patch can only be in one bag, and dropping or giving it to one of them could change the other
bag's true count. Regions whose polygons overlap by less than a patch centre are fine.

Every problem is a one-line :class:`PathouccError` naming the file and the feature (index in the file, and its
``name`` when it has one).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.validation import explain_validity

from pathoucc.errors import PathouccError

__all__ = [
    "CountRegion", "assign_patches", "check_region_patches", "check_regions_on_slide", "feature_label",
    "is_class_feature", "is_count_feature", "load_features", "read_count_regions", "split_features",
]


@dataclass(frozen=True)
class CountRegion:
    """One count-only region: feature ``index`` in the file, its ``name`` (or None), ``ucc`` >= 1, the
    ``classes`` named (tuple, or None when only a count was given) and ``geometry`` (shapely Polygon or
    MultiPolygon, level-0 px)."""

    index: int
    name: str | None
    ucc: int
    classes: tuple[str, ...] | None
    geometry: shapely.Polygon | shapely.MultiPolygon


def load_features(path: str | Path) -> list[dict]:
    """The features of a GeoJSON file (FeatureCollection, list of features or one Feature), in file order."""
    path = Path(path)
    if not path.is_file():
        raise PathouccError("GeoJSON file not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PathouccError(f"not valid JSON ({exc})", path) from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        data = [data]
    if not isinstance(data, list):
        raise PathouccError("not a GeoJSON FeatureCollection, list of features or Feature", path)
    for i, feature in enumerate(data):
        if not isinstance(feature, dict) or not isinstance(feature.get("properties") or {}, dict):
            raise PathouccError(f"feature {i} is not a GeoJSON Feature object with a properties object", path)
    return data


def is_count_feature(feature: dict) -> bool:
    """Whether ``feature`` is a count-only region: ``properties`` has ``ucc``, ``classes`` or a ``ucc`` measurement."""
    props = feature.get("properties") or {}
    return "ucc" in props or "classes" in props or _measured_ucc(props) is not _MISSING


def is_class_feature(feature: dict) -> bool:
    """Whether ``feature`` is a dense class polygon: a ``properties.classification`` name and no count."""
    props = feature.get("properties") or {}
    cls = props.get("classification")
    name = cls.get("name") if isinstance(cls, dict) else cls
    return bool(name) and not is_count_feature(feature)


def split_features(features: list[dict], path: str | Path) -> tuple[list[tuple[int, dict]], list[tuple[int, dict]]]:
    """Split ``features`` into ``(count_features, class_features)``, each a list of ``(index, feature)``.

    Raises naming the first feature of each kind if the file holds both; other features are left out.
    """
    count = [(i, f) for i, f in enumerate(features) if is_count_feature(f)]
    dense = [(i, f) for i, f in enumerate(features) if is_class_feature(f)]
    if count and dense:
        (i, fi), (j, fj) = count[0], dense[0]
        raise PathouccError(f"mixes count-only regions ({feature_label(i, fi)} has a ucc/classes count) and dense "
                            f"class polygons ({feature_label(j, fj)} has only a classification); put them in "
                            "separate files", path)
    return count, dense


def read_count_regions(path: str | Path, class_names: list[str] | None = None,
                       max_ucc: int | None = None) -> list[CountRegion]:
    """Read and check the count-only regions of a GeoJSON file (see the module docstring for the format).

    ``class_names``: names allowed in ``classes`` (None = any); ``max_ucc``: largest count allowed (None =
    ``len(class_names)`` if given, else no limit). Raises if the file mixes kinds or holds no count-only region.
    """
    path = Path(path)
    features = load_features(path)
    count, _ = split_features(features, path)
    if not count:
        raise PathouccError("no count-only regions (features whose properties have 'ucc', 'classes' or a 'ucc' "
                            "measurement)", path)
    if max_ucc is None and class_names is not None:
        max_ucc = len(class_names)
    return [_region(i, f, path, class_names, max_ucc) for i, f in count]


def check_regions_on_slide(regions: list[CountRegion], slide_dimensions: tuple[int, int],
                           path: str | Path) -> list[int]:
    """Positions in ``regions`` of those entirely off a ``(width, height)`` level-0 slide; raises if all are."""
    W, H = slide_dimensions
    slide = shapely.box(0, 0, W, H)
    hits = [bool(shapely.intersection(r.geometry, slide).area > 0) for r in regions]
    if not any(hits):
        x0, y0, x1, y1 = shapely.total_bounds([r.geometry for r in regions]) if regions else (0, 0, 0, 0)
        raise PathouccError(f"no count region overlaps the slide (level 0 is {W}x{H} px, the regions span x "
                            f"{x0:g}..{x1:g}, y {y0:g}..{y1:g}); are the coordinates level-0 pixels of this slide?",
                            path)
    return [k for k, hit in enumerate(hits) if not hit]


def assign_patches(regions: list[CountRegion], coords: np.ndarray, patch_extent: float, *,
                   path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Region of each patch by its centre: ``(region_index (N,) int64, ucc (R,) int64)``.

    ``coords`` (N, 2) are level-0 top-left (x, y) of the patches, ``patch_extent`` their level-0 side in px.
    ``region_index[n]`` is the position in ``regions`` of the region holding patch ``n``'s centre, -1 = none.
    Raises (naming ``path`` and both features) if a patch centre lies in two regions.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    centres = coords + float(patch_extent) / 2.0
    region_index = np.full(len(coords), -1, np.int64)
    for k, region in enumerate(regions):
        x0, y0, x1, y1 = region.geometry.bounds
        near = np.flatnonzero((centres[:, 0] >= x0) & (centres[:, 0] <= x1)
                              & (centres[:, 1] >= y0) & (centres[:, 1] <= y1))
        if near.size == 0:
            continue
        shapely.prepare(region.geometry)
        inside = near[shapely.contains_xy(region.geometry, centres[near, 0], centres[near, 1])]
        taken = inside[region_index[inside] >= 0]
        if taken.size:
            other = regions[int(np.bincount(region_index[taken]).argmax())]
            raise PathouccError(f"{feature_label(other.index, name=other.name)} and "
                                f"{feature_label(region.index, name=region.name)} overlap: {taken.size} patch "
                                "centre(s) lie in both, and a patch can be in one bag only; trim one region (in "
                                "QuPath, subtract one annotation from the other)", path)
        region_index[inside] = k
    return region_index, np.asarray([r.ucc for r in regions], dtype=np.int64).reshape(-1)


def check_region_patches(regions: list[CountRegion], region_index: np.ndarray, path: str | Path) -> list[int]:
    """Check each region's patch count against its ucc; return the positions of regions with no patches.

    ``region_index`` (N,) is :func:`assign_patches`' output for the tissue patches. A region with some patches
    but fewer than its ``ucc`` is an error (it cannot show that many classes); empty ones are for the caller
    to report as skipped.
    """
    region_index = np.asarray(region_index, dtype=np.int64)
    counts = np.bincount(region_index[region_index >= 0], minlength=len(regions))
    for k, region in enumerate(regions):
        if 0 < counts[k] < region.ucc:
            raise PathouccError(f"{feature_label(region.index, name=region.name)} holds {counts[k]} tissue "
                                f"patch(es) but has ucc {region.ucc}: a bag cannot show more classes than it has "
                                "patches; enlarge the region or use smaller patches", path)
    return [k for k in range(len(regions)) if counts[k] == 0]


def feature_label(index: int, feature: dict | None = None, *, name: str | None = None) -> str:
    """``feature 3 "Region A"`` (or ``feature 3`` without a name), for messages; the name comes from
    ``feature.properties.name`` unless given."""
    if name is None and feature is not None:
        name = _name(feature)
    return f"feature {index}" if name is None else f"feature {index} {json.dumps(name, ensure_ascii=False)}"


_MISSING = object()


def _name(feature: dict) -> str | None:
    name = (feature.get("properties") or {}).get("name")
    return None if name is None or name == "" else str(name)


def _measured_ucc(props: dict) -> object:
    """The value of a measurement named ``ucc`` (dict or QuPath's list form), or ``_MISSING``."""
    measurements = props.get("measurements")
    if isinstance(measurements, dict):
        return measurements.get("ucc", _MISSING)
    if isinstance(measurements, list):
        for m in measurements:
            if isinstance(m, dict) and m.get("name") == "ucc":
                return m.get("value")
    return _MISSING


def _region(index: int, feature: dict, path: Path, class_names: list[str] | None,
            max_ucc: int | None) -> CountRegion:
    props = feature.get("properties") or {}
    name = _name(feature)
    where = feature_label(index, name=name)

    def fail(problem: str) -> PathouccError:
        return PathouccError(f"{where}: {problem}", path)

    counts: dict[str, int] = {}
    for key, value in (("ucc", props.get("ucc", _MISSING)), ("measurement ucc", _measured_ucc(props))):
        if value is not _MISSING:
            counts[key] = _positive_int(value, key, fail)
    classes = None
    if "classes" in props:
        raw = props["classes"]
        if not isinstance(raw, list) or not raw or not all(isinstance(c, str) and c for c in raw):
            raise fail(f"classes must be a non-empty list of class names, got {json.dumps(raw)}")
        classes = tuple(dict.fromkeys(raw))
        if class_names is not None:
            unknown = [c for c in classes if c not in class_names]
            if unknown:
                raise fail(f"classes {', '.join(map(repr, unknown))} not among the run's classes "
                           f"({', '.join(class_names)})")
        counts["classes"] = len(classes)
    if len(set(counts.values())) > 1:
        raise fail("counts disagree: " + ", ".join(f"{k} gives {v}" for k, v in counts.items()))
    ucc = next(iter(counts.values()))
    if max_ucc is not None and ucc > max_ucc:
        raise fail(f"ucc {ucc} is larger than the {max_ucc} classes the run can count")
    return CountRegion(index, name, ucc, classes, _geometry(feature.get("geometry"), fail))


def _positive_int(value: object, key: str, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"{key} must be a positive integer, got {json.dumps(value)} ({type(value).__name__})")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise fail(f"{key} must be a positive integer, got {value!r}")
    if value < 1:
        raise fail(f"{key} must be a positive integer, got {value!r}")
    return int(value)


def _geometry(geometry: object, fail) -> shapely.Polygon | shapely.MultiPolygon:
    if not isinstance(geometry, dict):
        raise fail("has no geometry")
    kind = geometry.get("type")
    coordinates = geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [coordinates]
    elif kind == "MultiPolygon":
        if not isinstance(coordinates, list) or not coordinates:
            raise fail("MultiPolygon coordinates must be a non-empty list of polygons")
        polygons = coordinates
    else:
        raise fail(f"geometry is a {kind}; a count region must be a Polygon or MultiPolygon")
    shells = []
    for p, rings in enumerate(polygons):
        part = f"polygon {p} " if kind == "MultiPolygon" else ""
        if not isinstance(rings, list) or not rings:
            raise fail(f"{part}coordinates must be a non-empty list of rings")
        arrays = []
        for r, ring in enumerate(rings):
            what = f"{part}ring {r}"
            try:
                pts = np.asarray(ring, dtype=np.float64)
            except (TypeError, ValueError):
                pts = np.empty((0, 0))
            if pts.ndim != 2 or pts.shape[1] not in (2, 3):
                raise fail(f"{what} is not a list of [x, y] points")
            if not np.isfinite(pts).all():
                raise fail(f"{what} has a coordinate that is not a finite number")
            if len(pts) < 4:
                raise fail(f"{what} has {len(pts)} points; a closed ring needs at least 4")
            if not np.array_equal(pts[0, :2], pts[-1, :2]):
                raise fail(f"{what} is not closed: first point ({pts[0, 0]:g}, {pts[0, 1]:g}) != last point "
                           f"({pts[-1, 0]:g}, {pts[-1, 1]:g})")
            arrays.append(pts[:, :2])
        shells.append(shapely.Polygon(arrays[0], arrays[1:]))
    geom = shells[0] if kind == "Polygon" else shapely.MultiPolygon(shells)
    if not shapely.is_valid(geom):
        raise fail(f"geometry is not valid ({explain_validity(geom)}); fix it in QuPath or with shapely.make_valid")
    if geom.area <= 0:
        raise fail("geometry has zero area")
    return geom
