from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from slide_fixtures import blank_slide, write_array_pyramid

from pathoucc.errors import PathouccError
from pathoucc.slides.reader import LevelChoice, open_slide, pick_level


@pytest.fixture(scope="module")
def gradient(tmp_path_factory):
    """A 1000 x 700 px image whose pixel (x, y) is (x % 256, y % 256, (x + y) % 256), as TIFF and PNG."""
    folder = tmp_path_factory.mktemp("reader")
    yy, xx = np.mgrid[0:700, 0:1000]
    image = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=2).astype(np.uint8)
    tif = write_array_pyramid(folder / "gradient.tif", image, mpp=0.25)
    png = folder / "gradient.png"
    Image.fromarray(image).save(png)
    return image, tif, png


def test_pyramidal_tiff_opens_with_levels_and_mpp(gradient):
    image, tif, _ = gradient
    with open_slide(tif) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.dimensions == (1000, 700)
        assert slide.level_count == 3
        assert slide.level_dimensions == ((1000, 700), (500, 350), (250, 175))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert slide.mpp == pytest.approx((0.25, 0.25))
        assert slide.objective_power is None
        region = slide.read_region((300, 200), 0, (64, 48))
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8
        np.testing.assert_array_equal(region, image[200:248, 300:364])
        low = slide.read_region((400, 200), 1, (20, 10))  # level-1 pixel = mean of a 2 x 2 level-0 block
        expected = image[200:220, 400:440].reshape(10, 2, 20, 2, 3).mean(axis=(1, 3))
        assert np.abs(low.astype(float) - expected).max() <= 1
        thumb = slide.thumbnail(250)
        assert thumb.shape == (175, 250, 3)


def test_thumbnail_of_a_single_level_slide_is_shrunk_block_by_block(gradient, tmp_path, monkeypatch):
    image, _, _ = gradient
    import pyramid

    from pathoucc.slides import reader

    flat = pyramid.write_pyramid_tiff(tmp_path / "flat.tif", (1000, 700),
                                      lambda d, x, y, w, h: image[y:y + h, x:x + w], downsamples=[1])
    monkeypatch.setattr(reader, "THUMBNAIL_BLOCK", 256)  # 25-px thumbnail blocks: 16 reads instead of one
    with open_slide(flat) as slide:
        assert slide.level_count == 1
        thumb = slide.thumbnail(100)
    expected = np.asarray(Image.fromarray(image).resize((100, 70), Image.Resampling.BOX))
    assert thumb.shape == (70, 100, 3)
    assert np.abs(thumb.astype(int) - expected).max() <= 1


def test_outside_pixels_are_white(gradient):
    _, tif, _ = gradient
    with open_slide(tif) as slide:
        region = slide.read_region((990, 690), 0, (20, 20))
    assert (region[10:, :] == 255).all() and (region[:, 10:] == 255).all()


def test_plain_png_is_a_single_level_slide(gradient):
    image, _, png = gradient
    with open_slide(png) as slide:
        assert slide.level_count == 1 and slide.dimensions == (1000, 700) and slide.mpp is None
        np.testing.assert_array_equal(slide.read_region((10, 20), 0, (30, 40)), image[20:60, 10:40])


def test_pick_level_by_mpp_magnification_downsample_and_level(gradient):
    _, tif, png = gradient
    with open_slide(tif) as slide:
        assert pick_level(slide) == LevelChoice(0, 1.0, 1.0)
        assert pick_level(slide, mpp=0.5) == LevelChoice(1, 2.0, 1.0)
        assert pick_level(slide, mpp=1.0) == LevelChoice(2, 4.0, 1.0)
        choice = pick_level(slide, mpp=0.75)  # between levels: read level 1 and shrink by 1.5
        assert (choice.level, choice.downsample, choice.scale) == (1, pytest.approx(3.0), pytest.approx(1.5))
        assert pick_level(slide, mpp=2.0).level == 2  # coarser than the top level: resize the top level
        assert pick_level(slide, mpp=2.0).scale == pytest.approx(2.0)
        assert pick_level(slide, downsample=4) == LevelChoice(2, 4.0, 1.0)
        assert pick_level(slide, level=1) == LevelChoice(1, 2.0, 1.0)
        with pytest.raises(PathouccError, match="objective power"):
            pick_level(slide, magnification=20)
        with pytest.raises(PathouccError, match="finer than"):
            pick_level(slide, mpp=0.1)
        with pytest.raises(PathouccError, match="level 5 does not exist"):
            pick_level(slide, level=5)
        with pytest.raises(PathouccError, match="only one"):
            pick_level(slide, mpp=0.5, level=1)
    with open_slide(png) as slide, pytest.raises(PathouccError, match="microns per pixel") as err:
        pick_level(slide, mpp=0.5)
    assert "gradient.png" in str(err.value)


def test_pick_level_by_magnification():
    svs_like = SimpleNamespace(path="x.svs", level_downsamples=(1.0, 4.0002, 16.001), objective_power=40.0,
                               mpp=(0.25, 0.25))
    assert pick_level(svs_like, magnification=40) == LevelChoice(0, 1.0, 1.0)
    assert pick_level(svs_like, magnification=10) == LevelChoice(1, 4.0002, 1.0)  # within 1 % of a level
    choice = pick_level(svs_like, magnification=20)
    assert (choice.level, choice.scale, choice.downsample) == (0, 2.0, 2.0)
    assert pick_level(svs_like, magnification=5).level == 1
    assert pick_level(svs_like, magnification=5).scale == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize("case", ["missing", "empty", "text", "truncated", "folder"])
def test_bad_slide_files_raise_named_errors(tmp_path, case):
    path = tmp_path / f"bad_{case}.svs"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not a slide\n" * 10)
    elif case == "truncated":
        good = blank_slide(tmp_path, "good.tif").read_bytes()
        path = tmp_path / "bad_truncated.tif"
        path.write_bytes(good[: len(good) // 2])
    elif case == "folder":
        path.mkdir()
    with pytest.raises(PathouccError) as err:
        open_slide(path)
    message = str(err.value)
    assert path.name in message and "\n" not in message
    expected = {"missing": "not found", "empty": "empty", "text": "not a slide", "truncated": "truncated",
                "folder": "folder"}[case]
    assert expected in message
