import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from slide_fixtures import HE_IMAGE, blank_slide, he_slide, stained_tissue, write_array_pyramid

from pathoucc.errors import PathouccError
from pathoucc.slides.reader import open_slide
from pathoucc.slides.tilefile import open_tiles
from pathoucc.slides.tiler import tile_slide
from pathoucc.slides.tissue import (
    TissueMask,
    detect_tissue,
    otsu_threshold,
    saturation,
    save_mask_png,
    tissue_fraction,
    tissue_fractions,
    tissue_mask_from_rgb,
)


def test_real_he_tissue_is_found_and_white_border_is_not(tmp_path):
    path = he_slide(tmp_path, border=(200, 300))  # H&E occupies x 300..1300, y 200..1200 of 1600 x 1400
    with open_slide(path) as slide:
        tissue = detect_tissue(slide, max_size=400)
    mask = tissue.mask
    assert mask.shape == (350, 400)
    assert tissue.downsample == pytest.approx((4.0, 4.0))
    inside = np.zeros_like(mask)
    inside[50:300, 75:325] = True  # the H&E crop in mask pixels
    assert mask[inside].mean() > 0.9  # lumens inside the tissue are filled
    assert mask[~inside].mean() < 0.01
    assert 0 < tissue.threshold < 0.5
    assert tissue_fraction(tissue, (0, 0, 250, 250)) == 0.0
    assert tissue_fraction(tissue, (600, 600, 224, 224)) > 0.95
    half = tissue_fraction(tissue, (200, 600, 200, 200))  # straddles the left edge of the tissue at x = 300
    assert 0.4 < half < 0.6


def test_blank_slide_has_no_tissue_and_the_message_says_what_was_seen(tmp_path):
    path = blank_slide(tmp_path)
    with open_slide(path) as slide, pytest.raises(PathouccError, match="no tissue") as err:
        detect_tissue(slide)
    message = str(err.value)
    assert "blank.tif" in message and "\n" not in message
    assert "saturation has median 0.0" in message and "99th percentile 0.0" in message  # faint grey noise
    assert "tissue needs more than 0.0" in message


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("stain", [0.8, 1.0, 1.2])
@pytest.mark.parametrize("coverage", [0.1, 0.5, 0.98])
def test_generated_slides_hold_for_stain_and_coverage(stain, coverage):
    rgb, truth = stained_tissue(coverage, stain, seed=int(coverage * 100))
    tissue = tissue_mask_from_rgb(rgb, (4.0, 4.0))  # 4 x 4 level-0 px per pixel: the glass holes are kept
    assert iou(tissue.mask, truth) >= 0.9
    holes = ndimage.binary_fill_holes(truth) & ~truth
    assert holes.sum() > 500 and (~tissue.mask[holes]).mean() > 0.9  # glass holes stay background


@pytest.mark.parametrize("stain", [0.8, 1.0, 1.2])
def test_pale_nearly_full_slide_with_glass_in_one_corner(stain):
    """Eosin faded to lavender (tissue saturation ~0.10-0.15, glass ~0.03, nuclei > 0.22) over 97 % of it."""
    rgb, truth = stained_tissue(0.97, stain, pale=True, corner=True)
    sat = ndimage.median_filter(saturation(rgb), size=5)
    assert otsu_threshold(sat) > np.percentile(sat[truth], 75)  # Otsu would keep little more than the nuclei
    tissue = tissue_mask_from_rgb(rgb, (4.0, 4.0))
    assert np.median(sat[~truth]) < tissue.threshold < np.percentile(sat[truth], 5)
    assert iou(tissue.mask, truth) >= 0.9
    assert not tissue.mask[:20, :20].any()  # the glass corner


def test_tile_finds_the_tissue_of_a_pale_nearly_full_slide(tmp_path):
    rgb, truth = stained_tissue(0.97, pale=True, corner=True, size=256)
    big = np.asarray(Image.fromarray(rgb).resize((1024, 1024), Image.Resampling.NEAREST))
    slide = write_array_pyramid(tmp_path / "pale.tif", big)
    tiles = open_tiles(tile_slide(slide, tmp_path / "tiles", patch_size=64, level=0))
    in_truth = truth[tiles.coords[:, 1] // 4 + 8, tiles.coords[:, 0] // 4 + 8]  # each patch's centre
    assert tiles.num_patches >= 0.9 * truth[8::16, 8::16].sum() and in_truth.mean() > 0.97


@pytest.mark.parametrize("stain", [0.8, 1.2])
def test_real_he_with_stain_scaled_by_20_percent(stain):
    he = np.asarray(Image.open(HE_IMAGE).convert("RGB")).astype(np.float64)
    od = -np.log10(np.maximum(he, 1) / 255) * stain
    canvas = np.full((384, 384, 3), 250, np.uint8)
    canvas[64:320, 64:320] = (255 * 10.0 ** -od).clip(0, 255).astype(np.uint8)
    truth = np.zeros((384, 384), bool)
    truth[64:320, 64:320] = True
    assert iou(tissue_mask_from_rgb(canvas).mask, truth) >= 0.9


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 5000), rng.normal(0.6, 0.05, 2000)]).clip(0, 1)
    threshold = otsu_threshold(values)
    assert 0.2 < threshold < 0.45  # inside the gap between the modes
    assert (values[:5000] > threshold).sum() == 0 and (values[5000:] <= threshold).sum() == 0


def test_tissue_fractions_match_direct_counts():
    rng = np.random.default_rng(1)
    mask = rng.random((40, 60)) > 0.5
    tissue = TissueMask(mask, (4.0, 4.0))
    boxes = np.array([[0, 0, 40, 40], [8, 12, 20, 8], [200, 120, 40, 40]])
    expected = [mask[0:10, 0:10].mean(), mask[3:5, 2:7].mean(), mask[30:40, 50:60].mean()]
    np.testing.assert_allclose(tissue_fractions(tissue, boxes), expected)
    assert tissue_fractions(tissue, np.array([[1000, 1000, 8, 8]]))[0] == 0.0  # outside the slide


def test_mask_png_is_written_atomically(tmp_path):
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:25] = True
    out = save_mask_png(mask, tmp_path / "sub" / "m_tissue.png")
    back = np.asarray(Image.open(out))
    np.testing.assert_array_equal(back == 255, mask)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m_tissue.png"]
