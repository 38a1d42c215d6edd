"""QuPath GeoJSON: one reader for both kinds of feature -- dense class polygons and count-only regions.

**File.** A GeoJSON ``FeatureCollection``, a JSON list of features (QuPath's default export) or one ``Feature``;
coordinates are level-0 pixels of the slide (docs/tiling.md has the full format).

* A **count-only region** has in ``properties`` a count: ``"ucc": 2`` (a positive integer; ``2.0`` is 2),
  ``"classes"`` (the classes present -- names ``["tumour", "stroma"]``, or integers ``[1, 7, 9]``: names "1",
  "7", "9", or indices into the run's classes when given; one list may not mix the two), or a QuPath
  measurement named ``ucc``. When several are given they must agree. Its geometry is a valid ``Polygon`` or
  ``MultiPolygon`` with closed rings (holes respected).
* A **dense class polygon** has ``properties.classification.name`` and no count; polygons are rasterised
  (:func:`read_class_raster`) and patches take the majority class.

A file holding both kinds is refused (:func:`split_features` names the first feature of each kind): a polygon's
class says nothing about the count of a region around it. Features of neither kind are ignored. Which patches a
region holds is the centre rule of :mod:`.assign`. Every problem is a one-line :class:`PathouccError` naming
the file and the feature (index in the file, and its ``name`` when it has one).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pathoucc.errors import PathouccError
from pathoucc.slides.annotations.assign import CountRegion
from pathoucc.slides.annotations.geometry import class_polygons, region_geometry
from pathoucc.slides.annotations.raster import LabelRaster, rasterise_polygons

__all__ = [
    "GeoJSONAnnotations", "class_raster", "feature_label", "is_class_feature", "is_count_feature", "load_features",
    "read_class_raster", "read_count_regions", "read_geojson", "split_features",
]

_MISSING = object()
_QUOTE = 80  # characters of a bad value quoted in a message
Fail = Callable[[str], PathouccError]


@dataclass
class GeoJSONAnnotations:
    """What a GeoJSON file holds: count-only ``regions`` or dense class ``shapes`` ((class name, polygon as a list
    of rings) each); at most one of the two is non-empty."""

    regions: list[CountRegion]
    shapes: list[tuple[str, list]]
    path: Path


def load_features(path: str | Path) -> list[dict]:
    """The features of a GeoJSON file (FeatureCollection, list of features or one Feature), in file order."""
    path = Path(path)
    if not path.is_file():
        raise PathouccError("GeoJSON file not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PathouccError(f"not valid JSON ({exc})", path) from None
    except RecursionError:
        raise PathouccError("JSON is nested too deeply to be GeoJSON (thousands of levels of lists or objects)",
                            path) from None
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
    return bool(_class_name(feature)) and not is_count_feature(feature)


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


def read_geojson(path: str | Path, class_names: list[str] | None = None,
                 max_ucc: int | None = None) -> GeoJSONAnnotations:
    """Read and check every count-only region or dense class polygon of a GeoJSON file (the one parser).

    ``class_names``: the run's classes (names allowed in ``classes``, and what integer ``classes`` index; None
    = any name, integers are names); ``max_ucc``: largest count allowed (None = ``len(class_names)`` if given).
    """
    path = Path(path)
    try:
        count, dense = split_features(load_features(path), path)
        if max_ucc is None and class_names is not None:
            max_ucc = len(class_names)
        regions = [_region(i, f, path, class_names, max_ucc) for i, f in count]
        shapes = [(_class_name(f), polygon) for i, f in dense for polygon in class_polygons(f.get("geometry"), path, i)]
    except RecursionError:
        raise PathouccError("GeoJSON is nested too deeply (geometries inside geometries)", path) from None
    return GeoJSONAnnotations(regions, shapes, path)


def read_count_regions(path: str | Path, class_names: list[str] | None = None,
                       max_ucc: int | None = None) -> list[CountRegion]:
    """The count-only regions of a GeoJSON file (see :func:`read_geojson`); raises if it holds none."""
    regions = read_geojson(path, class_names, max_ucc).regions
    if not regions:
        raise PathouccError("no count-only regions (features whose properties have 'ucc', 'classes' or a 'ucc' "
                            "measurement)", path)
    return regions


def read_class_raster(path: str | Path, slide_dimensions: tuple[int, int], *, classes: list[str] | None = None,
                      downsample: float = 8.0) -> LabelRaster:
    """Rasterise the dense class polygons of a GeoJSON file at ``downsample`` (level-0 px per raster px).

    Polygons and MultiPolygons (and those in GeometryCollections) are filled with their class (holes cleared;
    later features win where they overlap); other geometries are ignored. Class indices follow ``classes`` if
    given (a name not in it is an error), else the sorted names in the file.
    """
    path = Path(path)
    shapes = read_geojson(path, classes).shapes
    if not shapes:
        raise PathouccError("no classified Polygon/MultiPolygon features (QuPath properties.classification.name)",
                            path)
    return class_raster(shapes, classes, slide_dimensions, downsample, path)


def class_raster(shapes: list[tuple[str, list]], classes: list[str] | None, slide_dimensions: tuple[int, int],
                 downsample: float, path: Path) -> LabelRaster:
    """Rasterise dense class ``shapes`` (:attr:`GeoJSONAnnotations.shapes`); class indices follow ``classes``
    if given (a name not in it is an error), else the sorted names."""
    names = sorted({name for name, _ in shapes}) if classes is None else list(classes)
    for name, _ in shapes:
        if name not in names:
            raise PathouccError(f"class {name!r} is not one of the given classes ({', '.join(names)})", path)
    if len(names) > 254:
        raise PathouccError(f"too many classes ({len(names)} > 254)", path)
    return rasterise_polygons(shapes, names, slide_dimensions, downsample, path)


def feature_label(index: int, feature: dict | None = None, *, name: str | None = None) -> str:
    """``feature 3 "Region A"`` (or ``feature 3`` without a name), for messages; the name comes from
    ``feature.properties.name`` unless given."""
    if name is None and feature is not None:
        name = _name(feature)
    return f"feature {index}" if name is None else f"feature {index} {json.dumps(name, ensure_ascii=False)}"


def _quote(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= _QUOTE else text[:_QUOTE] + "..."


def _name(feature: dict) -> str | None:
    name = (feature.get("properties") or {}).get("name")
    return None if name is None or name == "" else str(name)


def _class_name(feature: dict) -> str | None:
    cls = (feature.get("properties") or {}).get("classification")
    name = cls.get("name") if isinstance(cls, dict) else cls
    return str(name) if name else None


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
        classes = _classes(props["classes"], class_names, fail)
        counts["classes"] = len(classes)
    if len(set(counts.values())) > 1:
        raise fail("counts disagree: " + ", ".join(f"{k} gives {v}" for k, v in counts.items()))
    ucc = next(iter(counts.values()))
    if max_ucc is not None and ucc > max_ucc:
        raise fail(f"ucc {ucc} is larger than the {max_ucc} classes the run can count")
    return CountRegion(index, name, ucc, classes, region_geometry(feature.get("geometry"), fail))


def _classes(raw: object, class_names: list[str] | None, fail: Fail) -> tuple[str, ...]:
    """The distinct class names of a ``classes`` list: names, or integers (names, or indices into
    ``class_names`` when given)."""
    if not isinstance(raw, list) or not raw:
        raise fail(f"classes must be a non-empty list of class names, got {_quote(raw)}")
    integers = [isinstance(c, int) and not isinstance(c, bool) for c in raw]
    if any(integers) and not all(integers):
        if all(ok or (isinstance(c, str) and c) for c, ok in zip(raw, integers, strict=True)):
            raise fail(f"classes mixes class names and integers ({_quote(raw)}); give all names or all indices")
    elif all(integers):
        if min(raw) < 0:
            raise fail(f"classes has the negative class index {min(raw)}")
        if class_names is None:
            raw = [str(c) for c in raw]
        elif max(raw) >= len(class_names):
            raise fail(f"class index {max(raw)} is out of range: the run has {len(class_names)} classes "
                       f"(indices 0..{len(class_names) - 1} of {', '.join(class_names)})")
        else:
            raw = [class_names[c] for c in raw]
    if not all(isinstance(c, str) and c for c in raw):
        raise fail(f"classes must be a non-empty list of class names, got {_quote(raw)}")
    classes = tuple(dict.fromkeys(raw))
    if class_names is not None:
        unknown = [c for c in classes if c not in class_names]
        if unknown:
            raise fail(f"classes {', '.join(map(repr, unknown))} not among the run's classes "
                       f"({', '.join(class_names)})")
    return classes


def _positive_int(value: object, key: str, fail: Fail) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"{key} must be a positive integer, got {_quote(value)} ({type(value).__name__})")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise fail(f"{key} must be a positive integer, got {value!r}")
    if value < 1:
        raise fail(f"{key} must be a positive integer, got {value!r}")
    return int(value)
