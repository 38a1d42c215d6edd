"""Which patches a region holds: ONE rule for every annotation format, and the bags it gives.

**The centre rule.** A patch belongs to a region when its *centre* (level-0 top-left + extent / 2) lies strictly
inside the region's area: a GeoJSON polygon (holes respected), a CSV box, or a ``region_size`` window of dense
annotations. A centre on the boundary or in a hole is outside (``shapely.contains_xy``). There is no coverage
fraction: a patch half inside a region is in it when its centre is. Patches in no region are in no bag
(``region`` = -1); they are still tiled, for segmentation.

**Overlaps** between explicit regions (GeoJSON, CSV) are refused when they share a patch centre
(:func:`assign_patches` names both): a patch is in one bag only, and dropping it or giving it to one of them could
change the other bag's true count. Regions that overlap by less than a patch centre are fine.

**Skips** (:func:`region_bags`): a region off the slide, one without a tissue patch centre and one holding fewer
tissue patches than its count (it cannot show that many classes) are left out, one note each plus a total, and
an error only if no region is left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from pathoucc.errors import PathouccError

__all__ = ["CountRegion", "RegionBags", "assign_patches", "grid_regions", "region_bags", "region_counts",
           "regions_off_slide", "skipped_regions"]


@dataclass(frozen=True)
class CountRegion:
    """One region with a unique class count: its ``index`` (GeoJSON feature index, or CSV line number), its
    ``name`` (or None), ``ucc``, the ``classes`` named (tuple, or None when only a count was given),
    ``geometry`` (shapely Polygon or MultiPolygon, level-0 px) and the ``unit`` that ``index`` counts
    (``feature`` or ``line``, for messages)."""

    index: int
    name: str | None
    ucc: int
    classes: tuple[str, ...] | None
    geometry: shapely.Polygon | shapely.MultiPolygon
    unit: str = "feature"

    @property
    def label(self) -> str:
        """``feature 3 "Region A"``, ``feature 3`` or ``line 5``: how messages name the region."""
        where = f"{self.unit} {self.index}"
        return where if self.name is None else f"{where} {json.dumps(self.name, ensure_ascii=False)}"


@dataclass
class RegionBags:
    """Bags of the N tissue patches from R kept regions: ``region`` (N,) int64 index into the kept ones
    (-1 = in no bag), ``boxes`` (R, 4) int64 level-0 (x, y, w, h) bounding boxes, ``ucc`` (R,) int64,
    ``index`` (R,) int64 each kept region's :attr:`CountRegion.index`, ``notes`` one line per skip."""

    region: np.ndarray
    boxes: np.ndarray
    ucc: np.ndarray
    index: np.ndarray
    notes: list[str] = field(default_factory=list)


def assign_patches(regions: list[CountRegion], coords: np.ndarray, patch_extent: float, *,
                   path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Region of each patch by the centre rule: ``(region_index (N,) int64, ucc (R,) int64)``.

    ``coords`` (N, 2) are level-0 top-left (x, y) of the patches, ``patch_extent`` their level-0 side in px.
    ``region_index[n]`` is the position in ``regions`` of the region holding patch ``n``'s centre, -1 = none.
    Raises (naming ``path`` and both regions) if a patch centre lies in two regions.
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
            how = " (in QuPath, subtract one annotation from the other)" if region.unit == "feature" else ""
            raise PathouccError(f"{other.label} and {region.label} overlap: {taken.size} patch centre(s) lie in "
                                f"both, and a patch can be in one bag only; trim one region{how}", path)
        region_index[inside] = k
    return region_index, np.asarray([r.ucc for r in regions], dtype=np.int64).reshape(-1)


def regions_off_slide(regions: list[CountRegion], slide_dimensions: tuple[int, int], path: str | Path) -> list[int]:
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


def skipped_regions(regions: list[CountRegion], region_index: np.ndarray) -> dict[int, str]:
    """Regions that give no bag, by position in ``regions``: why, for the note (``contains no tissue patch
    centre`` or ``holds 2 tissue patch(es) but has ucc 3 ...``). ``region_index`` is :func:`assign_patches`'."""
    region_index = np.asarray(region_index, dtype=np.int64)
    counts = np.bincount(region_index[region_index >= 0], minlength=len(regions))
    skipped = {}
    for k, region in enumerate(regions):
        if counts[k] == 0:
            skipped[k] = "contains no tissue patch centre"
        elif counts[k] < region.ucc:
            skipped[k] = (f"holds {counts[k]} tissue patch(es) but has ucc {region.ucc} (a bag cannot show more "
                          "classes than it has patches)")
    return skipped


def region_bags(regions: list[CountRegion], coords: np.ndarray, patch_extent: float,
                slide_dimensions: tuple[int, int], path: Path, slide_name: str) -> RegionBags:
    """Bags of the tissue patches at ``coords`` (N, 2) from explicit ``regions`` by the centre rule, skipping
    (with a note each and a total) regions off the slide, without tissue or with fewer patches than their count.

    Raises if every region is skipped or two regions share a patch centre.
    """
    off = set(regions_off_slide(regions, slide_dimensions, path))
    region_index, ucc = assign_patches(regions, coords, patch_extent, path=path)
    skipped = skipped_regions(regions, region_index)
    keep = [k for k in range(len(regions)) if k not in skipped]
    why = {k: "lies outside the slide" if k in off else reason for k, reason in sorted(skipped.items())}
    if not keep:
        first = next(iter(why))
        raise PathouccError(f"none of the {len(regions)} count regions gives a bag of {slide_name} (a patch belongs "
                            "to a region when its centre lies inside; a region needs at least as many patches as "
                            f"its count): {regions[first].label} {why[first]}", path)
    notes = [f"{path.name}: {regions[k].label} {reason}; skipped" for k, reason in why.items()]
    if skipped:
        notes.append(f"{path.name}: {len(skipped)} of {len(regions)} regions skipped, {len(keep)} give bags")
    remap = np.full(len(regions) + 1, -1, np.int64)
    remap[keep] = np.arange(len(keep))
    bounds = np.asarray([shapely.bounds(regions[k].geometry) for k in keep], np.float64).reshape(-1, 4)
    x0, y0 = np.floor(bounds[:, 0]), np.floor(bounds[:, 1])
    boxes = np.stack([x0, y0, np.ceil(bounds[:, 2]) - x0, np.ceil(bounds[:, 3]) - y0], axis=1).astype(np.int64)
    index = np.asarray([regions[k].index for k in keep], np.int64)
    return RegionBags(remap[region_index], boxes, ucc[keep], index, notes)


def grid_regions(positions: np.ndarray, patch_size: int, region_size: int, downsample: float,
                 slide_dimensions: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed ``region_size`` windows (output-level pixels) on a grid starting at (0, 0), by the centre rule.

    ``positions`` (N, 2) are patch top-lefts in output-level pixels. A patch belongs to the window holding its
    centre (-1 when the centre lies on a window border). Returns ``region`` (N,) int64 indices into ``boxes``
    (R, 4) int64 level-0 (x, y, w, h) of the windows that hold at least one patch, in row-major order.
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    if region_size < patch_size:
        raise PathouccError(f"region size {region_size} is smaller than the patch size {patch_size}")
    twice_centre = 2 * positions + patch_size  # integers: the border test is exact
    cell = twice_centre // (2 * region_size)
    inside = np.all(twice_centre % (2 * region_size) != 0, axis=1)
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


def region_counts(labels: np.ndarray, region: np.ndarray, num_regions: int) -> np.ndarray:
    """Number of distinct known classes (label >= 0) among each region's patches -> (R,) int64."""
    labels, region = np.asarray(labels), np.asarray(region)
    ok = (labels >= 0) & (region >= 0)
    if not ok.any():
        return np.zeros(num_regions, np.int64)
    classes = int(labels[ok].max()) + 1
    pairs = np.unique(region[ok].astype(np.int64) * classes + labels[ok])  # one entry per (region, class)
    return np.bincount(pairs // classes, minlength=num_regions).astype(np.int64)
