"""Labelled examples: a few patches a user names (``tumour``, ``stroma``, ...), to name the clusters.

Two formats, read into :class:`Example` (a class name and a level-0 point or polygon):

* **QuPath GeoJSON** (``.geojson`` / ``.json``): features with ``properties.classification.name`` whose geometry is
  a ``Point``, ``MultiPoint``, ``Polygon`` or ``MultiPolygon``. Count-only regions (``ucc`` / ``classes``) and
  unclassified features in the same file are left alone, so one QuPath export can carry both. A GeoJSON file
  belongs to the slide named by its file stem (``<slide stem>[_examples|_labels|_annotations].geojson``), or,
  when its stem names none of the slides, to every slide it is applied to.
* **CSV** ``slide,x,y,class``: one level-0 point per row, matched to a slide by its file name or stem.

**Which patches an example labels.** A point labels the one tissue patch that contains it (with overlapping patches,
the one whose centre is nearest); a polygon labels the tissue patches whose centre lies inside it -- the rule of
:mod:`.assign`, the same as for count regions. :func:`label_examples` gives each patch of a slide its class:

* a class not among the given classes, or a patch labelled with two different classes: a one-line error naming
  the file and both examples;
* an example that labels no tissue patch (a point off the tissue, a polygon around no patch centre): skipped and
  counted, one note each.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from pathoucc.errors import PathouccError, quote
from pathoucc.slides.annotations.assign import CountRegion, assign_patches
from pathoucc.slides.annotations.geojson import load_features
from pathoucc.slides.annotations.geometry import region_geometry
from pathoucc.slides.annotations.raster import check_file

__all__ = ["CSV_COLUMNS", "Example", "ExampleLabels", "class_list", "example_slide", "label_examples",
           "read_examples"]

CSV_COLUMNS = ("slide", "x", "y", "class")
_TAGS = re.compile(r"(_examples|_labels|_annotations|_labelled)$")


@dataclass(frozen=True)
class Example:
    """One labelled example: its class ``name``, ``geometry`` (shapely Point or (Multi)Polygon, level-0 px), the
    ``slide`` it belongs to (a file name or stem; None = any slide) and ``where`` (``feature 3``, ``line 5``)."""

    name: str
    geometry: shapely.Geometry
    slide: str | None
    where: str


@dataclass
class ExampleLabels:
    """The labelled patches of one slide: ``labels`` (N,) int64 index into the classes (-1 = not labelled),
    ``skipped`` the number of examples that label no tissue patch, ``notes`` one line per skip."""

    labels: np.ndarray
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


def read_examples(path: str | Path, slides: list[str] | None = None) -> list[Example]:
    """Every labelled example of a QuPath GeoJSON or ``slide,x,y,class`` CSV file; raises if it holds none.

    A GeoJSON file belongs to the slide among ``slides`` (stems) that its file stem names, else to every slide."""
    path = Path(path)
    check_file(path, "labelled-examples")
    stem = example_slide(path)
    slide = stem if slides is not None and stem in slides else None
    examples = _read_csv(path) if path.suffix.lower() == ".csv" else _read_geojson(path, slide)
    if not examples:
        what = ("rows" if path.suffix.lower() == ".csv" else
                "classified Point/Polygon features (properties.classification.name, no ucc/classes count)")
        raise PathouccError(f"no labelled examples: the file holds no {what}", path)
    return examples


def class_list(examples: list[Example], classes: list[str] | None, path: str | Path) -> list[str]:
    """The classes: ``classes`` if given (every example's class must be among them), else the examples' class
    names in order of first appearance."""
    if classes is None:
        return list(dict.fromkeys(e.name for e in examples))
    for e in examples:
        if e.name not in classes:
            raise PathouccError(f"{e.where}: class {quote(e.name)} is not one of the given classes "
                                f"({', '.join(classes)})", path)
    return list(classes)


def example_slide(path: str | Path) -> str | None:
    """The slide stem a GeoJSON examples file names (``a_examples.geojson`` -> ``a``); None for a CSV."""
    path = Path(path)
    return None if path.suffix.lower() == ".csv" else _TAGS.sub("", path.stem)


def _belongs(example: Example, slide_path: Path) -> bool:
    if example.slide is None:
        return True
    name = Path(example.slide)
    return name.name in (slide_path.name, slide_path.stem) or name.stem == slide_path.stem


def label_examples(examples: list[Example], classes: list[str], coords: np.ndarray, patch_extent: float,
                   slide_path: str | Path, path: str | Path) -> ExampleLabels:
    """The class of each tissue patch (``coords`` (N, 2) level-0 top-lefts, side ``patch_extent`` level-0 px)
    of the slide ``slide_path`` from the ``examples`` that belong to it (see the module docstring)."""
    slide_path, path = Path(slide_path), Path(path)
    coords = np.asarray(coords, np.float64).reshape(-1, 2)
    labels = np.full(len(coords), -1, np.int64)
    owner: dict[int, Example] = {}
    notes: list[str] = []
    index = {name: i for i, name in enumerate(classes)}
    for example in (e for e in examples if _belongs(e, slide_path)):
        if example.name not in index:
            raise PathouccError(f"{example.where}: class {quote(example.name)} is not one of the given classes "
                                f"({', '.join(classes)})", path)
        rows = _patches_of(example.geometry, coords, patch_extent)
        if rows.size == 0:
            what = "point lies in no tissue patch" if example.geometry.geom_type == "Point" else \
                "polygon holds no tissue patch centre"
            notes.append(f"{path.name}: {example.where} ({example.name}) on {slide_path.name}: the {what}; skipped")
            continue
        cls = index[example.name]
        clash = rows[(labels[rows] >= 0) & (labels[rows] != cls)]
        if clash.size:
            other = owner[int(clash[0])]
            x, y = coords[clash[0]].astype(np.int64).tolist()
            raise PathouccError(f"{other.where} ({other.name}) and {example.where} ({example.name}) label the same "
                                f"patch at ({x}, {y}) of {slide_path.name}; a patch has one class", path)
        labels[rows] = cls
        owner.update(dict.fromkeys(rows.tolist(), example))
    skipped = len(notes)
    if skipped:
        notes.append(f"{path.name}: {skipped} example(s) on {slide_path.name} label no tissue patch; skipped")
    return ExampleLabels(labels, skipped, notes)


def _patches_of(geometry: shapely.Geometry, coords: np.ndarray, extent: float) -> np.ndarray:
    """Rows of the patches a point (the one containing it, nearest centre first) or a polygon (centres inside,
    :func:`~.assign.assign_patches`) labels."""
    if geometry.geom_type == "Point":
        x, y = geometry.x, geometry.y
        inside = np.flatnonzero((coords[:, 0] <= x) & (x < coords[:, 0] + extent)
                                & (coords[:, 1] <= y) & (y < coords[:, 1] + extent))
        if inside.size <= 1:
            return inside
        d = ((coords[inside] + extent / 2 - (x, y)) ** 2).sum(1)
        return inside[[int(d.argmin())]]
    region, _ = assign_patches([CountRegion(0, None, 0, None, geometry)], coords, extent)
    return np.flatnonzero(region >= 0)


def _read_csv(path: Path) -> list[Example]:
    examples = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in CSV_COLUMNS if c not in fields]
            if missing:
                raise PathouccError(f"labelled-examples CSV lacks column(s) {', '.join(missing)} (need "
                                    f"{','.join(CSV_COLUMNS)})", path)
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                try:
                    x, y = float(row["x"]), float(row["y"])
                except ValueError:
                    raise PathouccError(f"line {line}: x and y must be numbers", path) from None
                if not (np.isfinite(x) and np.isfinite(y)) or not row["class"] or not row["slide"]:
                    raise PathouccError(f"line {line}: needs a slide, finite x and y and a class", path)
                examples.append(Example(row["class"], shapely.Point(x, y), row["slide"], f"line {line}"))
    except UnicodeDecodeError:
        raise PathouccError("labelled-examples CSV is not UTF-8 text", path) from None
    return examples


def _read_geojson(path: Path, slide: str | None) -> list[Example]:
    examples = []
    for i, feature in enumerate(load_features(path)):
        props = feature.get("properties") or {}
        if "ucc" in props or "classes" in props:  # a count-only region: not an example
            continue
        cls = props.get("classification")
        name = cls.get("name") if isinstance(cls, dict) else cls
        if not name:
            continue
        where = f"feature {i}" + (f" {json.dumps(props['name'])}" if props.get("name") else "")
        geometry = feature.get("geometry") or {}
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        if kind in ("Point", "MultiPoint"):
            points = [geometry.get("coordinates")] if kind == "Point" else geometry.get("coordinates") or []
            for p in points:
                try:
                    x, y = float(p[0]), float(p[1])
                except (TypeError, ValueError, IndexError):
                    raise PathouccError(f"{where}: malformed {kind} coordinates", path) from None
                examples.append(Example(str(name), shapely.Point(x, y), slide, where))
        elif kind in ("Polygon", "MultiPolygon"):
            geom = region_geometry(geometry, lambda problem, w=where: PathouccError(f"{w}: {problem}", path))
            examples.append(Example(str(name), geom, slide, where))
    return examples
