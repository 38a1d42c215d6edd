"""Tissue detection keeps real holes (glass, lumina) as background and fills small specks."""

from pathlib import Path

import numpy as np
import pytest
from helpers import ASSETS
from PIL import Image

from pathoucc.slides.tissue import MIN_HOLE_AREA, detect_tissue, fill_small_holes, tissue_mask_from_rgb

DATA = ASSETS
PINK = (190, 90, 170)


def synthetic_tissue(size: int = 200, seed: int = 0) -> np.ndarray:
    """White glass with a noisy pink tissue block at [20:180, 20:180]; (size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    rgb = np.full((size, size, 3), 245, np.int64)
    rgb[20:180, 20:180] = PINK
    rgb += rng.integers(-8, 9, size=rgb.shape)
    return rgb.clip(0, 255).astype(np.uint8)


class FakeSlide:
    """Just what :func:`detect_tissue` reads: a thumbnail, level-0 dimensions and a path."""

    def __init__(self, thumbnail: np.ndarray, dimensions: tuple[int, int]) -> None:
        self._thumbnail, self.dimensions, self.path = thumbnail, dimensions, Path("fake.tif")

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        return self._thumbnail


def test_enclosed_blank_hole_is_background_and_speck_is_filled():
    rgb = synthetic_tissue()
    rgb[80:120, 80:120] = 250  # glass hole 40 x 40 px enclosed by tissue
    rgb[40:48, 140:148] = 250  # speck 8 x 8 px: survives the 2-px closing, so only the hole filter fills it
    slide = FakeSlide(rgb, (800, 800))  # 4 x 4 level-0 px per thumbnail pixel
    mask = detect_tissue(slide).mask  # hole 25 600 level-0 px² >= 2048 kept; speck 1 024 px² filled
    assert not mask[82:118, 82:118].any()
    assert mask[40:48, 140:148].all()
    assert mask[25:75, 25:175].all() and not mask[:15].any()
    assert mask.mean() == pytest.approx((160**2 - 40**2) / 200**2, abs=0.005)

    everything = detect_tissue(slide, min_hole_area=0).mask
    assert not everything[42:46, 142:146].any()  # the speck too is kept as background
    assert detect_tissue(slide, min_hole_area=float("inf")).mask[80:120, 80:120].all()  # old behaviour: all filled


def test_hole_threshold_is_in_level0_pixels():
    rgb = synthetic_tissue()
    rgb[80:120, 80:120] = 250  # 1 600 thumbnail px
    at_level0 = tissue_mask_from_rgb(rgb, (1.0, 1.0), min_hole_area=2000).mask  # 1 600 level-0 px²: a speck
    assert at_level0[80:120, 80:120].all()
    downsampled = tissue_mask_from_rgb(rgb, (2.0, 2.0), min_hole_area=2000).mask  # 6 400 level-0 px²: a hole
    assert not downsampled[82:118, 82:118].any()


def test_hole_touching_the_border_is_not_a_hole_and_is_not_filled():
    rgb = synthetic_tissue()
    rgb[80:120, 0:120] = 250  # a bay of glass open to the image border
    mask = tissue_mask_from_rgb(rgb, min_hole_area=float("inf")).mask
    assert not mask[82:118, 0:118].any()


def test_fill_small_holes_on_a_boolean_mask():
    mask = np.ones((30, 30), bool)
    mask[0, :] = False  # border background: never a hole
    mask[5:7, 5:7] = False  # 4 px
    mask[10:20, 10:20] = False  # 100 px
    out = fill_small_holes(mask, 50)
    assert out[5:7, 5:7].all() and not out[10:20, 10:20].any() and not out[0].any()
    np.testing.assert_array_equal(fill_small_holes(mask, 0), mask)
    assert fill_small_holes(mask, float("inf"))[1:].all()
    assert mask[5, 5] == 0  # input untouched


def test_real_he_lumen_is_background():
    """A 300 x 260 crop of the TIAToolbox H&E tile (BSD-3) around a white lumen enclosed by tumour cells."""
    rgb = np.asarray(Image.open(DATA / "he_lumen.png").convert("RGB"))
    assert rgb.shape == (260, 300, 3)
    tissue = tissue_mask_from_rgb(rgb)  # level 0 (0.25 µm/px): the lumen is ~11 000 px² > MIN_HOLE_AREA
    mask = tissue.mask
    assert not mask[118:152, 115:160].any()  # the centre of the lumen (below row 152 its left edge is pale cytoplasm)
    box = np.zeros_like(mask)
    box[50:210, 55:240] = True
    white = box & (rgb.min(axis=2) > 220)
    assert white.sum() > 5000
    assert (~mask[white]).mean() > 0.95  # the lumen's bright pixels are background
    assert 0.75 < mask.mean() < 0.9  # the cells around it are tissue
    filled = tissue_mask_from_rgb(rgb, min_hole_area=float("inf")).mask
    assert filled[118:160, 115:160].all()  # what tissue detection did before holes were kept


@pytest.mark.parametrize("downsample", [1.0, 4.0])
def test_default_threshold_is_stated(downsample):
    assert MIN_HOLE_AREA == 2048.0
    rgb = synthetic_tissue()
    side = int(np.ceil(np.sqrt(MIN_HOLE_AREA) / downsample)) + 1  # just above the threshold -> kept
    rgb[90:90 + side, 90:90 + side] = 250
    mask = tissue_mask_from_rgb(rgb, (downsample, downsample), close=0, smooth=1).mask
    assert not mask[90:90 + side, 90:90 + side].any()
