"""Patch labels and bags (regions with a unique class count) of one slide's tissue patches, from its annotations.

One module per format, one rule for which patches a region holds (:mod:`.assign`: the patch *centre* inside):

* **count-only regions** (QuPath GeoJSON features with ``properties.ucc`` / ``classes``, :mod:`.geojson`) and
  **a regions CSV** (rectangles with counts, :mod:`.csv`): each region is one bag of the tissue patches whose
  centre lies inside it, with the count given. Patch labels stay unknown (-1). Regions off the slide, without
  tissue, or with fewer patches than their count are skipped and reported (:func:`.assign.region_bags`).
* **dense annotations** (a label mask, :mod:`.mask`, or GeoJSON polygons with a ``classification``): every patch
  gets a class (or -1 when labelled pixels cover less than ``min_label_coverage`` of it, :mod:`.raster`); bags
  are ``region_size`` windows holding the patches whose centre lies inside, and a window's bag holds **only its
  labelled patches**, so its count -- the number of distinct classes among them -- is exactly the count of the
  bag. Unlabelled patches are in no bag (``region`` = -1): an unknown patch could add a class the count lacks.

The result is what the tile file stores: ``labels``, ``region`` (per patch), ``regions/boxes`` and ``regions/ucc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from pathoucc.errors import PathouccError
from pathoucc.options import TileOptions
from pathoucc.slides.annotations.assign import grid_regions, region_bags, region_counts
from pathoucc.slides.annotations.csv import read_regions_csv
from pathoucc.slides.annotations.geojson import class_raster, read_geojson
from pathoucc.slides.annotations.mask import read_label_mask
from pathoucc.slides.annotations.raster import LabelRaster, patch_labels

__all__ = ["SUFFIXES", "AnnotationKind", "PatchLabels", "annotation_for", "kind_from_suffix", "label_patches"]

AnnotationKind = Literal["mask", "geojson", "csv"]
SUFFIXES = {"mask": (".png", ".tif", ".tiff"), "geojson": (".geojson", ".json"), "csv": (".csv",)}


@dataclass
class PatchLabels:
    """Labels and bags of a slide's N tissue patches and R regions.

    ``labels`` (N,) class index, -1 unknown; ``region`` (N,) bag index, -1 in no bag; ``boxes`` (R, 4) level-0
    (x, y, w, h) of each region (the bounding box for a polygon); ``ucc`` (R,); ``class_names`` or None;
    ``feature`` (R,) the GeoJSON feature index of each count-only region (None for other kinds); ``notes``: what
    was skipped, one line each, for the report.
    """

    labels: np.ndarray
    region: np.ndarray
    boxes: np.ndarray
    ucc: np.ndarray
    class_names: list[str] | None
    feature: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def kind_from_suffix(path: Path) -> AnnotationKind:
    """``csv`` for .csv, ``geojson`` for .geojson/.json, else ``mask``."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".geojson", ".json"):
        return "geojson"
    return "mask"


def annotation_for(slide_path: Path, annotations: Path, kind: AnnotationKind | None) -> Path:
    """The annotation file of one slide: ``annotations`` itself, or ``<folder>/<stem>[_mask|_labels].<ext>``."""
    if not annotations.is_dir():
        return annotations
    kinds = [kind] if kind else list(SUFFIXES)
    for k in kinds:
        for tag in ("", "_mask", "_labels", "_annotations", "_regions"):
            for suffix in SUFFIXES[k]:
                candidate = annotations / f"{slide_path.stem}{tag}{suffix}"
                if candidate.is_file():
                    return candidate
    raise PathouccError(f"no annotation file for {slide_path.name} (looked for {slide_path.stem}[_mask].<ext>)",
                        annotations)


def label_patches(source: Path, kind: AnnotationKind | None, *, slide_path: Path,
                  slide_dimensions: tuple[int, int], coords: np.ndarray, positions: np.ndarray, downsample: float,
                  options: TileOptions) -> PatchLabels:
    """Labels and bags of the tissue patches at ``coords`` (N, 2) level-0 / ``positions`` (N, 2) output-level
    top-lefts, from the annotation file ``source`` (kind from ``kind`` or the suffix)."""
    source = Path(source)
    kind = kind or kind_from_suffix(source)
    extent = options.patch_size * downsample
    unlabelled = np.full(len(coords), -1, np.int64)
    if kind == "csv":
        regions = read_regions_csv(source, slide_path)
        bags = region_bags(regions, coords, extent, slide_dimensions, source, slide_path.name)
        return PatchLabels(unlabelled, bags.region, bags.boxes, bags.ucc, options.classes, notes=bags.notes)
    if kind == "geojson":
        found = read_geojson(source, options.classes)
        if found.regions:
            bags = region_bags(found.regions, coords, extent, slide_dimensions, source, slide_path.name)
            return PatchLabels(unlabelled, bags.region, bags.boxes, bags.ucc, options.classes, feature=bags.index,
                               notes=bags.notes)
        if not found.shapes:
            raise PathouccError("no count-only regions (properties 'ucc' or 'classes') and no classified polygons "
                                "(properties.classification.name)", source)
        raster = class_raster(found.shapes, options.classes, slide_dimensions, max(1.0, extent / 8), source)
    else:
        raster = read_label_mask(source, slide_dimensions, zero_is_background=options.zero_is_background,
                                 classes=options.classes)
    return _dense_bags(raster, coords, positions, downsample, slide_dimensions, slide_path, options)


def _dense_bags(raster: LabelRaster, coords: np.ndarray, positions: np.ndarray, downsample: float,
                slide_dimensions: tuple[int, int], slide_path: Path, options: TileOptions) -> PatchLabels:
    """Patch labels from a label raster, and bags of the labelled patches in ``region_size`` windows."""
    extent = options.patch_size * downsample
    labels = patch_labels(raster, coords, extent, options.min_label_coverage)
    if not (labels >= 0).any():
        raise PathouccError(f"the annotations do not overlap any tissue patch of {slide_path.name}", raster.source)
    region, boxes = grid_regions(positions, options.patch_size, options.region_size, downsample, slide_dimensions)
    region = np.where(labels >= 0, region, -1)  # an unlabelled patch is in no bag: its class is unknown
    ucc = region_counts(labels, region, len(boxes))
    keep = ucc > 0  # windows without a single labelled patch carry no count
    remap = np.full(len(boxes) + 1, -1, np.int64)
    remap[np.flatnonzero(keep)] = np.arange(int(keep.sum()))
    region = remap[region]  # -1 stays -1 (index -1 is the sentinel entry)
    unknown = int((labels < 0).sum())
    notes = [f"{unknown} tissue patch(es) without a label (coverage < {options.min_label_coverage:g}) are in "
             "no bag"] if unknown else []
    return PatchLabels(labels, region, boxes[keep], ucc[keep], raster.class_names, notes=notes)
