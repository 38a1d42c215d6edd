"""`pathoucc tile --geojson` with count-only regions (issue 8), and dense windows that keep unknown patches out."""

import json

import numpy as np
import pytest
import shapely
from helpers import run_tile
from PIL import Image
from slide_fixtures import CELL, MARGIN

from pathoucc.slides.tilefile import open_tiles
from pathoucc.slides.tiler import tile_slide


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(rings, kind="Polygon", **props):
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": rings}, "properties": props}


def write(folder, features, name="digits.geojson"):
    path = folder / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


REGIONS = [
    feature([square(256, 256, 512, 512), square(320, 320, 448, 448)], ucc=2, name="ring"),  # 64 - 16 patches
    feature([[square(512, 256, 768, 384)], [square(512, 640, 768, 768)]], "MultiPolygon", ucc=3),  # 32 + 32
    feature([[[256, 520], [500, 530], [480, 760], [270, 740], [256, 520]]], classes=["a", "b"], name="tri"),
    feature([square(0, 0, 200, 200)], ucc=1, name="glass"),  # white margin: no tissue
    feature([square(2000, 2000, 2100, 2100)], ucc=1, name="elsewhere"),  # off the slide
    feature([square(600, 420, 700, 600)], measurements=[{"name": "ucc", "value": 1.0}]),  # QuPath measurement
]


def _tile_regions(digit_slide: dict, geojson, out):
    """``pathoucc tile`` of the digit slide at level 0 with count-only regions and the classes a, b, c."""
    return run_tile(digit_slide["slide"], "--out", out, "--patch-size", CELL, "--level", 0, "--geojson", geojson,
                    "--classes", "a,b,c")


def test_cli_count_only_regions_become_bags(digit_slide, tmp_path):
    geojson = write(tmp_path, REGIONS)
    out = tmp_path / "tiles"
    proc = _tile_regions(digit_slide, geojson, out)
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: digits.tif: digits.geojson: ") for w in warnings)
    assert 'feature 3 "glass" contains no tissue' in warnings[0] and 'feature 4 "elsewhere" lies outside' in warnings[1]
    assert warnings[2].endswith("2 of 6 regions skipped, 4 give bags")
    tiles = open_tiles(out / "digits.h5")
    assert tiles.num_patches == 256 and tiles.class_names == ["a", "b", "c"] and (tiles.labels == -1).all()
    assert tiles.region_count.tolist() == [2, 3, 2, 1]  # the features' counts, for the regions with tissue
    centres = tiles.coords + CELL / 2
    expected = np.full(tiles.num_patches, -1)
    for r, k in enumerate([0, 1, 2, 5]):
        rings = REGIONS[k]["geometry"]["coordinates"]
        geom = shapely.Polygon(rings[0], rings[1:]) if REGIONS[k]["geometry"]["type"] == "Polygon" else \
            shapely.MultiPolygon([shapely.Polygon(p[0], p[1:]) for p in rings])
        expected[shapely.contains_xy(geom, centres[:, 0], centres[:, 1])] = r
    np.testing.assert_array_equal(tiles.region, expected)
    assert np.bincount(tiles.region[tiles.region >= 0]).tolist()[:2] == [48, 64]
    assert (tiles.region == -1).sum() > 0  # patches outside every region are in no bag
    np.testing.assert_array_equal(tiles.region_boxes[0], [256, 256, 256, 256])
    import h5py

    with h5py.File(out / "digits.h5") as f:
        assert f["regions/feature"][()].tolist() == [0, 1, 2, 5]


def _bad(case, tmp_path):
    ring = square(256, 256, 512, 512)
    features = {
        "ucc_zero": [feature([ring], ucc=0, name="zero")],
        "ucc_text": [feature([ring], ucc="2")],
        "ucc_fraction": [feature([ring], ucc=2.5)],
        "ucc_above_classes": [feature([ring], ucc=4, name="many")],
        "unknown_class": [feature([ring], classes=["a", "mucus"], name="m")],
        "not_closed": [feature([ring[:-1]], ucc=1)],
        "bow_tie": [feature([[[300, 300], [500, 500], [500, 300], [300, 500], [300, 300]]], ucc=1)],
        "off_slide": [feature([square(5000, 5000, 5100, 5100)], ucc=1, name="far")],
        "fewer_patches": [feature([square(256, 256, 320, 288)], ucc=3, name="small")],  # 2 patches
        "mixed": [feature([ring], ucc=1), feature([square(600, 600, 700, 700)], classification={"name": "a"})],
        "overlap": [feature([ring], ucc=1, name="A"), feature([square(480, 480, 600, 600)], ucc=1, name="B")],
    }[case]
    return write(tmp_path, features)


@pytest.mark.parametrize("case, words", [
    ("ucc_zero", 'feature 0 "zero": ucc must be a positive integer'),
    ("ucc_text", "feature 0: ucc must be a positive integer"),
    ("ucc_fraction", "feature 0: ucc must be a positive integer, got 2.5"),
    ("ucc_above_classes", 'feature 0 "many": ucc 4 is larger than the 3 classes'),
    ("unknown_class", "classes 'mucus' not among the run's classes"),
    ("not_closed", "feature 0: ring 0 is not closed"),
    ("bow_tie", "feature 0: geometry is not valid"),
    ("off_slide", "no count region overlaps the slide"),
    ("fewer_patches", 'none of the 1 count regions gives a bag of digits.tif'),
    ("mixed", "mixes count-only regions (feature 0 has a ucc/classes count) and dense class polygons (feature 1"),
    ("overlap", 'feature 0 "A" and feature 1 "B" overlap'),
])
def test_cli_bad_count_regions_are_one_line_and_write_nothing(digit_slide, tmp_path, case, words):
    geojson = _bad(case, tmp_path)
    out = tmp_path / "out"
    proc = _tile_regions(digit_slide, geojson, out)
    assert proc.returncode == 2, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {geojson}: ") and "Traceback" not in proc.stderr
    assert words in lines[0]
    assert not out.exists() or not list(out.iterdir())  # nothing half-written (not even the tissue PNG)


def test_region_with_fewer_patches_than_its_count_is_a_counted_skip(digit_slide, tmp_path):
    small = feature([square(600, 256, 664, 288)], ucc=3, name="small")  # 2 patches cannot show 3 classes
    geojson = write(tmp_path, [small, REGIONS[0]])
    proc = run_tile(digit_slide["slide"], "--out", tmp_path / "tiles", "--patch-size", CELL, "--level", 0,
                    "--geojson", geojson, "--classes", "a,b,c")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        'warning: digits.tif: digits.geojson: feature 0 "small" holds 2 tissue patch(es) but has ucc 3 (a bag '
        "cannot show more classes than it has patches); skipped",
        "warning: digits.tif: digits.geojson: 1 of 2 regions skipped, 1 give bags"]
    tiles = open_tiles(tmp_path / "tiles" / "digits.h5")
    assert tiles.region_count.tolist() == [2] and (tiles.region == 0).sum() == 48


def test_integer_classes_index_the_run_classes(digit_slide, tmp_path):
    geojson = write(tmp_path, [feature([square(256, 256, 512, 512)], classes=[0, 2])])
    proc = run_tile(digit_slide["slide"], "--out", tmp_path / "tiles", "--patch-size", CELL, "--level", 0,
                    "--geojson", geojson, "--classes", "a,b,c")
    assert proc.returncode == 0, proc.stderr
    assert open_tiles(tmp_path / "tiles" / "digits.h5").region_count.tolist() == [2]
    mixed = write(tmp_path, [feature([square(256, 256, 512, 512)], classes=[0, "b"], name="m")], "mixed.geojson")
    proc = run_tile(digit_slide["slide"], "--out", tmp_path / "bad", "--patch-size", CELL, "--level", 0,
                    "--geojson", mixed, "--classes", "a,b,c")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f'error: {mixed}: feature 0 "m": classes mixes class names and integers ([0, "b"]); give all names or all '
        "indices"]


def test_deep_geojson_is_a_one_line_cli_error(digit_slide, tmp_path):
    deep = tmp_path / "deep.geojson"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    proc = run_tile(digit_slide["slide"], "--out", tmp_path / "tiles", "--patch-size", CELL, "--level", 0,
                    "--geojson", deep)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {deep}: JSON is nested too deeply to be GeoJSON (thousands "
                                                "of levels of lists or objects)"]


def test_geojson_folder_and_several_slides(digit_slide, tmp_path):
    folder = tmp_path / "annotations"
    folder.mkdir()
    write(folder, REGIONS[:1])
    proc = run_tile(digit_slide["slide"], "--out", tmp_path / "tiles", "--patch-size", CELL, "--level", 0,
                    "--geojson", folder)
    assert proc.returncode == 0, proc.stderr
    assert open_tiles(tmp_path / "tiles" / "digits.h5").region_count.tolist() == [2]


def test_dense_windows_hold_only_labelled_patches(digit_slide, tmp_path):
    """A mask that leaves tissue unlabelled: those patches are in no bag, and each bag's count is its own."""
    mask = np.asarray(Image.open(digit_slide["mask"])).copy()
    mask[MARGIN:MARGIN + 3 * CELL, MARGIN:MARGIN + 5 * CELL] = 0  # 15 digit cells of the first window unlabelled
    partial = tmp_path / "partial_mask.png"
    Image.fromarray(mask).save(partial)
    tiles = open_tiles(tile_slide(digit_slide["slide"], tmp_path, patch_size=CELL, level=0, region_size=256,
                                  annotations=partial))
    unknown = tiles.labels < 0
    assert unknown.sum() == 15 and (tiles.region[unknown] == -1).all()
    assert (tiles.region[~unknown] >= 0).all()
    for r in range(tiles.num_regions):
        assert tiles.region_count[r] == len(np.unique(tiles.labels[tiles.region == r]))
    assert np.bincount(tiles.region[tiles.region >= 0]).tolist() == [64 - 15, 64, 64, 64]


def test_csv_box_and_geojson_polygon_give_the_same_bag(digit_slide, tmp_path):
    """The centre rule for every format: a rectangle holds the same 48-px patches as a CSV row or a polygon."""
    box = tmp_path / "box.csv"
    box.write_text("slide,x,y,width,height,ucc\ndigits.tif,300,300,200,150,2\n")
    polygon = write(tmp_path, [feature([square(300, 300, 500, 450)], ucc=2)])
    by_csv = open_tiles(tile_slide(digit_slide["slide"], tmp_path / "csv", patch_size=48, level=0,
                                   annotations=box))
    by_geojson = open_tiles(tile_slide(digit_slide["slide"], tmp_path / "geojson", patch_size=48, level=0,
                                       annotations=polygon))
    np.testing.assert_array_equal(by_csv.coords, by_geojson.coords)
    np.testing.assert_array_equal(by_csv.region, by_geojson.region)
    np.testing.assert_array_equal(by_csv.region_boxes, by_geojson.region_boxes)
    centres = by_csv.coords + 24
    inside = (centres[:, 0] > 300) & (centres[:, 0] < 500) & (centres[:, 1] > 300) & (centres[:, 1] < 450)
    np.testing.assert_array_equal(by_csv.region, np.where(inside, 0, -1))
    assert by_csv.region_count.tolist() == [2] and inside.sum() == 12  # 4 x 3 centres; 3 x 2 lie wholly inside
