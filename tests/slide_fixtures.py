"""Small slides for the slide and tiling tests (digit slides from scikit-learn digits, real H&E in a TIFF)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HE_IMAGE = ROOT / "tests" / "assets" / "he_crop_256.png"  # a real H&E crop (BSD-3, TIAToolbox; tests/assets/README.md)
HE_SIZE = 1000  # the crop is scaled to HE_SIZE x HE_SIZE px
sys.path.insert(0, str(ROOT / "tools"))

from make_digit_slide import make_digit_slide  # noqa: E402
from pyramid import write_array_pyramid  # noqa: E402  (tools/pyramid.py)

CELL = 32
REGION_CELLS = 8
GRID = (16, 16)  # 2 x 2 regions of 8 x 8 digits, one region of white margin: 1024 x 1024 px at level 0
MARGIN = REGION_CELLS * CELL


def make_digit_fixture(folder: Path) -> dict:
    """A 1024 x 1024 px digit slide in ``folder``: paths and the generator's ground truth (cell classes, region
    counts); the ``digit_slide`` fixture of conftest.py builds it once per test session."""
    slide, mask = make_digit_slide(folder / "digits.tif", grid=GRID, cell=CELL, region_cells=REGION_CELLS,
                                   source="digits", seed=3, mpp=0.5)
    cells = np.asarray(Image.open(mask)).astype(np.int64)[MARGIN::CELL, MARGIN::CELL][:GRID[0], :GRID[1]] - 1
    with (folder / "digits_regions.csv").open() as f:
        regions = [{k: (v if k == "slide" else int(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    return {"slide": slide, "mask": mask, "csv": folder / "digits_regions.csv", "cells": cells, "regions": regions,
            "folder": folder}


def cell_class(cells: np.ndarray, x: int, y: int) -> int:
    """Ground-truth class of the cell whose level-0 top-left is (x, y) (-1 in the margin)."""
    r, c = (y - MARGIN) // CELL, (x - MARGIN) // CELL
    inside = 0 <= r < cells.shape[0] and 0 <= c < cells.shape[1]
    return int(cells[r, c]) if inside else -1


def he_slide(folder: Path, border: tuple[int, int] = (200, 300)) -> Path:
    """The real H&E crop, scaled to 1000 x 1000 px, inside a white border, written as a pyramidal TIFF (mpp 0.25)."""
    he = np.asarray(Image.open(HE_IMAGE).convert("RGB").resize((HE_SIZE, HE_SIZE), Image.Resampling.BICUBIC))
    by, bx = border
    canvas = np.full((he.shape[0] + 2 * by, he.shape[1] + 2 * bx, 3), 255, np.uint8)
    canvas[by:by + he.shape[0], bx:bx + he.shape[1]] = he
    return write_array_pyramid(folder / "he.tif", canvas, mpp=0.25)


def blank_slide(folder: Path, name: str = "blank.tif") -> Path:
    """A white slide with faint grey noise and no tissue."""
    rng = np.random.default_rng(0)
    pixels = (248 + rng.integers(-3, 4, size=(600, 800, 1))).repeat(3, axis=2).astype(np.uint8)
    return write_array_pyramid(folder / name, pixels)


HAEMATOXYLIN = np.array([0.65, 0.70, 0.29])  # optical density per unit stain (Ruifrok & Johnston)
EOSIN = np.array([0.07, 0.99, 0.11])
GLASS_OD = np.array([0.004, 0.014, 0.008])  # near-white glass, saturation ~0.03


def stained_tissue(coverage: float, stain: float = 1.0, *, pale: bool = False, corner: bool = False,
                   size: int = 320, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A generated H&E thumbnail and its true tissue mask: ``(rgb (size, size, 3) uint8, truth (size, size) bool)``.

    Tissue is a smooth random shape covering ``coverage`` of the image (``corner``: everything but one corner of
    glass), with three round glass holes (radius 9 px, background in the truth), eosin texture and dark
    haematoxylin nuclei (the "ink", ~25 % of the tissue). ``stain`` scales both stains' optical density;
    ``pale``: eosin faded to lavender (tissue saturation ~0.10-0.15, nuclei > 0.22). Pixels are
    ``255 * 10 ** -OD`` plus noise.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    if corner:
        truth = np.hypot(xx, yy) > size * np.sqrt(4 * (1 - coverage) / np.pi)  # a quarter disc of glass
    else:
        field = ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 12)
        truth = field > np.quantile(field, 1 - coverage)
    inner = ndimage.binary_erosion(truth, iterations=12)
    for y, x in (rng.choice(np.argwhere(inner), 3) if inner.any() else []):
        truth &= np.hypot(xx - x, yy - y) > 9
    texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2)
    nuclei = ndimage.gaussian_filter(rng.random((size, size)), 1.5) > 0.56
    eosin = (0.05 if pale else 0.30) * (1 + 0.6 * texture)
    haem = np.where(nuclei, 0.35 if pale else 0.7, 0.03 if pale else 0.05)
    od = stain * (eosin[..., None] * EOSIN + haem[..., None] * HAEMATOXYLIN)
    od = np.where(truth[..., None], od, GLASS_OD)
    rgb = 255 * 10.0 ** -od + rng.normal(0, 1.5, size=(size, size, 3))
    return rgb.clip(0, 255).astype(np.uint8), truth
