import json
import os

import h5py
import numpy as np
import pytest
from PIL import Image
from slide_fixtures import CELL, GRID, MARGIN, REGION_CELLS, blank_slide, cell_class, he_slide

from pathoucc.errors import PathouccError
from pathoucc.slides import tiler
from pathoucc.slides.reader import open_slide
from pathoucc.slides.tilefile import open_tiles
from pathoucc.slides.tiler import output_paths, tile_slide, tile_slides

DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def tiled(digit_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiles")
    path = tile_slide(digit_slide["slide"], out, patch_size=CELL, stride=CELL, level=0, region_size=256,
                      annotations=digit_slide["mask"], workers=2)
    return path, open_tiles(path)


def test_digit_slide_tiles_have_the_documented_layout(tiled, digit_slide):
    path, _ = tiled
    assert path.name == "digits.h5"
    n = GRID[0] * GRID[1]  # one patch per digit cell, none in the white margin
    with h5py.File(path) as f:
        assert f["coords"].shape == (n, 2) and f["coords"].dtype == np.int64
        assert f["patches"].shape == (n, CELL, CELL, 3) and f["patches"].dtype == np.uint8
        assert f["patches"].chunks[0] <= 16 and f["patches"].compression == "gzip"
        for where in (f.attrs, f["coords"].attrs):
            assert where["patch_size"] == CELL and where["patch_level"] == 0 and where["stride"] == CELL
            assert where["downsample"] == 1.0
            assert tuple(where["level_dimensions"]) == (1024, 1024)
        assert f.attrs["format_version"] == 1
        assert tuple(f.attrs["slide_dimensions"]) == (1024, 1024)
        assert tuple(f.attrs["mpp"]) == pytest.approx((0.5, 0.5))
        assert f.attrs["slide_path"] == str(digit_slide["slide"].resolve())
        assert json.loads(f.attrs["class_names"]) == DIGITS
        assert f.attrs["tissue_threshold"] == 0.5
        assert f["labels"].shape == (n,) and f["region"].shape == (n,)
        assert f["regions/boxes"].dtype == np.int64 and f["regions/ucc"].dtype == np.int64
    assert (path.parent / "digits_tissue.png").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["digits.h5", "digits_tissue.png"]  # no temp files


def test_coordinates_cover_each_digit_cell_once_and_patches_are_the_pixels(tiled, digit_slide):
    _, tiles = tiled
    xs, ys = np.meshgrid(MARGIN + CELL * np.arange(GRID[1]), MARGIN + CELL * np.arange(GRID[0]))
    expected = {(int(x), int(y)) for x, y in zip(xs.ravel(), ys.ravel(), strict=True)}
    assert {tuple(c) for c in tiles.coords.tolist()} == expected
    with open_slide(digit_slide["slide"]) as slide:
        for i in (0, 17, tiles.num_patches - 1):
            x, y = tiles.coords[i]
            np.testing.assert_array_equal(tiles.read(i)[0], slide.read_region((x, y), 0, (CELL, CELL)))
    shuffled = np.array([5, 2, 9, 2])
    np.testing.assert_array_equal(tiles.read(shuffled), tiles.read(slice(0, 10))[shuffled])


def test_labels_and_region_counts_match_the_generator(tiled, digit_slide):
    _, tiles = tiled
    truth = np.array([cell_class(digit_slide["cells"], x, y) for x, y in tiles.coords.tolist()])
    assert (truth >= 0).all()
    np.testing.assert_array_equal(tiles.labels, truth)
    generated = sorted((r["x"], r["y"], r["width"], r["height"], r["ucc"]) for r in digit_slide["regions"])
    found = sorted((*map(int, box), int(u)) for box, u in zip(tiles.region_boxes, tiles.region_count, strict=True))
    assert found == generated
    assert len(found) == (GRID[0] // REGION_CELLS) * (GRID[1] // REGION_CELLS)
    assert len({r["ucc"] for r in digit_slide["regions"]}) > 1  # the test slide has regions of different counts
    counts = np.bincount(tiles.region, minlength=tiles.num_regions)
    assert (counts == REGION_CELLS**2).all()  # one bag = the 64 digits of a generated region
    for r, (x, y, w, h) in enumerate(tiles.region_boxes):
        inside = tiles.coords[tiles.region == r]
        assert (inside[:, 0] >= x).all() and (inside[:, 0] + CELL <= x + w).all()
        assert (inside[:, 1] >= y).all() and (inside[:, 1] + CELL <= y + h).all()


def test_geojson_annotations_give_the_same_labels(digit_slide, tiled, tmp_path):
    cells = digit_slide["cells"]
    features = []
    for c in np.unique(cells):
        squares = []
        for r, col in zip(*np.nonzero(cells == c), strict=True):
            x, y = int(MARGIN + col * CELL), int(MARGIN + r * CELL)
            squares.append([[[x, y], [x + CELL, y], [x + CELL, y + CELL], [x, y + CELL], [x, y]]])
        features.append({"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": squares},
                         "properties": {"classification": {"name": f"digit {int(c)}"}}})
    geojson = tmp_path / "digits.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    names = [f"digit {i}" for i in range(10)]
    path = tile_slide(digit_slide["slide"], tmp_path / "out", patch_size=CELL, level=0, region_size=256,
                      annotations=geojson, classes=names, workers=1)
    tiles, reference = open_tiles(path), tiled[1]
    assert tiles.class_names == names
    np.testing.assert_array_equal(tiles.coords, reference.coords)
    np.testing.assert_array_equal(tiles.labels, reference.labels)
    np.testing.assert_array_equal(tiles.region_count, reference.region_count)
    with pytest.raises(PathouccError, match="'digit 9' is not one of") as err:  # slide seed 3 has 9s
        tile_slide(digit_slide["slide"], tmp_path / "out2", patch_size=CELL, level=0, annotations=geojson,
                   classes=names[:9])
    assert "digits.geojson" in str(err.value)


def test_regions_csv_gives_bags_without_patch_labels(digit_slide, tmp_path):
    path = tile_slide(digit_slide["slide"], tmp_path, patch_size=CELL, level=0, annotations=digit_slide["csv"])
    tiles = open_tiles(path)
    assert (tiles.labels == -1).all() and tiles.class_names is None
    rows = digit_slide["regions"]
    np.testing.assert_array_equal(tiles.region_boxes, [[r["x"], r["y"], r["width"], r["height"]] for r in rows])
    np.testing.assert_array_equal(tiles.region_count, [r["ucc"] for r in rows])
    assert (np.bincount(tiles.region) == REGION_CELLS**2).all()


def test_coarser_level_and_resized_grid(digit_slide, tmp_path):
    with open_slide(digit_slide["slide"]) as slide:
        level1 = slide.read_region((0, 0), 1, (512, 512))
    path = tile_slide(digit_slide["slide"], tmp_path / "l1", patch_size=32, level=1, region_size=128,
                      annotations=digit_slide["mask"])
    tiles = open_tiles(path)
    assert tiles.patch_level == 1 and tiles.downsample == 2.0 and tiles.level_dimensions == (512, 512)
    assert tiles.num_patches == (GRID[0] // 2) * (GRID[1] // 2)  # a 32-px patch at level 1 covers 2 x 2 cells
    assert (tiles.coords % 64 == 0).all()
    x, y = tiles.coords[3] // 2
    np.testing.assert_array_equal(tiles.read(3)[0], level1[y:y + 32, x:x + 32])
    assert tiles.num_regions == 4 and (tiles.region_count >= 1).all()
    # downsample 3 is between levels 1 and 2: level 1 resized by 1.5; 32-px patches cover 96 level-0 px
    path = tile_slide(digit_slide["slide"], tmp_path / "d3", patch_size=32, downsample=3, tissue_threshold=0.9)
    tiles = open_tiles(path)
    assert tiles.patch_level == 1 and tiles.downsample == pytest.approx(3.0)
    assert tiles.level_dimensions == (341, 341)
    assert (tiles.coords % 96 == 0).all() and tiles.read(0).shape == (1, 32, 32, 3)
    inside = [288, 384, 480, 576, 672]  # the 96-px cells lying within the digits (256..768) by >= 90 %
    assert sorted({tuple(c) for c in tiles.coords.tolist()}) == [(x, y) for x in inside for y in inside]


def test_real_he_is_tiled_without_background(tmp_path):
    slide = he_slide(tmp_path)  # 1600 x 1400, tissue at x 300..1300, y 200..1200
    path = tile_slide(slide, tmp_path / "out", patch_size=100, mpp=0.5, workers=2)  # level 1, 200-px footprint
    tiles = open_tiles(path)
    assert tiles.patch_level == 1 and tiles.downsample == 2.0
    x, y = tiles.coords[:, 0], tiles.coords[:, 1]
    assert (x >= 200).all() and (x + 200 <= 1400).all() and (y >= 200 - 100).all() and (y + 200 <= 1300).all()
    assert 20 <= tiles.num_patches <= 36  # 5 x 5 fully inside, plus some half-covered ones
    mean = tiles.read(slice(None)).reshape(tiles.num_patches, -1).mean(axis=1)
    assert (mean < 230).all()  # no white background patches


def test_rerun_skips_done_slides_and_overwrite_rewrites(digit_slide, tmp_path):
    kwargs = {"patch_size": 64, "level": 0, "tissue_threshold": 0.5}
    path = tile_slide(digit_slide["slide"], tmp_path, **kwargs)
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))
    report = tile_slides([digit_slide["slide"]], tmp_path, **kwargs)
    assert report.skipped == [path] and not report.written
    assert path.stat().st_mtime_ns == stamp - 10**9
    report = tile_slides([digit_slide["slide"]], tmp_path, patch_size=32, level=0)  # other inputs: re-tiled
    assert report.written == [path] and report.retiled == [(path, "patch_size 64 -> 32; stride 64 -> 32")]
    assert open_tiles(path).patch_size == 32
    report = tile_slides([digit_slide["slide"]], tmp_path, overwrite=True, **kwargs)
    assert report.written == [path] and path.stat().st_mtime_ns != stamp - 10**9
    path.write_bytes(b"partial garbage")  # an invalid file under the final name is tiled again
    assert tile_slides([digit_slide["slide"]], tmp_path, **kwargs).written == [path]
    assert open_tiles(path).num_patches == 64


def test_interrupted_write_leaves_no_output(digit_slide, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiler, "_read_block", broken)
    with pytest.raises(KeyboardInterrupt):
        tile_slide(digit_slide["slide"], tmp_path, patch_size=64, level=0)
    assert not output_paths(digit_slide["slide"], tmp_path)[0].exists()
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".h5", ".tmp")]
    monkeypatch.undo()
    assert open_tiles(tile_slide(digit_slide["slide"], tmp_path, patch_size=64, level=0)).num_patches == 64


def test_batch_skips_a_bad_slide_and_tiles_the_others(digit_slide, tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    blank = blank_slide(tmp_path)
    seen = []
    report = tile_slides([bad, digit_slide["slide"], blank], tmp_path / "out", patch_size=64, level=0,
                         on_error=lambda p, m: seen.append(p))
    assert [p.name for p in report.written] == ["digits.h5"]
    assert [p.name for p, _ in report.failed] == ["bad.svs", "blank.tif"] and seen == [bad, blank]
    assert "no tissue" in report.failed[1][1] and not report.ok
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["digits.h5", "digits_tissue.png"]


def test_annotation_errors_name_the_file(digit_slide, tmp_path):
    empty = tmp_path / "empty_mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(empty)
    with pytest.raises(PathouccError, match="do not overlap") as err:
        tile_slide(digit_slide["slide"], tmp_path, patch_size=32, level=0, annotations=empty)
    assert "empty_mask.png" in str(err.value)
    corner = tmp_path / "corner_mask.png"  # labels only in the white margin: no tissue patch is labelled
    values = np.zeros((64, 64), np.uint8)
    values[:8, :8] = 3
    Image.fromarray(values).save(corner)
    with pytest.raises(PathouccError, match="do not overlap any tissue patch") as err:
        tile_slide(digit_slide["slide"], tmp_path, patch_size=32, level=0, annotations=corner)
    assert "corner_mask.png" in str(err.value)
    far = tmp_path / "far.csv"
    far.write_text("slide,x,y,width,height,ucc\ndigits.tif,5000,5000,256,256,2\n")
    with pytest.raises(PathouccError, match="overlaps the slide") as err:
        tile_slide(digit_slide["slide"], tmp_path, patch_size=32, level=0, annotations=far)
    assert "far.csv" in str(err.value)
    with pytest.raises(PathouccError, match="only 3 classes"):
        tile_slide(digit_slide["slide"], tmp_path, patch_size=32, level=0, annotations=digit_slide["mask"],
                   classes=["a", "b", "c"])
    assert not list(tmp_path.glob("*.h5"))


@pytest.mark.parametrize("case", ["not_hdf5", "no_patches", "zero", "no_attrs", "bad_labels"])
def test_invalid_tiles_files_are_rejected(tiled, tmp_path, case):
    source, _ = tiled
    path = tmp_path / f"{case}.h5"
    if case == "not_hdf5":
        path.write_text("hello")
    else:
        with h5py.File(source) as src, h5py.File(path, "w") as dst:
            for k, v in src.attrs.items():
                if not (case == "no_attrs" and k == "patch_size"):
                    dst.attrs[k] = v
            n = 0 if case == "zero" else src["coords"].shape[0]
            dst["coords"] = src["coords"][:n]
            if case != "no_patches":
                dst["patches"] = src["patches"][:n]
            if case == "bad_labels":
                dst["labels"] = np.zeros(n + 1, np.int64)
    expected = {"not_hdf5": "not an HDF5", "no_patches": "missing dataset(s) patches", "zero": "zero patches",
                "no_attrs": "patch_size", "bad_labels": "labels has shape"}[case]
    with pytest.raises(PathouccError) as err:
        open_tiles(path)
    assert path.name in str(err.value) and expected in str(err.value)
