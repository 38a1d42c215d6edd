"""Make a synthetic whole-slide image with a known answer: a grid of MNIST digits on pink "tissue".

Every grid cell (``cell`` px square at level 0) holds one training digit, drawn as dark purple ink on pink, centred;
a white margin of ``margin_cells`` cells (default: one region) surrounds the grid. The grid is divided into
regions of ``region_cells`` x ``region_cells`` cells; each region's digits come from ``k`` distinct classes,
``k`` drawn uniformly from ``ucc_range``, and every one of the ``k`` classes appears at least once.

Outputs, next to each other:

* ``<name>.tif``: pyramidal tiled TIFF (levels 1, 2, 4, ... as separate pages, deflate, 256-px tiles) with the
  resolution tags set, so OpenSlide opens it as ``generic-tiff`` with ``mpp`` levels. Written tile by tile.
* ``<name>_mask.png``: ground-truth label mask, pixel = digit class + 1 over the digit's whole cell, 0 = margin,
  at ``mask_downsample`` (level-0 pixels per mask pixel; written row by row).
* ``<name>_regions.csv``: the generator's regions, ``slide,x,y,width,height,ucc`` in level-0 pixels.

With the defaults (cell 32, region_cells 8, margin one region) the command::

    pathoucc tile slide.tif --out tiles --patch-size 32 --stride 32 --level 0 --region-size 256 --mask slide_mask.png

gives exactly one digit per patch and one bag per generated region. Digits come from the MNIST training split
(``--split test``: the official test digits, for a held-out test slide); ``--source digits`` uses scikit-learn's
8x8 digits, upscaled (no split). Writing the TIFF needs ``tifffile`` (the ``test`` extra:
``pip install -e .[test]``).

    python tools/make_digit_slide.py slide.tif --grid 64 64            # 2560 x 2560 px
    python tools/make_digit_slide.py big.tif --grid 1240 1240 --mask-downsample 32   # 40 192 x 40 192 px

**Blob layout** (``--layout blobs``, :func:`make_blob_digit_slide`), the held-out benchmark of issue 8: each
cell is a digit upscaled to the cell (32 px = the patch size of ``configs/digit-slide.yaml``), classes form
smooth irregular blobs with some blank glass, and regions are irregular count-only polygons written as QuPath
GeoJSON (``<name>_regions.geojson``, ``properties.ucc``) next to the ground-truth mask::

    python tools/make_digit_slide.py data/blobs/train.tif --layout blobs --split train --seed 1
    python tools/make_digit_slide.py data/blobs/test.tif --layout blobs --split test --seed 2
    pathoucc tile data/blobs/train.tif --out data/blobs/tiles --patch-size 32 --level 0 \
        --geojson data/blobs/train_regions.geojson --classes 0,1,2,3,4,5,6,7,8,9
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from digit_slide_parts import DIGIT, displacement, jittered_seeds, training_digits, write_slide_and_mask

from pathoucc.errors import PathouccError
from pathoucc.files import atomic_path


def make_digit_slide(out_path: str | Path, *, grid: tuple[int, int] = (64, 64), cell: int = 32,
                     region_cells: int = 8, ucc_range: tuple[int, int] = (1, 4), source: str = "mnist",
                     data_dir: str | Path = "data", seed: int = 0, mpp: float = 0.5, margin_cells: int | None = None,
                     mask_downsample: int = 1, split: str = "train") -> tuple[Path, Path]:
    """Write the digit slide, its label mask and its regions CSV; return ``(slide_path, mask_path)``.

    ``grid`` = (rows, cols) of digit cells, each a multiple of ``region_cells``. Level 0 is
    ``(cols + 2 * margin) * cell`` wide. Deterministic for a given ``seed``.
    """
    out_path = Path(out_path)
    rows, cols = grid
    margin = region_cells if margin_cells is None else margin_cells
    lo, hi = ucc_range
    if cell < DIGIT:
        raise PathouccError(f"cell must be at least {DIGIT} px, got {cell}")
    if rows % region_cells or cols % region_cells or rows <= 0 or cols <= 0:
        raise PathouccError(f"grid {rows}x{cols} must be a positive multiple of region_cells={region_cells}")
    if not 1 <= lo <= hi <= 10 or hi > region_cells**2:
        raise PathouccError(f"ucc_range {ucc_range} must satisfy 1 <= lo <= hi <= min(10, region_cells^2)")
    if mask_downsample < 1 or cell % mask_downsample:
        raise PathouccError(f"mask_downsample {mask_downsample} must divide the cell size {cell}")
    images, digit_labels = training_digits(source, data_dir, split)
    rng = np.random.default_rng(seed)

    # class of every cell, region by region; then one random training image of that class per cell
    classes = np.zeros((rows, cols), np.int64)
    region_count = np.zeros((rows // region_cells, cols // region_cells), np.int64)
    for rr in range(rows // region_cells):
        for rc in range(cols // region_cells):
            k = int(rng.integers(lo, hi + 1))
            chosen = rng.choice(10, size=k, replace=False)
            cells = np.concatenate([chosen, rng.choice(chosen, size=region_cells**2 - k)])
            rng.shuffle(cells)
            classes[rr * region_cells:(rr + 1) * region_cells, rc * region_cells:(rc + 1) * region_cells] = \
                cells.reshape(region_cells, region_cells)
            region_count[rr, rc] = k
    by_class = [np.flatnonzero(digit_labels == c) for c in range(10)]
    picks = np.empty((rows, cols), np.int64)
    for c in range(10):
        where = classes == c
        picks[where] = rng.choice(by_class[c], size=int(where.sum()))

    write_slide_and_mask(out_path, images, picks, classes, margin, cell, mpp, mask_downsample)
    mask_path = out_path.with_name(f"{out_path.stem}_mask.png")

    with atomic_path(out_path.with_name(f"{out_path.stem}_regions.csv")) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide", "x", "y", "width", "height", "ucc"])
        side = region_cells * cell
        for rr, rc in np.ndindex(*region_count.shape):
            writer.writerow([out_path.name, (margin + rc * region_cells) * cell, (margin + rr * region_cells) * cell,
                             side, side, int(region_count[rr, rc])])
    return out_path, mask_path


def make_blob_digit_slide(out_path: str | Path, *, grid: tuple[int, int] = (64, 64), cell: int = 32,
                          split: str = "train", blob_cells: float = 14.0, region_cells: float = 9.0,
                          blank_fraction: float = 0.12, min_region_patches: int = 16, source: str = "mnist",
                          data_dir: str | Path = "data", seed: int = 0, mpp: float = 0.5, margin_cells: int = 4,
                          mask_downsample: int = 1, layout: str = "blobs",
                          ucc_range: tuple[int, int] | None = None) -> dict:
    """A held-out-ready digit slide: smooth class blobs, blank areas, and count-only polygon regions.

    Each cell of the ``grid`` (rows, cols) holds one MNIST digit of ``split`` (``train`` for the training slide,
    ``test`` = the official test digits for the test slide), upscaled from 28 px to the ``cell`` size (the patch
    size of ``configs/digit-slide.yaml``: 32). Classes form contiguous blobs: a Voronoi partition with seeds about
    ``blob_cells`` apart, its boundaries bent by a smooth random displacement field; a ``blank_fraction`` of the
    blobs is white glass (no tissue). Regions are a second, independent bent Voronoi partition (seeds about
    ``region_cells`` apart), shrunk by a tenth of a cell so that neighbours share no patch centre; a region's
    ``ucc`` is the number of distinct digit classes among the cells whose centre lies inside it (the tiler's
    rule, :func:`pathoucc.slides.annotations.assign.assign_patches`). Regions with fewer than
    ``min_region_patches`` digit cells (mostly glass) are left out; their digits are in no bag.

    Writes ``<name>.tif`` (pyramidal TIFF), ``<name>_mask.png`` (ground truth: digit + 1 per cell, 0 = glass or
    margin) and ``<name>_regions.geojson`` (one Polygon/MultiPolygon per region, ``properties.ucc`` and ``name``,
    level-0 px). Returns the paths and a summary (number of regions, patches per region, ucc histogram).

    ``layout="intermixed"`` keeps the glass blobs and the regions but mixes the classes within each region at
    random: a region of n digit cells draws its count k uniformly from ``ucc_range`` (at most n), k distinct
    classes, one cell of each and the other n - k cells among them at random; cells in no region get any class.
    ``ucc_range`` (blobs) leaves out the regions whose count lies outside it (``None``: keep all; intermixed: the
    counts drawn, default (1, 4)). ``split="val"`` draws the last 10 000 MNIST training images, none of which
    lies on a ``train`` slide.
    """
    import shapely
    from PIL import Image

    from pathoucc.slides.annotations.assign import CountRegion, assign_patches

    out_path = Path(out_path)
    rows, cols = grid
    if rows < 2 or cols < 2 or cell < 8 or not 0 <= blank_fraction < 1 or blob_cells <= 1 or region_cells <= 1:
        raise PathouccError("need grid >= 2x2, cell >= 8, 0 <= blank_fraction < 1, blob_cells and region_cells > 1")
    if mask_downsample < 1 or cell % mask_downsample:
        raise PathouccError(f"mask_downsample {mask_downsample} must divide the cell size {cell}")
    if layout not in ("blobs", "intermixed"):
        raise PathouccError(f"unknown layout {layout!r} (use blobs or intermixed)")
    if ucc_range is not None and not 1 <= ucc_range[0] <= ucc_range[1] <= 10:
        raise PathouccError(f"ucc_range {ucc_range} must satisfy 1 <= lo <= hi <= 10")
    rng = np.random.default_rng(seed)

    # classes: nearest blob seed of each (bent) cell centre; -1 = glass
    centres = np.stack(np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5), axis=-1).reshape(-1, 2)
    seeds = jittered_seeds(rng, rows, cols, blob_cells)
    seed_class = rng.integers(0, 10, len(seeds))
    seed_class[rng.random(len(seeds)) < blank_fraction] = -1
    bend = displacement(rng, rows, cols, blob_cells, steepness=1.2)  # folds are harmless here: more irregular
    nearest = np.argmin(((bend(centres)[:, None, :] - seeds[None]) ** 2).sum(-1), axis=1)
    classes = seed_class[nearest].reshape(rows, cols)

    # regions: bent Voronoi cells of other seeds, in level-0 pixels
    region_seeds = jittered_seeds(rng, rows, cols, region_cells)
    bend_regions = displacement(rng, rows, cols, region_cells)
    frame = shapely.box(0, 0, cols, rows)
    polygons = []
    for poly in shapely.get_parts(shapely.voronoi_polygons(shapely.MultiPoint(region_seeds), extend_to=frame)):
        poly = shapely.segmentize(shapely.intersection(poly, frame), 0.25)
        bent = shapely.transform(poly, bend_regions).buffer(-0.1)
        bent = shapely.set_precision(shapely.transform(bent, lambda p: (p + margin_cells) * cell), 0.01)
        if not bent.is_empty:
            polygons.append(bent)
    coords = (np.argwhere(np.ones((rows, cols), bool))[:, ::-1] + margin_cells) * cell  # (x, y) top-lefts
    flat = classes.ravel()
    digit = flat >= 0
    regions = [CountRegion(k, None, 1, None, g) for k, g in enumerate(polygons)]
    member, _ = assign_patches(regions, coords[digit], cell)  # raises if two regions share a patch centre
    if layout == "intermixed":
        flat = _intermix(rng, flat, digit, member, len(polygons), ucc_range or (1, 4))
        classes = flat.reshape(rows, cols)
    features, sizes, uccs = [], [], []
    for k, geom in enumerate(polygons):
        inside = flat[digit][member == k]
        if len(inside) < min_region_patches:
            continue
        ucc = len(np.unique(inside))
        if ucc_range is not None and not ucc_range[0] <= ucc <= ucc_range[1]:
            continue
        features.append({"type": "Feature", "geometry": shapely.geometry.mapping(geom),
                         "properties": {"objectType": "annotation", "name": f"region {len(features)}", "ucc": ucc}})
        sizes.append(len(inside))
        uccs.append(ucc)
    if not features:
        raise PathouccError("no region holds enough digit cells; use a larger grid or smaller min_region_patches")

    # pixels: one random digit of the cell's class, upscaled to the cell
    images, labels = training_digits(source, data_dir, split)
    picks = np.full(rows * cols, -1, np.int64)
    for c in range(10):
        where = np.flatnonzero(flat == c)
        picks[where] = rng.choice(np.flatnonzero(labels == c), size=len(where))
    used, local = np.unique(picks[digit], return_inverse=True)
    scaled = np.stack([np.asarray(Image.fromarray(images[i]).resize((cell, cell), Image.Resampling.BILINEAR))
                       for i in used]).astype(np.uint8)
    inner = np.full(rows * cols, -1, np.int64)
    inner[digit] = local.ravel()
    write_slide_and_mask(out_path, scaled, inner.reshape(rows, cols), classes, margin_cells, cell, mpp,
                          mask_downsample)
    mask_path = out_path.with_name(f"{out_path.stem}_mask.png")
    geojson_path = out_path.with_name(f"{out_path.stem}_regions.geojson")
    with atomic_path(geojson_path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return {"slide": out_path, "mask": mask_path, "geojson": geojson_path, "regions": len(features),
            "patches_per_region": [int(min(sizes)), int(np.median(sizes)), int(max(sizes))],
            "ucc_histogram": {int(u): int(n) for u, n in zip(*np.unique(uccs, return_counts=True), strict=True)},
            "digit_cells": int(digit.sum()), "cells_in_regions": int(sum(sizes)), "split": split}


def _intermix(rng: np.random.Generator, flat: np.ndarray, digit: np.ndarray, member: np.ndarray, regions: int,
              ucc_range: tuple[int, int]) -> np.ndarray:
    """Classes (rows * cols,) with each region's digit cells mixed at random among k classes, -1 (glass) kept.

    ``digit`` marks the non-glass cells, ``member`` (digit.sum(),) is the region of each (-1 = none)."""
    out = flat.copy()
    cells = np.flatnonzero(digit)
    out[cells[member < 0]] = rng.integers(0, 10, int((member < 0).sum()))
    for k in range(regions):
        inside = cells[member == k]
        if not len(inside):
            continue
        count = min(int(rng.integers(ucc_range[0], ucc_range[1] + 1)), len(inside))
        chosen = rng.choice(10, size=count, replace=False)
        drawn = np.concatenate([chosen, rng.choice(chosen, size=len(inside) - count)])
        rng.shuffle(drawn)
        out[inside] = drawn
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output .tif (mask and regions are written next to it)")
    parser.add_argument("--layout", choices=("regions", "blobs", "intermixed"), default="regions",
                        help="regions: square regions of chosen ucc (CSV); blobs: class blobs + polygon GeoJSON; "
                             "intermixed: the blobs' glass and polygons, classes mixed at random in each region")
    parser.add_argument("--split", choices=("train", "val", "test"), default="train",
                        help="MNIST digits to draw: train (50 000), val (the other 10 000 training images), test")
    parser.add_argument("--grid", type=int, nargs=2, default=(64, 64), metavar=("ROWS", "COLS"))
    parser.add_argument("--cell", type=int, default=32, help="cell side in level-0 px (default 32)")
    parser.add_argument("--region-cells", type=float, default=None,
                        help="region side in cells (regions: default 8) or spacing of region seeds (blobs: 9)")
    parser.add_argument("--blob-cells", type=float, default=14.0, help="blobs: spacing of class blob seeds")
    parser.add_argument("--blank-fraction", type=float, default=0.12, help="blobs: share of blank glass blobs")
    parser.add_argument("--min-region-patches", type=int, default=16, help="blobs: smaller regions are dropped")
    parser.add_argument("--ucc-range", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="regions/intermixed: counts drawn (default 1 4); blobs: regions outside are dropped")
    parser.add_argument("--source", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--mask-downsample", type=int, default=1, help="level-0 px per mask px (divides --cell)")
    args = parser.parse_args(argv)
    try:
        if args.layout in ("blobs", "intermixed"):
            summary = make_blob_digit_slide(
                args.out, grid=tuple(args.grid), cell=args.cell, split=args.split, blob_cells=args.blob_cells,
                region_cells=args.region_cells or 9.0, blank_fraction=args.blank_fraction,
                min_region_patches=args.min_region_patches, source=args.source, data_dir=args.data_dir,
                seed=args.seed, mpp=args.mpp, mask_downsample=args.mask_downsample, layout=args.layout,
                ucc_range=tuple(args.ucc_range) if args.ucc_range else None)
            print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in summary.items()}))
            return
        slide, mask = make_digit_slide(args.out, grid=tuple(args.grid), cell=args.cell,
                                       region_cells=int(args.region_cells or 8),
                                       ucc_range=tuple(args.ucc_range or (1, 4)),
                                       source=args.source, data_dir=args.data_dir, seed=args.seed, mpp=args.mpp,
                                       mask_downsample=args.mask_downsample, split=args.split)
    except PathouccError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {slide} and {mask}")


if __name__ == "__main__":
    main()
