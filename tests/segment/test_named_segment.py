"""`pathoucc segment` / `cluster` with labelled examples: clusters named after classes in every output (HDF5, CSV,
GeoJSON in QuPath's schema, overlay, scores), examples never scored, and bad examples as one-line errors."""

from __future__ import annotations

import csv
import json
import re
import uuid

import h5py
import numpy as np
import pytest
import torch
import yaml
from helpers import one_line_error, run_cli, tiny_digit_config
from slide_fixtures import CELL, cell_class

from pathoucc.cluster.kmeans import ClusterModel
from pathoucc.config import config_from_dict
from pathoucc.segment.maps import name_color
from pathoucc.slides.tilefile import open_tiles
from pathoucc.slides.tiler import tile_slide
from pathoucc.training.train import train_ucc

PER_CLASS = 2


@pytest.fixture(scope="module")
def named_run(digit_slide, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("namedrun")
    tiles = tile_slide(digit_slide["slide"], folder / "tiles", patch_size=CELL, level=0, region_size=256,
                       annotations=digit_slide["mask"], workers=1)
    cfg = config_from_dict(tiny_digit_config(tiles, CELL, steps=20))
    train_ucc(cfg, folder / "run", progress=False)
    with open_tiles(tiles) as t:
        coords = t.coords.copy()
    truth = np.array([cell_class(digit_slide["cells"], x, y) for x, y in coords.tolist()])
    rng = np.random.default_rng(0)
    rows = {c: rng.choice(np.flatnonzero(truth == c), PER_CLASS, replace=False) for c in np.unique(truth[truth >= 0])}
    examples = folder / "examples.csv"
    with examples.open("w") as f:
        f.write("slide,x,y,class\n")
        for c, picked in rows.items():
            for r in picked.tolist():
                f.write(f"digits.tif,{coords[r, 0] + CELL // 2},{coords[r, 1] + CELL // 2},{c}\n")
    return {"run": folder / "run", "tiles": tiles, "folder": folder, "examples": examples, "coords": coords,
            "truth": truth, "rows": rows}


def test_segment_with_examples_names_every_output(monkeypatch, capsys, named_run, digit_slide, tmp_path) -> None:
    run, tiles, truth = named_run["run"], named_run["tiles"], named_run["truth"]
    classes = [str(c) for c in sorted(named_run["rows"])]
    code, out, err = run_cli(monkeypatch, capsys, "segment", str(run), str(tiles), "--out", str(tmp_path),
                             "--mask", str(digit_slide["mask"]), "--examples", str(named_run["examples"]),
                             "--device", "cpu")
    assert code == 0, err
    k = len(classes)
    assert f"fitted k-means (k={k}) named {', '.join(classes)}" in out and "named accuracy" in out
    cm = ClusterModel.load(run / f"kmeans-k{k}.npz")  # the run's saved k-means carries the names
    assert cm.names == classes and cm.fit.value == "examples"
    folder = tmp_path / "digits"
    example_rows = np.sort(np.concatenate(list(named_run["rows"].values())))
    with h5py.File(folder / "clusters.h5") as f:
        clusters = f["cluster"][()]
        assert [str(n) for n in f.attrs["cluster_names"]] == classes
        np.testing.assert_array_equal(f.attrs["cluster_colors"], [name_color(n) for n in classes])
        assert np.array_equal(np.flatnonzero(f["examples"][()] >= 0), example_rows)
    with (folder / "clusters.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["x", "y", "cluster", "name", "label", "example"]
    assert all(r["name"] == classes[int(r["cluster"])] for r in rows)
    assert sorted(i for i, r in enumerate(rows) if r["example"]) == example_rows.tolist()
    assert all(rows[i]["example"] == str(truth[i]) for i in example_rows)
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["cluster_names"] == classes and scores["num_examples"] == len(example_rows)
    assert scores["kmeans"]["fit"] == "examples" and scores["kmeans"]["names"] == classes
    scored = np.setdiff1d(np.flatnonzero(truth >= 0), example_rows)  # examples are never scored
    assert scores["patches"]["num_patches"] == len(scored)
    named = np.mean(np.asarray(classes)[clusters[scored]] == truth[scored].astype(str))
    assert scores["named"]["patches"]["accuracy"] == pytest.approx(named)
    assert scores["named"]["map"]["accuracy"] == pytest.approx(named)  # stride = patch size: map = patches
    assert scores["named"]["patches"]["accuracy"] <= scores["patches"]["accuracy"] + 1e-9  # no matching helps
    regions = json.loads((folder / "clusters.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in regions} <= set(classes)


def _check_qupath_feature(feature: dict, object_type: str) -> None:
    """The fields QuPath's GeoJSON import reads (qupath.lib.io.GsonTools / PathObjectTypeAdapters)."""
    assert feature["type"] == "Feature" and uuid.UUID(feature["id"])
    geometry = feature["geometry"]
    assert geometry["type"] in ("Polygon", "MultiPolygon")
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    for rings in polygons:
        for ring in rings:
            assert len(ring) >= 4 and ring[0] == ring[-1]
            assert all(len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in ring)
    props = feature["properties"]
    assert props["objectType"] == object_type
    cls = props["classification"]
    assert isinstance(cls["name"], str) and cls["name"]
    assert len(cls["color"]) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in cls["color"])
    assert tuple(cls["color"]) == name_color(cls["name"])  # stable per name
    measurements = props.get("measurements", {})
    assert isinstance(measurements, dict) and all(isinstance(v, (int, float)) for v in measurements.values())


def test_outputs_follow_qupaths_geojson_schema(monkeypatch, capsys, named_run, tmp_path) -> None:
    run, tiles = named_run["run"], named_run["tiles"]
    code, _, err = run_cli(monkeypatch, capsys, "segment", str(run), str(tiles), "--out", str(tmp_path),
                           "--examples", str(named_run["examples"]))
    assert code == 0, err
    regions = json.loads((tmp_path / "digits" / "clusters.geojson").read_text())
    assert regions["type"] == "FeatureCollection" and regions["features"]
    for feature in regions["features"]:
        _check_qupath_feature(feature, "annotation")
    patches = json.loads((tmp_path / "digits" / "patches.geojson").read_text())["features"]
    assert len(patches) == len(named_run["coords"])
    with h5py.File(tmp_path / "digits" / "clusters.h5") as f:
        distances, clusters = f["distances"][()], f["cluster"][()]
    for i, feature in enumerate(patches):
        _check_qupath_feature(feature, "tile")
        x, y = named_run["coords"][i].tolist()
        assert feature["geometry"]["coordinates"][0] == [[x, y], [x + CELL, y], [x + CELL, y + CELL],
                                                         [x, y + CELL], [x, y]]
        m = feature["properties"]["measurements"]
        assert m["cluster"] == clusters[i]
        assert m["cluster distance"] == pytest.approx(distances[i, clusters[i]], rel=1e-5, abs=1e-6)


def test_cluster_with_examples_and_classes_without_examples(monkeypatch, capsys, named_run, tmp_path) -> None:
    run = named_run["run"]
    classes = [str(c) for c in sorted(named_run["rows"])]
    examples = tmp_path / "two.csv"
    lines = named_run["examples"].read_text().splitlines()
    examples.write_text("\n".join([lines[0], *(ln for ln in lines[1:] if ln.endswith((",0", ",1")))]) + "\n")
    code, out, err = run_cli(monkeypatch, capsys, "cluster", str(run), "--examples", str(examples), "--classes",
                             ",".join([*classes, "glass"]), "--k", "5")
    assert code == 0, err
    cm = ClusterModel.load(run / "kmeans-k5.npz")
    assert cm.names == ["0", "1", "cluster 2", "cluster 3", "cluster 4"]
    assert "named 0, 1, cluster 2" in out
    assert re.search(r"note: classes without a labelled example .*: 2, 3, .*glass", err)


@pytest.mark.parametrize(
    ("rows", "extra", "needles"),
    [
        (["digits,300,300,tumour"], ["--classes", "0,1"], ["line 2: class 'tumour' is not one of the given classes"]),
        (["digits,{x},{y},0", "digits,{x1},{y1},1"], [], ["line 2 (0) and line 3 (1) label the same patch"]),
        (["digits,{x},{y},0", "digits,{x2},{y2},1", "digits,{x3},{y3},2"], ["--k", "2"],
         ["3 named classes have examples but k=2"]),
        (["digits,5,5,0"], [], ["none of the 1 labelled examples lies on a tissue patch"]),
    ],
)
def test_bad_examples_are_one_line_errors(monkeypatch, capsys, named_run, tmp_path, rows, extra, needles) -> None:
    x, y = (named_run["coords"][0] + 3).tolist()
    x2, y2 = (named_run["coords"][1] + 3).tolist()
    x3, y3 = (named_run["coords"][2] + 3).tolist()
    path = tmp_path / "bad.csv"
    path.write_text("slide,x,y,class\n" + "\n".join(r.format(x=x, y=y, x1=x + 2, y1=y + 2, x2=x2, y2=y2, x3=x3,
                                                              y3=y3) for r in rows) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "segment", str(named_run["run"]), str(named_run["tiles"]),
                           "--out", str(tmp_path / "out"), "--examples", str(path), *extra)
    assert code == 2
    one_line_error(err, "bad.csv", *needles)
    assert not (tmp_path / "out" / "digits").exists()


def test_examples_off_the_tissue_are_counted_skips(monkeypatch, capsys, named_run, tmp_path) -> None:
    path = tmp_path / "some.csv"
    path.write_text(named_run["examples"].read_text() + "digits,3,3,0\n")  # in the white margin: no patch
    code, _, err = run_cli(monkeypatch, capsys, "segment", str(named_run["run"]), str(named_run["tiles"]),
                           "--out", str(tmp_path / "out"), "--examples", str(path))
    assert code == 0, err
    assert "the point lies in no tissue patch; skipped" in err and "1 example(s) on digits.tif" in err


def _train_yaml(named_run, tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(tiny_digit_config(named_run["tiles"], CELL, steps=4)))
    return path


def test_train_with_examples_names_the_runs_clusters(monkeypatch, capsys, named_run, tmp_path) -> None:
    run = tmp_path / "run"
    code, out, err = run_cli(monkeypatch, capsys, "train", str(_train_yaml(named_run, tmp_path)), "--out", str(run),
                             "--examples", str(named_run["examples"]))
    assert code == 0, err
    classes = [str(c) for c in sorted(named_run["rows"])]
    k = len(classes)
    assert f"k-means with k={k} named {', '.join(classes)} -> {run / f'kmeans-k{k}.npz'}" in out
    cm = ClusterModel.load(run / f"kmeans-k{k}.npz")  # what `pathoucc segment` uses: names without --examples
    assert cm.names == classes and cm.fit.value == "examples"
    plain = config_from_dict(tiny_digit_config(named_run["tiles"], CELL, steps=4))
    train_ucc(plain, tmp_path / "plain", progress=False)  # the examples never enter the training
    weights = [torch.load(r / "model.pt", weights_only=True)["model"] for r in (run, tmp_path / "plain")]
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=0, atol=0)


def test_train_checks_its_examples_before_training(monkeypatch, capsys, named_run, tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("slide,x,y,class\ndigits,300,300,tumour\n")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(_train_yaml(named_run, tmp_path)), "--out",
                           str(tmp_path / "run"), "--examples", str(path), "--classes", "0,1")
    assert code == 2
    one_line_error(err, "bad.csv", "class 'tumour' is not one of the given classes")
    assert not (tmp_path / "run").exists()  # nothing trained
