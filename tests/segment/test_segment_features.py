"""`pathoucc segment` / `cluster` on feature files: the same outputs as from tiles (maps, GeoJSON, CSV, HDF5,
scores against a mask), the overlay from the slide found by name in --slides, or none with a one-line notice."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
from helpers import (
    FEATURE_EXTENT,
    FEATURE_SIDE,
    count_regions_geojson,
    feature_cohort,
    one_line_error,
    run_cli,
    write_clam_features,
    write_trident_features,
)
from PIL import Image

from pathoucc.config import config_from_dict
from pathoucc.training.train import train_ucc

SIDE, EXTENT = FEATURE_SIDE, FEATURE_EXTENT


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("featseg")
    ann = folder / "ann"
    ann.mkdir()
    paths = {}
    for seed, name in enumerate(["s1", "s2", "test"]):
        features, coords, labels, class_map = feature_cohort(seed, side=SIDE, extent=EXTENT)
        paths[name] = write_trident_features(folder / "features_uni_v1" / f"{name}.h5", features, coords,
                                             width=SIDE * EXTENT, height=SIDE * EXTENT)
        if name == "test":
            Image.fromarray((class_map + 1).astype(np.uint8)).save(folder / "test_mask.png")
            paths["clam"] = write_clam_features(folder / "clam", "test", features, coords)[1]
            paths["labels"] = labels
        else:
            count_regions_geojson(ann / f"{name}.geojson", class_map, 4, EXTENT)
    cfg = config_from_dict({
        "name": "featseg", "seed": 2,
        "data": {"source": "features", "features": [str(paths["s1"]), str(paths["s2"])], "annotations": str(ann),
                 "val_fraction": 0.0},
        "bags": {"bag_size": 16, "bags_per_batch": 8, "ucc_min": 1, "ucc_max": 3},
        "model": {"backbone": "mlp", "widths": [32], "num_features": 4, "mlp": [32], "decoder_widths": [16]},
        "train": {"steps": 30, "val_every": 100, "checkpoint_every": 100, "log_every": 100, "lr": 3e-3,
                  "device": "cpu", "num_threads": 1},
        "eval": {"k": 3, "n_init": 2},
    })
    train_ucc(cfg, folder / "run")
    return {"run": folder / "run", "folder": folder, **paths}


def test_segment_feature_file_scored_against_its_mask(monkeypatch, capsys, feature_run, tmp_path) -> None:
    run, test = feature_run["run"], feature_run["test"]
    code, out, err = run_cli(monkeypatch, capsys, "segment", str(run), str(test), "--out", str(tmp_path),
                             "--mask", str(feature_run["folder"] / "test_mask.png"), "--device", "cpu")
    assert code == 0, err
    assert "test.h5: no overlay.png, its slide was not found (give the slides' folder with --slides)" in out
    folder = tmp_path / "test"
    assert {p.name for p in folder.iterdir()} == {"clusters.h5", "clusters.csv", "clusters.geojson", "patches.geojson",
                                                  "cluster_map.png", "scores.json"}
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["patches"]["num_patches"] == SIDE * SIDE and scores["patches"]["accuracy"] >= 0.95
    assert scores["map"]["accuracy"] >= 0.95 and scores["kmeans"]["fit"] == "train"
    with h5py.File(folder / "clusters.h5") as f, h5py.File(test) as src:
        np.testing.assert_array_equal(f["coords"][()], src["coords"][()])
        np.testing.assert_array_equal(f["labels"][()], feature_run["labels"])  # the mask, patch by patch
        assert f["map"].shape == (SIDE, SIDE) and f["map"].attrs["cell"] == EXTENT
    with (folder / "clusters.csv").open() as f:
        assert len(list(csv.reader(f))) == SIDE * SIDE + 1
    assert Image.open(folder / "cluster_map.png").size == (SIDE, SIDE)
    regions = json.loads((folder / "clusters.geojson").read_text())["features"]
    assert len(regions) >= 3  # one annotation per connected region of each cluster


def test_overlay_from_the_slide_found_by_name(monkeypatch, capsys, feature_run, tmp_path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    Image.new("RGB", (SIDE * EXTENT, SIDE * EXTENT), (230, 200, 220)).save(slides / "test.png")
    code, out, err = run_cli(monkeypatch, capsys, "segment", str(feature_run["run"]), str(feature_run["clam"]),
                             "--out", str(tmp_path / "seg"), "--slides", str(slides), "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "seg" / "test" / "overlay.png").is_file() and "no overlay" not in out
    with h5py.File(tmp_path / "seg" / "test" / "clusters.h5") as f:
        assert f.attrs["slide_path"] == str((slides / "test.png").resolve())


def test_cluster_and_bad_files(monkeypatch, capsys, feature_run, tmp_path) -> None:
    run = feature_run["run"]
    code, out, err = run_cli(monkeypatch, capsys, "cluster", str(run), "--device", "cpu")
    assert code == 0 and "k=3 on 4 features" in out, err
    code, out, err = run_cli(monkeypatch, capsys, "cluster", str(run), "--tiles", str(feature_run["clam"]),
                             "--k", "4", "--device", "cpu")  # fitted on other feature files
    assert code == 0 and "k=4 on 4 features" in out and (run / "kmeans-k4.npz").is_file(), err
    features, coords, _, _ = feature_cohort(0, side=SIDE, dim=8)
    odd = write_trident_features(tmp_path / "d8" / "odd.h5", features, coords, width=192, height=192)
    code, _, err = run_cli(monkeypatch, capsys, "segment", str(run), str(odd), "--out", str(tmp_path / "o"))
    assert code != 0
    one_line_error(err, str(odd), "8-dimensional feature vectors", "16-dimensional")
    assert not (tmp_path / "o" / "odd").exists()
