import numpy as np
import pytest
from PIL import Image
from slide_fixtures import blank_slide, he_slide

from pathoucc.errors import PathouccError
from pathoucc.slides.reader import open_slide
from pathoucc.slides.tissue import (
    TissueMask,
    detect_tissue,
    otsu_threshold,
    save_mask_png,
    tissue_fraction,
    tissue_fractions,
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


def test_blank_slide_has_no_tissue(tmp_path):
    path = blank_slide(tmp_path)
    with open_slide(path) as slide, pytest.raises(PathouccError, match="no tissue") as err:
        detect_tissue(slide)
    assert "blank.tif" in str(err.value)


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
