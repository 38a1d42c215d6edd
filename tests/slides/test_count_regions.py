"""Count-only polygon regions from QuPath GeoJSON: reading, checks, and patch assignment by centre."""

import json
import shutil

import numpy as np
import pytest
import shapely
from helpers import ASSETS

from pathoucc.errors import PathouccError
from pathoucc.slides.annotations.assign import (
    CountRegion,
    assign_patches,
    region_bags,
    regions_off_slide,
    skipped_regions,
)
from pathoucc.slides.annotations.geojson import (
    is_class_feature,
    is_count_feature,
    load_features,
    read_count_regions,
    split_features,
)

DATA = ASSETS


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(coords, geometry_type="Polygon", **props):
    return {"type": "Feature", "geometry": {"type": geometry_type, "coordinates": coords}, "properties": props}


def write(tmp_path, features, name="regions.geojson", collection=True):
    path = tmp_path / name
    data = {"type": "FeatureCollection", "features": features} if collection else features
    path.write_text(json.dumps(data))
    return path


def grid(step=32, size=512):
    """Top-left level-0 (x, y) of a size x size slide tiled with step x step patches, (N, 2)."""
    ys, xs = np.mgrid[0:size:step, 0:size:step]
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def test_qupath_export_is_read(tmp_path):
    """tests/assets/regions_qupath.geojson: a QuPath-style list export with every accepted way to give a count."""
    path = tmp_path / "regions_qupath.geojson"
    shutil.copy(DATA / "regions_qupath.geojson", path)
    regions = read_count_regions(path, ["tumour", "stroma", "lymphocytes", "fat"], max_ucc=4)
    assert [(r.index, r.name, r.ucc, r.classes) for r in regions] == [
        (0, "gland with lumen", 2, None),
        (1, "two islands", 1, None),
        (2, "tumour and stroma", 2, ("tumour", "stroma")),
        (3, None, 3, None),
    ]
    assert isinstance(regions[1].geometry, shapely.MultiPolygon) and len(regions[1].geometry.geoms) == 2
    assert len(regions[0].geometry.interiors) == 1
    assert all(isinstance(r, CountRegion) for r in regions)
    with pytest.raises(AttributeError):
        regions[0].ucc = 5  # frozen


def test_polygon_with_hole_excludes_patches_in_the_hole(tmp_path):
    ring = square(0, 0, 256, 256)
    hole = square(64, 64, 192, 192)
    path = write(tmp_path, [feature([ring, hole], ucc=2)])
    regions = read_count_regions(path, None, None)
    coords = grid()
    index, ucc = assign_patches(regions, coords, 32)
    centres = coords + 16
    in_ring = (centres < 256).all(axis=1)
    in_hole = ((centres > 64) & (centres < 192)).all(axis=1)
    np.testing.assert_array_equal(index, np.where(in_ring & ~in_hole, 0, -1))
    assert index.dtype == np.int64 and ucc.dtype == np.int64 and ucc.tolist() == [2]
    assert (index == 0).sum() == 64 - 16


def test_multipolygon_parts_make_one_bag(tmp_path):
    parts = [[square(0, 0, 64, 64)], [square(256, 256, 320, 384)]]
    path = write(tmp_path, [feature(parts, "MultiPolygon", ucc=1, name="islands")], collection=False)
    (region,) = read_count_regions(path, None, None)
    index, ucc = assign_patches([region], grid(), 32)
    assert (index == 0).sum() == 4 + 8 and ucc.tolist() == [1]


def test_centre_decides_membership_and_coords_are_top_left():
    region = CountRegion(0, None, 1, None, shapely.box(0, 0, 100, 100))
    coords = np.array([[60, 60], [70, 70], [84, 0], [85, 0], [-16, 50], [-17, 50]])
    index, _ = assign_patches([region], coords, 30)  # centres 75, 85, 99, 100 (boundary), -1, -2
    assert index.tolist() == [0, 0, 0, -1, -1, -1]


def test_classes_list_counts_distinct_names(tmp_path):
    path = write(tmp_path, [feature([square(0, 0, 10, 10)], classes=["tumour", "stroma", "tumour"])])
    (region,) = read_count_regions(path, ["stroma", "tumour", "fat"], None)
    assert region.ucc == 2 and region.classes == ("tumour", "stroma")


@pytest.mark.parametrize("measurements", [{"ucc": 3.0, "area": 1.5},
                                          [{"name": "area", "value": 1.5}, {"name": "ucc", "value": 3}]])
def test_ucc_as_a_qupath_measurement(tmp_path, measurements):
    path = write(tmp_path, [feature([square(0, 0, 10, 10)], measurements=measurements,
                                    classification={"name": "Region*"})])
    (region,) = read_count_regions(path, None, None)
    assert region.ucc == 3 and isinstance(region.ucc, int)


def test_kinds_of_features_and_mixed_files_are_refused(tmp_path):
    count = feature([square(0, 0, 10, 10)], ucc=1, name="a")
    dense = feature([square(0, 0, 10, 10)], classification={"name": "tumour"}, name="b")
    plain = feature([square(0, 0, 10, 10)])
    assert is_count_feature(count) and not is_class_feature(count)
    assert is_class_feature(dense) and not is_count_feature(dense)
    assert not is_count_feature(plain) and not is_class_feature(plain)
    assert is_count_feature(feature([], measurements=[{"name": "ucc", "value": 1}]))
    assert split_features([plain, count, dense][:2], "f.geojson") == ([(1, count)], [])
    assert split_features([dense, plain], "f.geojson") == ([], [(0, dense)])
    path = write(tmp_path, [plain, dense, count])
    with pytest.raises(PathouccError) as err:
        split_features(load_features(path), path)
    message = str(err.value)
    assert str(path) in message and 'feature 2 "a"' in message and 'feature 1 "b"' in message
    with pytest.raises(PathouccError, match="mixes count-only regions"):
        read_count_regions(path, None, None)
    only_dense = write(tmp_path, [dense], "dense.geojson")
    with pytest.raises(PathouccError, match="no count-only regions"):
        read_count_regions(only_dense, None, None)


def test_overlapping_regions_sharing_a_patch_are_refused(tmp_path):
    outer = feature([square(0, 0, 256, 256)], ucc=3, name="outer")
    inner = feature([square(64, 64, 128, 128)], ucc=1, name="inner")
    path = write(tmp_path, [outer, inner])
    regions = read_count_regions(path, None, None)
    with pytest.raises(PathouccError) as err:
        assign_patches(regions, grid(), 32, path=path)
    message = str(err.value)
    assert str(path) in message and 'feature 0 "outer"' in message and 'feature 1 "inner"' in message
    assert "4 patch centre(s) lie in both" in message
    # polygons that overlap by a sliver holding no patch centre are fine
    touching = [CountRegion(0, None, 1, None, shapely.box(0, 0, 130, 64)),
                CountRegion(1, None, 1, None, shapely.box(126, 0, 256, 64))]
    index, _ = assign_patches(touching, grid(), 32)
    assert (index == 0).sum() == 8 and (index == 1).sum() == 8


def test_regions_without_enough_patches_are_skipped_with_a_note_each_and_a_total(tmp_path):
    path = write(tmp_path, [feature([square(0, 0, 128, 128)], ucc=2, name="big"),
                            feature([square(1000, 1000, 1100, 1100)], ucc=1, name="glass"),
                            feature([square(256, 0, 320, 32)], ucc=3, name="tiny"),
                            feature([square(256, 256, 384, 384)], ucc=1)])
    regions = read_count_regions(path, None, None)
    index, _ = assign_patches(regions, grid(), 32)
    skipped = skipped_regions(regions, index)
    assert sorted(skipped) == [1, 2] and skipped[1] == "contains no tissue patch centre"
    assert skipped[2].startswith("holds 2 tissue patch(es) but has ucc 3")
    bags = region_bags(regions, grid(), 32, (1200, 1200), path, "slide.tif")
    assert bags.ucc.tolist() == [2, 1] and bags.index.tolist() == [0, 3]
    assert np.bincount(bags.region[bags.region >= 0]).tolist() == [16, 16]
    assert (bags.region[index == 2] == -1).all()  # the tiny region's 2 patches are in no bag
    assert bags.notes == ['regions.geojson: feature 1 "glass" contains no tissue patch centre; skipped',
                          'regions.geojson: feature 2 "tiny" holds 2 tissue patch(es) but has ucc 3 (a bag cannot '
                          'show more classes than it has patches); skipped',
                          "regions.geojson: 2 of 4 regions skipped, 2 give bags"]
    with pytest.raises(PathouccError, match=r'none of the 2 count regions gives a bag of slide\.tif .*: feature 1 '):
        region_bags(regions[1:3], grid(), 32, (1200, 1200), path, "slide.tif")
    assert skipped_regions(regions, np.full(5, -1)).keys() == {0, 1, 2, 3}


def test_regions_off_the_slide(tmp_path):
    path = write(tmp_path, [feature([square(0, 0, 10, 10)], ucc=1), feature([square(900, 900, 990, 990)], ucc=1)])
    regions = read_count_regions(path, None, None)
    assert regions_off_slide(regions, (500, 400), path) == [1]
    with pytest.raises(PathouccError, match="no count region overlaps the slide") as err:
        regions_off_slide(regions[1:], (500, 400), path)
    assert str(path) in str(err.value) and "500x400" in str(err.value)


HOLE_OPEN = [[0, 0], [10, 0], [10, 10], [0, 10]]
BOWTIE = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]


@pytest.mark.parametrize(("props", "geometry", "problem"), [
    ({"ucc": 0}, None, "ucc must be a positive integer, got 0"),
    ({"ucc": -1}, None, "ucc must be a positive integer, got -1"),
    ({"ucc": 2.5}, None, "ucc must be a positive integer, got 2.5"),
    ({"ucc": True}, None, "ucc must be a positive integer, got true (bool)"),
    ({"ucc": "2"}, None, 'ucc must be a positive integer, got "2" (str)'),
    ({"ucc": None}, None, "ucc must be a positive integer, got null"),
    ({"measurements": {"ucc": float("nan")}}, None, "measurement ucc must be a positive integer, got nan"),
    ({"ucc": 5}, None, "ucc 5 is larger than the 4 classes the run can count"),
    ({"classes": ["tumour", "bone"]}, None, "classes 'bone' not among the run's classes"),
    ({"classes": []}, None, "classes must be a non-empty list of class names"),
    ({"classes": "tumour"}, None, "classes must be a non-empty list of class names"),
    ({"ucc": 1, "classes": ["tumour", "stroma"]}, None, "counts disagree: ucc gives 1, classes gives 2"),
    ({"ucc": 2, "measurements": [{"name": "ucc", "value": 3}]}, None, "ucc gives 2, measurement ucc gives 3"),
    ({"ucc": 1}, {"type": "Polygon", "coordinates": [HOLE_OPEN]}, "ring 0 is not closed: first point (0, 0)"),
    ({"ucc": 1}, {"type": "Polygon", "coordinates": [square(0, 0, 50, 50), HOLE_OPEN]}, "ring 1 is not closed"),
    ({"ucc": 1}, {"type": "MultiPolygon", "coordinates": [[square(0, 0, 5, 5)], [HOLE_OPEN]]},
     "polygon 1 ring 0 is not closed"),
    ({"ucc": 1}, {"type": "Polygon", "coordinates": [BOWTIE]}, "geometry is not valid (Self-intersection"),
    ({"ucc": 1}, {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}, "has 3 points"),
    ({"ucc": 1}, {"type": "Polygon", "coordinates": [["a", "b"]]}, "ring 0 is not a list of [x, y] points"),
    ({"ucc": 1}, {"type": "Point", "coordinates": [1, 2]}, "geometry is a Point; a count region must be a Polygon"),
    ({"ucc": 1}, {"type": "LineString", "coordinates": [[1, 2], [3, 4]]}, "geometry is a LineString"),
    ({"ucc": 1}, "none", "has no geometry"),
])
@pytest.mark.parametrize("name", ["bad one", None])
def test_bad_feature_names_file_and_feature(tmp_path, props, geometry, problem, name):
    good = feature([square(0, 0, 10, 10)], ucc=1, name="fine")
    bad = feature([square(0, 0, 10, 10)], **props)
    if name is not None:
        bad["properties"]["name"] = name
    if geometry == "none":
        bad["geometry"] = None
    elif geometry is not None:
        bad["geometry"] = geometry
    path = write(tmp_path, [good, {"type": "Feature", "geometry": None, "properties": {}}, bad])
    with pytest.raises(PathouccError) as err:
        read_count_regions(path, ["tumour", "stroma", "fat", "lymphocytes"], 4)
    message = str(err.value)
    label = 'feature 2 "bad one"' if name else "feature 2"
    assert message.startswith(f"{path}: {label}: "), message
    assert problem in message
    assert "\n" not in message


def test_max_ucc_defaults_to_the_number_of_classes(tmp_path):
    path = write(tmp_path, [feature([square(0, 0, 10, 10)], ucc=3.0)])
    assert read_count_regions(path, None, None)[0].ucc == 3  # 3.0 is read as 3
    assert read_count_regions(path, None, 3)[0].ucc == 3
    with pytest.raises(PathouccError, match="ucc 3 is larger than the 2 classes"):
        read_count_regions(path, ["a", "b"], None)


@pytest.mark.parametrize(("text", "problem"), [
    ("{not json", "not valid JSON"),
    ('{"type": "Topology"}', "not a GeoJSON FeatureCollection"),
    ('{"type": "FeatureCollection", "features": {}}', "not a GeoJSON FeatureCollection"),
    ('[1, 2]', "feature 0 is not a GeoJSON Feature"),
    ("", "not valid JSON"),
])
def test_unreadable_files(tmp_path, text, problem):
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(PathouccError, match=problem) as err:
        read_count_regions(path, None, None)
    assert str(path) in str(err.value)
    with pytest.raises(PathouccError, match="GeoJSON file not found"):
        read_count_regions(tmp_path / "missing.geojson", None, None)


def test_single_feature_file_and_z_coordinates(tmp_path):
    path = tmp_path / "one.geojson"
    path.write_text(json.dumps(feature([[[0, 0, 0], [8, 0, 0], [8, 8, 0], [0, 8, 0], [0, 0, 0]]], ucc=1)))
    (region,) = read_count_regions(path, None, None)
    assert region.geometry.area == 64 and not region.geometry.has_z


@pytest.mark.parametrize(("classes", "run_classes", "expected"), [
    ([1, 7, 9, 7], None, ("1", "7", "9")),  # integers without the run's classes are names
    ([0, 2], ["tumour", "stroma", "fat"], ("tumour", "fat")),  # with them, indices into them
    (["7", "1"], ["0", "1", "7"], ("7", "1")),
])
def test_integer_classes_are_names_or_indices(tmp_path, classes, run_classes, expected):
    path = write(tmp_path, [feature([square(0, 0, 10, 10)], classes=classes)])
    (region,) = read_count_regions(path, run_classes, None)
    assert region.classes == expected and region.ucc == len(expected)


@pytest.mark.parametrize(("classes", "run_classes", "problem"), [
    ([1, "stroma"], None, 'feature 0: classes mixes class names and integers ([1, "stroma"]); give all names or'),
    ([0, 3], ["a", "b", "c"], "feature 0: class index 3 is out of range: the run has 3 classes (indices 0..2 of"),
    ([-1, 2], None, "feature 0: classes has the negative class index -1"),
    ([1, None], None, "feature 0: classes must be a non-empty list of class names, got [1, null]"),
    ([True, 2], None, "feature 0: classes must be a non-empty list of class names"),
])
def test_bad_integer_classes_are_one_line_errors(tmp_path, classes, run_classes, problem):
    path = write(tmp_path, [feature([square(0, 0, 10, 10)], classes=classes)])
    with pytest.raises(PathouccError) as err:
        read_count_regions(path, run_classes, None)
    assert str(err.value).startswith(f"{path}: {problem}") and "\n" not in str(err.value)


def test_deeply_nested_json_is_aone_line_error(tmp_path):
    path = tmp_path / "deep.geojson"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(PathouccError, match="nested too deeply") as err:
        read_count_regions(path, None, None)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_long_bad_values_are_quoted_short(tmp_path):
    path = write(tmp_path, [feature([square(0, 0, 10, 10)], ucc="x" * 100_000)])
    with pytest.raises(PathouccError, match="ucc must be a positive integer") as err:
        read_count_regions(path, None, None)
    assert len(str(err.value)) < 300
