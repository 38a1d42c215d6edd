"""Labelled examples: QuPath GeoJSON points/polygons and slide,x,y,class CSV -> the class of each tissue patch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pathoucc.errors import PathouccError
from pathoucc.slides.annotations.examples import class_list, example_slide, label_examples, read_examples

# a 4 x 4 grid of 100 px patches at level 0 (0..400 px); the patch at column c, row r is row 4 r + c
COORDS = np.array([(x, y) for y in range(0, 400, 100) for x in range(0, 400, 100)], np.int64)
SLIDE = Path("slides/case1.svs")


def qupath(features: list[dict], path: Path) -> Path:
    """A QuPath-style export: a plain JSON list of features (QuPath's default)."""
    path.write_text(json.dumps(features))
    return path


def point(x: float, y: float, cls: str | None, **props) -> dict:
    classification = {"classification": {"name": cls, "color": [200, 0, 0]}} if cls else {}
    return {"type": "Feature", "id": "p", "geometry": {"type": "Point", "coordinates": [x, y]},
            "properties": {"objectType": "annotation", **classification, **props}}


def square(x0: float, y0: float, x1: float, y1: float, cls: str, **props) -> dict:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": cls}, **props}}


def test_points_and_polygons_label_patches_by_the_centre_rule(tmp_path: Path) -> None:
    path = qupath([point(150, 50, "Tumor"),  # in patch (100, 0) = row 1
                   {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[10, 390], [390, 390]]},
                    "properties": {"classification": {"name": "Stroma"}}},  # rows 12 and 15
                   square(190, 190, 360, 310, "Necrosis"),  # centres (250, 250) and (350, 250): rows 10, 11
                   square(0, 0, 400, 400, "ignored", ucc=2),  # a count region in the same export: not an example
                   point(5, 5, None)], tmp_path / "case1.geojson")  # unclassified: ignored
    examples = read_examples(path, ["case1"])
    assert [e.name for e in examples] == ["Tumor", "Stroma", "Stroma", "Necrosis"]
    assert {e.slide for e in examples} == {"case1"}
    classes = class_list(examples, None, path)
    assert classes == ["Tumor", "Stroma", "Necrosis"]
    got = label_examples(examples, classes, COORDS, 100, SLIDE, path)
    expected = np.full(16, -1)
    expected[[1, 12, 15, 10, 11]] = [0, 1, 1, 2, 2]
    np.testing.assert_array_equal(got.labels, expected)
    assert got.skipped == 0 and got.notes == []
    # another slide: the file names case1, so it labels nothing there
    other = read_examples(path, ["case1", "case2"])
    assert label_examples(other, classes, COORDS, 100, Path("case2.svs"), path).labels.max() == -1


def test_a_point_in_overlapping_patches_labels_the_nearest_centre_only(tmp_path: Path) -> None:
    coords = np.array([[0, 0], [50, 0], [100, 0]], np.int64)  # stride 50, patch 100
    examples = read_examples_csv_rows(["case1,120,40,a"], tmp_path)
    np.testing.assert_array_equal(label_examples(examples, ["a"], coords, 100, SLIDE, "x.csv").labels, [-1, 0, -1])


def read_examples_csv_rows(rows: list[str], folder: Path) -> list:
    path = folder / "examples.csv"
    path.write_text("slide,x,y,class\n" + "\n".join(rows) + "\n")
    return read_examples(path)


def test_csv_rows_belong_to_their_slide_and_points_off_tissue_are_counted_skips(tmp_path: Path) -> None:
    examples = read_examples_csv_rows(["case1.svs,50,50,tumour", "case1,350,350,stroma", "other,50,50,stroma",
                                       "case1,1000,1000,tumour", "case1,-5,20,stroma"], tmp_path)
    got = label_examples(examples, ["tumour", "stroma"], COORDS, 100, SLIDE, tmp_path / "examples.csv")
    assert got.labels[0] == 0 and got.labels[15] == 1 and (got.labels >= 0).sum() == 2
    assert got.skipped == 2 and len(got.notes) == 3
    assert "line 5 (tumour) on case1.svs: the point lies in no tissue patch; skipped" in got.notes[0]
    assert got.notes[-1] == "examples.csv: 2 example(s) on case1.svs label no tissue patch; skipped"


def test_bad_examples_are_one_line_errors(tmp_path: Path) -> None:
    examples = read_examples_csv_rows(["case1,50,50,tumour", "case1,60,60,stroma"], tmp_path)
    with pytest.raises(PathouccError, match=r"line 2 \(tumour\) and line 3 \(stroma\) label the same patch at "
                                            r"\(0, 0\) of case1.svs; a patch has one class") as err:
        label_examples(examples, ["tumour", "stroma"], COORDS, 100, SLIDE, tmp_path / "examples.csv")
    assert "examples.csv" in str(err.value)
    same = read_examples_csv_rows(["case1,50,50,tumour", "case1,60,60,tumour"], tmp_path)  # same class: fine
    assert (label_examples(same, ["tumour"], COORDS, 100, SLIDE, "e.csv").labels >= 0).sum() == 1
    with pytest.raises(PathouccError, match="line 3: class 'stroma' is not one of the given classes"):
        class_list(examples, ["tumour", "necrosis"], tmp_path / "examples.csv")
    (tmp_path / "bad.csv").write_text("slide,x,y\ncase1,1,2\n")
    with pytest.raises(PathouccError, match=r"lacks column\(s\) class"):
        read_examples(tmp_path / "bad.csv")
    (tmp_path / "nan.csv").write_text("slide,x,y,class\ncase1,abc,2,a\n")
    with pytest.raises(PathouccError, match="line 2: x and y must be numbers"):
        read_examples(tmp_path / "nan.csv")
    only_counts = qupath([square(0, 0, 10, 10, "a", ucc=1)], tmp_path / "counts.geojson")
    with pytest.raises(PathouccError, match="no labelled examples"):
        read_examples(only_counts)
    with pytest.raises(PathouccError, match="not found"):
        read_examples(tmp_path / "missing.geojson")
    open_ring = qupath([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1],
                                                                                             [0, 1]]]},
                         "properties": {"classification": {"name": "a"}}}], tmp_path / "open.geojson")
    with pytest.raises(PathouccError, match=r"feature 0: ring 0 is not closed"):
        read_examples(open_ring)


def test_example_file_names_name_their_slide() -> None:
    assert example_slide("a/case1_examples.geojson") == "case1" and example_slide("case1.geojson") == "case1"
    assert example_slide("ex.csv") is None
