"""Patch labels and bags (regions with a unique class count) of one slide's tissue patches, from its annotations.

Three kinds of annotations give bags:

* **count-only regions** (QuPath GeoJSON features with ``properties.ucc`` / ``classes``, :mod:`.regions`): each
  region is one bag of the tissue patches whose *centre* lies inside its polygon, with the count the
  pathologist gave. Patch labels stay unknown (-1). Regions without tissue patches are skipped and reported.
* **dense annotations** (a label mask, or GeoJSON polygons with a ``classification``, :mod:`.annotations`):
  every patch gets a class (or -1 when labelled pixels cover less than ``min_label_coverage`` of it); bags are
  ``region_size`` windows and a window's bag holds **only its labelled patches**, so its count -- the number of
  distinct classes among them -- is exactly the count of the bag. Unlabelled patches are in no bag
  (``region`` = -1): an unknown patch could add a class the count does not hold.
* **a regions CSV** (rectangles with counts): a bag is every tissue patch lying entirely inside a rectangle.

The result is what the tile file stores: ``labels``, ``region`` (per patch), ``regions/boxes`` and ``regions/ucc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import shapely

from pathoucc.config import TileOptions
from pathoucc.errors import PathouccError
from pathoucc.slides import annotations as ann
from pathoucc.slides import regions as count_regions

__all__ = ["AnnotationKind", "PatchLabels", "annotation_for", "kind_from_suffix", "label_patches"]

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
    if kind == "csv":
        return _csv_regions(source, slide_path, slide_dimensions, coords, extent, options)
    if kind == "geojson":
        features = count_regions.load_features(source)
        count, dense = count_regions.split_features(features, source)  # refuses a file with both kinds
        if count:
            return _count_regions(source, slide_path, slide_dimensions, coords, extent, options)
        if not dense:
            raise PathouccError("no count-only regions (properties 'ucc' or 'classes') and no classified polygons "
                                "(properties.classification.name)", source)
        raster = ann.read_geojson(source, slide_dimensions, classes=options.classes, downsample=max(1.0, extent / 8))
    else:
        raster = ann.read_label_mask(source, slide_dimensions, zero_is_background=options.zero_is_background,
                                     classes=options.classes)
    labels = ann.patch_labels(raster, coords, extent, options.min_label_coverage)
    if not (labels >= 0).any():
        raise PathouccError(f"the annotations do not overlap any tissue patch of {slide_path.name}", source)
    region, boxes = ann.grid_regions(positions, options.patch_size, options.region_size, downsample,
                                     slide_dimensions)
    region = np.where(labels >= 0, region, -1)  # an unlabelled patch is in no bag: its class is unknown
    ucc = ann.region_ucc(labels, region, len(boxes))
    keep = ucc > 0  # windows without a single labelled patch carry no count
    remap = np.full(len(boxes) + 1, -1, np.int64)
    remap[np.flatnonzero(keep)] = np.arange(int(keep.sum()))
    region = remap[region]  # -1 stays -1 (index -1 is the sentinel entry)
    unlabelled = int((labels < 0).sum())
    notes = [f"{unlabelled} tissue patch(es) without a label (coverage < {options.min_label_coverage:g}) are in "
             "no bag"] if unlabelled else []
    return PatchLabels(labels, region, boxes[keep], ucc[keep], raster.class_names, notes=notes)


def _csv_regions(source: Path, slide_path: Path, slide_dimensions: tuple[int, int], coords: np.ndarray,
                 extent: float, options: TileOptions) -> PatchLabels:
    table = ann.read_regions_csv(source, slide_path, slide_dimensions)
    region = ann.assign_regions(coords, extent, table.boxes)
    if not (region >= 0).any():
        raise PathouccError(f"no tissue patch of {slide_path.name} lies inside any of its {len(table.boxes)} "
                            "regions", source)
    return PatchLabels(np.full(len(coords), -1, np.int64), region, table.boxes, table.ucc, options.classes)


def _count_regions(source: Path, slide_path: Path, slide_dimensions: tuple[int, int], coords: np.ndarray,
                   extent: float, options: TileOptions) -> PatchLabels:
    """Count-only polygon regions: every region that holds tissue patches is a bag with the feature's count."""
    regions = count_regions.read_count_regions(source, class_names=options.classes)
    off = set(count_regions.check_regions_on_slide(regions, slide_dimensions, source))
    region_index, ucc = count_regions.assign_patches(regions, coords, extent, path=source)
    empty = set(count_regions.check_region_patches(regions, region_index, source))
    keep = [k for k in range(len(regions)) if k not in empty]
    if not keep:
        raise PathouccError(f"none of the {len(regions)} count regions contains a tissue patch of "
                            f"{slide_path.name} (a patch belongs to a region when its centre lies inside)", source)
    notes = []
    for k in sorted(empty):
        where = count_regions.feature_label(regions[k].index, name=regions[k].name)
        why = "lies outside the slide" if k in off else "contains no tissue patch centre"
        notes.append(f"{source.name}: {where} {why}; skipped")
    remap = np.full(len(regions) + 1, -1, np.int64)
    remap[keep] = np.arange(len(keep))
    bounds = np.asarray([shapely.bounds(regions[k].geometry) for k in keep], np.float64).reshape(-1, 4)
    x0, y0 = np.floor(bounds[:, 0]), np.floor(bounds[:, 1])
    boxes = np.stack([x0, y0, np.ceil(bounds[:, 2]) - x0, np.ceil(bounds[:, 3]) - y0], axis=1).astype(np.int64)
    feature = np.asarray([regions[k].index for k in keep], np.int64)
    return PatchLabels(np.full(len(coords), -1, np.int64), remap[region_index], boxes, ucc[keep], options.classes,
                       feature=feature, notes=notes)
