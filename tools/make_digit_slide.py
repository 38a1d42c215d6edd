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
import struct
import zlib
from pathlib import Path

import numpy as np
from pyramid import pyramid_downsamples, write_pyramid_tiff  # tools/pyramid.py

from pathoucc.errors import PathouccError
from pathoucc.files import atomic_path

TISSUE = np.array([238, 176, 214], np.float32)  # pink eosin-like background
INK = np.array([88, 32, 128], np.float32)  # dark purple haematoxylin-like ink
DIGIT = 28


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
    images, digit_labels = _training_digits(source, data_dir, split)
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

    _write_slide_and_mask(out_path, images, picks, classes, margin, cell, mpp, mask_downsample)
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
                          mask_downsample: int = 1) -> dict:
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
    rng = np.random.default_rng(seed)

    # classes: nearest blob seed of each (bent) cell centre; -1 = glass
    centres = np.stack(np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5), axis=-1).reshape(-1, 2)
    seeds = _jittered_seeds(rng, rows, cols, blob_cells)
    seed_class = rng.integers(0, 10, len(seeds))
    seed_class[rng.random(len(seeds)) < blank_fraction] = -1
    bend = _displacement(rng, rows, cols, blob_cells, steepness=1.2)  # folds are harmless here: more irregular
    nearest = np.argmin(((bend(centres)[:, None, :] - seeds[None]) ** 2).sum(-1), axis=1)
    classes = seed_class[nearest].reshape(rows, cols)

    # regions: bent Voronoi cells of other seeds, in level-0 pixels
    region_seeds = _jittered_seeds(rng, rows, cols, region_cells)
    bend_regions = _displacement(rng, rows, cols, region_cells)
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
    features, sizes, uccs = [], [], []
    for k, geom in enumerate(polygons):
        inside = flat[digit][member == k]
        if len(inside) < min_region_patches:
            continue
        ucc = len(np.unique(inside))
        features.append({"type": "Feature", "geometry": shapely.geometry.mapping(geom),
                         "properties": {"objectType": "annotation", "name": f"region {len(features)}", "ucc": ucc}})
        sizes.append(len(inside))
        uccs.append(ucc)
    if not features:
        raise PathouccError("no region holds enough digit cells; use a larger grid or smaller min_region_patches")

    # pixels: one random digit of the cell's class, upscaled to the cell
    images, labels = _training_digits(source, data_dir, split)
    picks = np.full(rows * cols, -1, np.int64)
    for c in range(10):
        where = np.flatnonzero(flat == c)
        picks[where] = rng.choice(np.flatnonzero(labels == c), size=len(where))
    used, local = np.unique(picks[digit], return_inverse=True)
    scaled = np.stack([np.asarray(Image.fromarray(images[i]).resize((cell, cell), Image.Resampling.BILINEAR))
                       for i in used]).astype(np.uint8)
    inner = np.full(rows * cols, -1, np.int64)
    inner[digit] = local.ravel()
    _write_slide_and_mask(out_path, scaled, inner.reshape(rows, cols), classes, margin_cells, cell, mpp,
                          mask_downsample)
    mask_path = out_path.with_name(f"{out_path.stem}_mask.png")
    geojson_path = out_path.with_name(f"{out_path.stem}_regions.geojson")
    with atomic_path(geojson_path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return {"slide": out_path, "mask": mask_path, "geojson": geojson_path, "regions": len(features),
            "patches_per_region": [int(min(sizes)), int(np.median(sizes)), int(max(sizes))],
            "ucc_histogram": {int(u): int(n) for u, n in zip(*np.unique(uccs, return_counts=True), strict=True)},
            "digit_cells": int(digit.sum()), "cells_in_regions": int(sum(sizes)), "split": split}


def _jittered_seeds(rng: np.random.Generator, rows: int, cols: int, spacing: float) -> np.ndarray:
    """Points (x, y) in cell units about ``spacing`` apart: a grid jittered by up to 40 % of the spacing."""
    xs = np.arange(spacing / 2 - spacing, cols + spacing, spacing)
    ys = np.arange(spacing / 2 - spacing, rows + spacing, spacing)
    points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    return points + rng.uniform(-0.4, 0.4, points.shape) * spacing


def _displacement(rng: np.random.Generator, rows: int, cols: int, scale: float, steepness: float = 0.45):
    """A smooth random map (x, y) -> (x, y) + d(x, y) that bends shapes without folding them.

    d varies over about ``scale`` cells and is scaled so that no partial derivative exceeds ``steepness``
    (bilinear interpolation keeps that bound between grid points). With the default 0.45 the Jacobian's
    determinant stays above 0.1: the map is one-to-one and neighbouring polygons bent by it never overlap."""
    from scipy import ndimage

    pad = int(np.ceil(2 * scale))
    field = rng.normal(size=(2, rows + 2 * pad, cols + 2 * pad))
    field = np.stack([ndimage.gaussian_filter(f, scale / 2, mode="wrap") for f in field])
    steepest = max(float(np.abs(np.diff(field, axis=a)).max()) for a in (1, 2))
    field *= steepness / max(steepest, 1e-9)

    def apply(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 2)
        at = [points[:, 1] + pad - 0.5, points[:, 0] + pad - 0.5]  # (row, col) in the field's grid
        d = np.stack([ndimage.map_coordinates(f, at, order=1, mode="nearest") for f in field], axis=1)
        return points + d

    return apply


class _Renderer:
    """Pixels of any level of the digit slide, computed from the cell table (nothing is pre-rendered)."""

    def __init__(self, images: np.ndarray, index: np.ndarray, cell: int) -> None:
        self.images, self.index, self.cell = images, index, cell
        self.size = images.shape[1]  # 28 (centred in the cell), or the cell size (upscaled digits)
        self.off = (cell - self.size) // 2
        self._tables: dict[int, np.ndarray] = {}
        self._coarse: dict[int, np.ndarray] = {}

    def __call__(self, ds: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        cell = self.cell
        if cell % ds == 0:
            return self._fine(ds, x, y, w, h)
        if ds % cell == 0:
            return self._coarse_level(ds)[y:y + h, x:x + w]
        from PIL import Image  # uneven ratio: render level 0 and shrink

        full = self._fine(1, x * ds, y * ds, w * ds, h * ds)
        return np.asarray(Image.fromarray(full).resize((w, h), Image.Resampling.BOX))

    def _alpha(self, ds: int, picks: np.ndarray) -> np.ndarray:
        """Ink coverage (n, cell/ds, cell/ds) float32 in [0, 1] of training images ``picks`` at downsample ds."""
        cs = self.cell // ds
        if ds == 1:
            out = np.zeros((len(picks), cs, cs), np.float32)
            out[:, self.off:self.off + self.size, self.off:self.off + self.size] = self.images[picks] / 255.0
            return out
        if ds not in self._tables:  # every training image at this downsample, built 4096 images at a time
            table = np.empty((len(self.images), cs, cs), np.uint8)
            for a in range(0, len(self.images), 4096):
                padded = np.zeros((len(self.images[a:a + 4096]), self.cell, self.cell), np.float32)
                padded[:, self.off:self.off + self.size, self.off:self.off + self.size] = self.images[a:a + 4096]
                table[a:a + 4096] = np.rint(padded.reshape(-1, cs, ds, cs, ds).mean(axis=(2, 4)))
            self._tables[ds] = table
        return self._tables[ds][picks] / np.float32(255.0)

    def _fine(self, ds: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        cs = self.cell // ds
        c0, c1 = x // cs, (x + w - 1) // cs + 1
        r0, r1 = y // cs, (y + h - 1) // cs + 1
        idx = self.index[r0:r1, c0:c1]
        nr, nc = idx.shape
        alpha = self._alpha(ds, np.maximum(idx, 0).ravel()).reshape(nr, nc, cs, cs)
        alpha = alpha.transpose(0, 2, 1, 3).reshape(nr * cs, nc * cs, 1)
        rgb = TISSUE + (INK - TISSUE) * alpha
        white = np.repeat(np.repeat(idx < 0, cs, axis=0), cs, axis=1)
        rgb[white] = 255.0
        oy, ox = y - r0 * cs, x - c0 * cs
        return np.rint(rgb[oy:oy + h, ox:ox + w]).astype(np.uint8)

    def _coarse_level(self, ds: int) -> np.ndarray:
        """Whole level for ds >= cell: mean colour of each cell, box-averaged ds/cell cells per pixel."""
        if ds not in self._coarse:
            f = ds // self.cell
            coverage = self.images.reshape(len(self.images), -1).sum(axis=1) / (255.0 * self.cell**2)
            cell_rgb = TISSUE + (INK - TISSUE) * coverage[np.maximum(self.index, 0)][..., None].astype(np.float32)
            cell_rgb[self.index < 0] = 255.0
            h, w = self.index.shape[0] // f, self.index.shape[1] // f
            level = cell_rgb[:h * f, :w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3))
            self._coarse[ds] = np.rint(level).astype(np.uint8)
        return self._coarse[ds]


def _training_digits(source: str, data_dir: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 white-on-black digits and (N,) labels of one MNIST split: ``train`` (the 50 000 training
    images, validation excluded) or ``test`` (the official 10 000 test images). ``digits`` has no split."""
    if source == "mnist":
        from pathoucc.data.mnist import load_mnist

        images, labels = load_mnist(data_dir)[split]
        return np.ascontiguousarray(images, np.uint8), np.asarray(labels, np.int64)
    if source == "digits":
        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        out = np.zeros((len(digits.images), DIGIT, DIGIT), np.uint8)
        for i, img in enumerate(digits.images):
            big = Image.fromarray(np.clip(img * 16, 0, 255).astype(np.uint8)).resize((24, 24), Image.BILINEAR)
            out[i, 2:26, 2:26] = np.asarray(big)
        return out, np.asarray(digits.target, np.int64)
    raise PathouccError(f"unknown digit source {source!r} (use mnist or digits)")


def _write_slide_and_mask(out_path: Path, images: np.ndarray, picks: np.ndarray, classes: np.ndarray, margin: int,
                          cell: int, mpp: float, mask_downsample: int) -> None:
    """Write the pyramidal slide (``picks`` (rows, cols): image per cell, -1 white, inside a white margin of
    ``margin`` cells) and its ``<stem>_mask.png`` (class + 1 per cell, 0 outside)."""
    rows, cols = picks.shape
    index = np.full((rows + 2 * margin, cols + 2 * margin), -1, np.int64)
    index[margin:margin + rows, margin:margin + cols] = picks
    level0 = (index.shape[1] * cell, index.shape[0] * cell)
    write_pyramid_tiff(out_path, level0, _Renderer(images, index, cell), mpp=mpp,
                       downsamples=pyramid_downsamples(level0))
    mask_values = np.zeros(index.shape, np.uint8)
    mask_values[margin:margin + rows, margin:margin + cols] = classes + 1
    _write_png_cells(out_path.with_name(f"{out_path.stem}_mask.png"), mask_values, cell // mask_downsample)


def _write_png_cells(path: Path, values: np.ndarray, px: int) -> None:
    """Write ``values`` (rows, cols) uint8 as a grayscale PNG with each value a ``px`` x ``px`` square, streaming."""
    height, width = values.shape[0] * px, values.shape[1] * px

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        comp = zlib.compressobj(6)
        for row in values:
            line = b"\x00" + np.repeat(row, px).tobytes()  # filter type 0 + one pixel row
            data = comp.compress(line * px)
            if data:
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", comp.flush()) + chunk(b"IEND", b""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output .tif (mask and regions are written next to it)")
    parser.add_argument("--layout", choices=("regions", "blobs"), default="regions",
                        help="regions: square regions of chosen ucc (CSV); blobs: class blobs + polygon GeoJSON")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="MNIST digits to draw")
    parser.add_argument("--grid", type=int, nargs=2, default=(64, 64), metavar=("ROWS", "COLS"))
    parser.add_argument("--cell", type=int, default=32, help="cell side in level-0 px (default 32)")
    parser.add_argument("--region-cells", type=float, default=None,
                        help="region side in cells (regions: default 8) or spacing of region seeds (blobs: 9)")
    parser.add_argument("--blob-cells", type=float, default=14.0, help="blobs: spacing of class blob seeds")
    parser.add_argument("--blank-fraction", type=float, default=0.12, help="blobs: share of blank glass blobs")
    parser.add_argument("--min-region-patches", type=int, default=16, help="blobs: smaller regions are dropped")
    parser.add_argument("--ucc-range", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"))
    parser.add_argument("--source", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--mask-downsample", type=int, default=1, help="level-0 px per mask px (divides --cell)")
    args = parser.parse_args(argv)
    try:
        if args.layout == "blobs":
            summary = make_blob_digit_slide(
                args.out, grid=tuple(args.grid), cell=args.cell, split=args.split, blob_cells=args.blob_cells,
                region_cells=args.region_cells or 9.0, blank_fraction=args.blank_fraction,
                min_region_patches=args.min_region_patches, source=args.source, data_dir=args.data_dir,
                seed=args.seed, mpp=args.mpp, mask_downsample=args.mask_downsample)
            print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in summary.items()}))
            return
        slide, mask = make_digit_slide(args.out, grid=tuple(args.grid), cell=args.cell,
                                       region_cells=int(args.region_cells or 8), ucc_range=tuple(args.ucc_range),
                                       source=args.source, data_dir=args.data_dir, seed=args.seed, mpp=args.mpp,
                                       mask_downsample=args.mask_downsample, split=args.split)
    except PathouccError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {slide} and {mask}")


if __name__ == "__main__":
    main()
