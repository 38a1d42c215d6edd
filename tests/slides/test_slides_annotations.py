import json

import numpy as np
import pytest
import shapely
from PIL import Image

from pathoucc.errors import PathouccError
from pathoucc.slides.annotations.assign import CountRegion, assign_patches, grid_regions, region_bags, region_counts
from pathoucc.slides.annotations.csv import read_regions_csv
from pathoucc.slides.annotations.geojson import read_class_raster
from pathoucc.slides.annotations.mask import read_label_mask
from pathoucc.slides.annotations.raster import LabelRaster, patch_labels


def _square(x, y, side):
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


def test_label_mask_at_lower_resolution_is_scaled(tmp_path):
    values = np.zeros((50, 80), np.uint8)
    values[10:20, 20:40] = 3  # class 2
    values[30:40, 0:10] = 1  # class 0
    path = tmp_path / "m.png"
    Image.fromarray(values).save(path)
    raster = read_label_mask(path, (800, 500))
    assert raster.downsample == (10.0, 10.0)
    assert raster.class_names == ["0", "1", "2"]
    coords = np.array([[200, 100], [300, 150], [0, 300], [600, 400], [190, 100]])
    labels = patch_labels(raster, coords, extent=100)
    np.testing.assert_array_equal(labels, [2, 2, 0, -1, 2])  # the last is 90 % class 2
    half = patch_labels(raster, np.array([[150, 100]]), extent=100)  # 50 % class 2 -> coverage 0.5 is enough
    assert half[0] == 2
    assert patch_labels(raster, np.array([[140, 100]]), extent=100)[0] == -1  # 40 % < 50 %
    raw = read_label_mask(path, (800, 500), zero_is_background=False)
    assert raw.class_names == ["0", "1", "2", "3"] and raw.labels[0, 0] == 0


def test_label_mask_errors(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.full((50, 80), 4, np.uint8)).save(path)
    with pytest.raises(PathouccError, match="aspect ratio") as err:
        read_label_mask(path, (800, 800))
    assert "m.png" in str(err.value)
    with pytest.raises(PathouccError, match="only 2 classes"):
        read_label_mask(path, (800, 500), classes=["a", "b"])
    Image.fromarray(np.zeros((50, 80), np.uint8)).save(path)
    with pytest.raises(PathouccError, match="do not overlap"):
        read_label_mask(path, (800, 500))
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((50, 80, 3), np.uint8)).save(rgb)
    with pytest.raises(PathouccError, match="single-channel"):
        read_label_mask(rgb, (800, 500))


def _qupath(features):
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": geometry, "properties": {"objectType": "annotation",
                                                                 "classification": {"name": name, "color": [1, 2, 3]}}}
        for name, geometry in features]}


def test_geojson_is_rasterised_with_class_names(tmp_path):
    path = tmp_path / "a.geojson"
    features = [
        ("Tumor", {"type": "Polygon", "coordinates": [_square(0, 0, 400), _square(100, 100, 100)]}),  # with a hole
        ("Stroma", {"type": "MultiPolygon", "coordinates": [[_square(600, 0, 200)], [_square(600, 400, 200)]]}),
    ]
    data = _qupath(features)
    data["features"].append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
                             "properties": {"classification": {"name": "Other"}}})
    data["features"].append({"type": "Feature", "properties": {},  # unclassified: ignored
                             "geometry": {"type": "Polygon", "coordinates": [_square(0, 500, 100)]}})
    path.write_text(json.dumps(data))
    raster = read_class_raster(path, (800, 600), downsample=4)
    assert raster.class_names == ["Stroma", "Tumor"]  # the Point's class has no area
    tumor, stroma = raster.class_names.index("Tumor"), raster.class_names.index("Stroma")
    coords = np.array([[0, 0], [120, 120], [600, 0], [650, 450], [300, 500], [0, 500]])
    np.testing.assert_array_equal(patch_labels(raster, coords, 50), [tumor, -1, stroma, stroma, -1, -1])
    named = read_class_raster(path, (800, 600), classes=["Stroma", "Tumor", "Other"], downsample=4)
    assert named.class_names == ["Stroma", "Tumor", "Other"]
    np.testing.assert_array_equal(patch_labels(named, coords[:3], 50), [1, -1, 0])
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(data["features"][:2]))
    np.testing.assert_array_equal(read_class_raster(as_list, (800, 600), downsample=4).labels, raster.labels)


def test_geojson_errors(tmp_path):
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(_qupath([("Tumor", {"type": "Polygon", "coordinates": [_square(10, 10, 50)]}),
                                        ("Necrosis", {"type": "Polygon", "coordinates": [_square(90, 10, 50)]})])))
    with pytest.raises(PathouccError, match="'Necrosis' is not one of") as err:
        read_class_raster(path, (800, 600), classes=["Tumor", "Stroma"])
    assert "a.geojson" in str(err.value)
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps(_qupath([("Tumor", {"type": "Polygon", "coordinates": [_square(5000, 10, 50)]})])))
    with pytest.raises(PathouccError, match="no annotation overlaps") as err:
        read_class_raster(far, (800, 600))
    assert "far.geojson" in str(err.value)
    broken = tmp_path / "broken.geojson"
    broken.write_text("{not json")
    with pytest.raises(PathouccError, match="not valid JSON"):
        read_class_raster(broken, (800, 600))


def _boxes(regions):
    return [[int(v) for v in (x0, y0, x1 - x0, y1 - y0)] for x0, y0, x1, y1 in (r.geometry.bounds for r in regions)]


def test_regions_csv_rows_are_matched_by_slide_name(tmp_path):
    path = tmp_path / "regions.csv"
    path.write_text("slide,x,y,width,height,ucc\n"
                    "a.svs,0,0,100,100,2\n"
                    "b.svs,0,0,50,50,1\n"
                    "/data/a.svs,100,0,100,100,3\n"
                    "a,0,100,100,100,1\n")
    regions = read_regions_csv(path, "/somewhere/a.svs")
    assert _boxes(regions) == [[0, 0, 100, 100], [100, 0, 100, 100], [0, 100, 100, 100]]
    assert [(r.ucc, r.label) for r in regions] == [(2, "line 2"), (3, "line 4"), (1, "line 5")]
    with pytest.raises(PathouccError, match=r"no rows for slide c\.svs"):
        read_regions_csv(path, "c.svs")
    far = _write(tmp_path / "far.csv", "slide,x,y,width,height,ucc\nb.svs,500,500,10,10,1\n")
    with pytest.raises(PathouccError, match="no count region overlaps the slide") as err:
        region_bags(read_regions_csv(far, "b.svs"), np.zeros((1, 2)), 10, (100, 100), far, "b.svs")
    assert "far.csv" in str(err.value)
    bad = _write(tmp_path / "bad.csv", "slide,x,y,w,h\na.svs,0,0,1,1\n")
    with pytest.raises(PathouccError, match="lacks column"):
        read_regions_csv(bad, "a.svs")
    for value in ("zero", "inf", "nan"):
        bad = _write(tmp_path / "bad2.csv", f"slide,x,y,width,height,ucc\na.svs,{value},0,1,1,1\n")
        with pytest.raises(PathouccError, match="line 2: x, y, width, height, ucc must be numbers"):
            read_regions_csv(bad, "a.svs")


def _write(path, text):
    path.write_text(text)
    return path


def test_grid_regions_and_ucc():
    # 32-px patches, 64-px regions, level 0: a patch belongs to the window holding its centre
    positions = np.array([[0, 0], [32, 0], [64, 0], [0, 32], [96, 96], [48, 0], [16, 0]])
    region, boxes = grid_regions(positions, 32, 64, 1.0, (150, 150))
    # (48, 0): centre 64 lies on the border -> no window; (16, 0): centre 32 -> the first window
    np.testing.assert_array_equal(region, [0, 0, 1, 0, 2, -1, 0])
    np.testing.assert_array_equal(boxes, [[0, 0, 64, 64], [64, 0, 64, 64], [64, 64, 64, 64]])
    labels = np.array([3, 5, 1, -1, 2, 7, 9])
    np.testing.assert_array_equal(region_counts(labels, region, 3), [3, 1, 1])
    # at downsample 2 the boxes are in level-0 pixels and clipped to the slide
    region, boxes = grid_regions(positions, 32, 64, 2.0, (200, 150))
    np.testing.assert_array_equal(boxes[-1], [128, 128, 72, 22])


def test_one_rule_for_windows_boxes_and_polygons():
    """The same rectangle holds the same patches as a dense window, a CSV box and a GeoJSON polygon."""
    rng = np.random.default_rng(0)
    positions = rng.integers(0, 200, size=(400, 2)) * 2  # even output-level top-lefts, 24-px patches
    region, boxes = grid_regions(positions, 24, 64, 1.0, (1000, 1000))
    as_boxes = [CountRegion(k, None, 1, None, shapely.box(x, y, x + w, y + h), unit="line")
                for k, (x, y, w, h) in enumerate(boxes)]
    index, _ = assign_patches(as_boxes, positions, 24)
    np.testing.assert_array_equal(index, region)
    assert (region == -1).sum() > 0 and (region >= 0).sum() > 300  # border centres are out, the rest in


def test_csv_boxes_take_patches_by_centre_and_overlaps_are_refused(tmp_path):
    path = _write(tmp_path / "r.csv", "slide,x,y,width,height,ucc\na,0,0,100,100,1\na,200,0,100,100,1\n")
    regions = read_regions_csv(path, "a.tif")
    coords = np.array([[0, 0], [85, 0], [89, 0], [91, 0], [-9, 0], [190, 0], [195, 0], [200, 200]])  # 20-px patches
    index, _ = assign_patches(regions, coords, 20)
    # centres x 10, 95, 99 in the first box (a patch 9 px over its edge too), 101 out, 1 in, 200 on the border, 205 in
    assert index.tolist() == [0, 0, 0, -1, 0, -1, 1, -1]
    overlap = _write(tmp_path / "o.csv", "slide,x,y,width,height,ucc\na,0,0,100,100,1\na,40,0,100,100,1\n")
    with pytest.raises(PathouccError, match="line 2 and line 3 overlap: 2 patch centre") as err:
        assign_patches(read_regions_csv(overlap, "a.tif"), coords, 20, path=overlap)
    assert "QuPath" not in str(err.value)


def test_patch_labels_majority():
    labels = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [-1, -1, 2, 2], [-1, -1, 2, 2]], np.int16)
    raster = LabelRaster(labels, (1.0, 1.0), ["a", "b", "c"], source=None)
    out = patch_labels(raster, np.array([[0, 0], [2, 0], [0, 2], [1, 1], [2, 2]]), extent=2)
    np.testing.assert_array_equal(out, [0, 1, -1, 1, 2])
