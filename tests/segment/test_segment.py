"""Segmentation with a model whose features are the mean patch colour, so the right clustering is known."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from pathoucc import segment as seg_mod
from pathoucc.cluster.kmeans import ClusterModel, KMeansFit, fit_kmeans, fit_on_train, load_or_fit
from pathoucc.config import config_from_dict
from pathoucc.data.pool import subsample
from pathoucc.errors import PathouccError
from pathoucc.segment import accumulate_map, score_segmentation, segment_tiles, write_segmentation
from pathoucc.segment.geojson import trace_rings
from pathoucc.segment.maps import cluster_colors, map_on_image
from pathoucc.slides.tilefile import open_tiles
from pathoucc.slides.tiler import tile_slide

P = 32
COLOURS = {"R": (220, 40, 40), "G": (40, 200, 40), "B": (40, 40, 220)}
CLASS = {"R": 0, "G": 1, "B": 2}
# 5 connected regions: an R frame (with a hole) around a G ring (with a hole) around an R cell; B; a G bar
DESIGN = ["RRRRRBBB",
          "RGGGRBBB",
          "RGRGRBBB",
          "RGGGRBBG",
          "RRRRRBBG",
          "BBBBBBBB"]


class ColourModel(torch.nn.Module):
    """Features = mean RGB of the patch (3 numbers in [0, 1])."""

    num_features = 3

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _cfg(train_tiles: list[Path]):
    return config_from_dict({"seed": 0, "data": {"source": "tiles", "train_tiles": [str(p) for p in train_tiles]},
                             "model": {"in_chans": 3, "input_size": P}, "eval": {"n_init": 3}})


@pytest.fixture(scope="module")
def design_slide(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("design")
    cells = np.array([[CLASS[ch] for ch in row] for row in DESIGN])
    rgb = np.array([COLOURS[ch] for ch in "RGB"], np.uint8)[cells]
    image = np.repeat(np.repeat(rgb, P, 0), P, 1)
    Image.fromarray(image).save(folder / "design.png")
    mask = np.repeat(np.repeat(cells + 1, P, 0), P, 1).astype(np.uint8)
    Image.fromarray(mask).save(folder / "design_mask.png")
    h5 = tile_slide(folder / "design.png", folder / "tiles", patch_size=P, level=0, tissue_threshold=0,
                    annotations=folder / "design_mask.png", region_size=2 * P, workers=1)
    return {"folder": folder, "cells": cells, "image": image, "h5": h5, "mask": folder / "design_mask.png"}


def _class_of_cluster(cm: ClusterModel) -> np.ndarray:
    """The design class (0 R, 1 G, 2 B) whose colour is nearest to each centre."""
    colours = np.array([COLOURS[ch] for ch in "RGB"], np.float32) / 255
    return cm.distances(colours).argmin(0)


@pytest.fixture(scope="module")
def segmented(design_slide, tmp_path_factory) -> dict:
    cm = fit_on_train(ColourModel(), _cfg([design_slide["h5"]]), k=3, batch_size=7)
    out = tmp_path_factory.mktemp("out")
    with open_tiles(design_slide["h5"]) as tiles:
        seg = segment_tiles(ColourModel(), cm, tiles, batch_size=5)
        seg.scores = score_segmentation(seg, tiles)
        folder = write_segmentation(seg, tiles, out, cluster_colors(3))
    return {"cm": cm, "seg": seg, "folder": folder, "out": out}


def test_cluster_model_fit_save_load(segmented, tmp_path: Path) -> None:
    cm = segmented["cm"]
    assert sorted(_class_of_cluster(cm).tolist()) == [0, 1, 2]  # one centre per colour
    colours = np.array([COLOURS[ch] for ch in "RGB"], np.float32) / 255
    np.testing.assert_allclose(np.sort(cm.centers, 0), np.sort(colours, 0), atol=1e-5)
    d = cm.distances(np.random.default_rng(0).random((20, 3), np.float32))
    assert np.allclose(cm.soft(d).sum(1), 1) and (cm.soft(d).argmax(1) == d.argmin(1)).all()
    cm.save(tmp_path / "km.npz")
    back = ClusterModel.load(tmp_path / "km.npz", num_features=3)
    np.testing.assert_array_equal(back.centers, cm.centers)
    assert (back.k, back.seed, back.temperature) == (3, 0, cm.temperature)
    with pytest.raises(PathouccError, match=r"km\.npz: k-means centres have 3 features but the run's model gives 5"):
        ClusterModel.load(tmp_path / "km.npz", num_features=5)
    (tmp_path / "bad.npz").write_text("no")
    with pytest.raises(PathouccError, match=r"bad\.npz: not a k-means file"):
        ClusterModel.load(tmp_path / "bad.npz")


def test_train_fit_is_kmeans_on_the_seeded_subset_of_all_training_patches(design_slide) -> None:
    h5 = design_slide["h5"]
    cfg = _cfg([h5, h5])  # two training files: one pool, rows numbered file after file
    cm = fit_on_train(ColourModel(), cfg, k=3, batch_size=5, max_patches=40)
    with open_tiles(h5) as tiles:
        pixels = np.concatenate([tiles.read(slice(None))] * 2).astype(np.float32) / 255
    features = pixels.mean(axis=(1, 2))  # what ColourModel computes
    km = fit_kmeans(features[subsample(len(features), 40, cfg.seed)], 3, cfg.seed, cfg.eval.n_init)
    order = np.lexsort(cm.centers.T), np.lexsort(km.cluster_centers_.T)
    np.testing.assert_allclose(cm.centers[order[0]], km.cluster_centers_[order[1]], atol=1e-5)
    assert cm.fit == KMeansFit.TRAIN and json.loads(cm.source) == [str(h5)] * 2
    assert cm.describe() == {"fit": "train", "fitted_on": cm.source, "k": 3, "seed": 0}


def test_load_or_fit_saves_once_and_reuses(design_slide, tmp_path: Path) -> None:
    cfg = _cfg([design_slide["h5"]])
    cm, path, fitted = load_or_fit(tmp_path, ColourModel(), cfg, k=None)  # k = classes of the training tiles
    assert fitted and path == tmp_path / "kmeans-k3.npz" and cm.k == 3
    again, _, fitted = load_or_fit(tmp_path, ColourModel(), cfg, k=3)
    assert not fitted and np.array_equal(again.centers, cm.centers)
    assert [p.name for p in tmp_path.iterdir()] == ["kmeans-k3.npz"]  # no temporary files left


def test_map_csv_and_h5_hold_the_right_clusters(segmented, design_slide) -> None:
    seg, folder = segmented["seg"], segmented["folder"]
    to_class = _class_of_cluster(segmented["cm"])
    assert seg.grid.shape == design_slide["cells"].shape and seg.grid.cell == P and seg.grid.span == 1
    np.testing.assert_array_equal(to_class[seg.cluster_map], design_slide["cells"])
    assert sorted(p.name for p in folder.parent.iterdir()) == ["design"]  # no temporary folders
    assert sorted(p.name for p in folder.iterdir()) == [
        "cluster_map.png", "clusters.csv", "clusters.geojson", "clusters.h5", "overlay.png", "patches.geojson",
        "scores.json"]
    with (folder / "clusters.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(DESIGN) * len(DESIGN[0]) and list(rows[0]) == ["x", "y", "cluster", "name", "label"]
    for row in rows:
        x, y, c = int(row["x"]), int(row["y"]), int(row["cluster"])
        assert to_class[c] == design_slide["cells"][y // P, x // P] == int(row["label"])
    with h5py.File(folder / "clusters.h5") as f:
        assert f["coords"].shape == (len(rows), 2) and f["cluster"].shape == (len(rows),)
        assert f["distances"].shape == f["probabilities"].shape == (len(rows), 3)
        np.testing.assert_allclose(f["probabilities"][()].sum(1), 1, rtol=1e-5)
        np.testing.assert_array_equal(f["map"][()], seg.cluster_map)
        assert f["map"].attrs["cell"] == P and f.attrs["k"] == 3
    png = np.asarray(Image.open(folder / "cluster_map.png"))
    assert png.shape == (*design_slide["cells"].shape, 3)
    np.testing.assert_array_equal(png, cluster_colors(3)[seg.cluster_map])


def test_scores_from_tile_labels_are_perfect(segmented) -> None:
    scores = json.loads((segmented["folder"] / "scores.json").read_text())
    assert scores["patches"]["accuracy"] == 1.0 and scores["patches"]["nmi"] == pytest.approx(1.0)
    assert scores["patches"]["ari"] == pytest.approx(1.0) and scores["patches"]["num_patches"] == 48
    assert scores["map"]["accuracy"] == 1.0 and scores["map"]["mean_dice"] == 1.0
    counts = {ch: sum(row.count(ch) for row in DESIGN) for ch in "RGB"}
    assert {name: v["cells"] for name, v in scores["map"]["per_class"].items()} == \
        {str(CLASS[ch]): n for ch, n in counts.items()}
    to_class = _class_of_cluster(segmented["cm"])
    assert scores["matching"] == {f"cluster {c}": str(to_class[c]) for c in range(3)}


def test_scores_against_a_mask_and_a_bad_mask(design_slide, segmented, tmp_path: Path) -> None:
    with open_tiles(design_slide["h5"]) as tiles:
        seg = segment_tiles(ColourModel(), segmented["cm"], tiles)
        wrong = design_slide["cells"].copy()
        wrong[0, :] = CLASS["B"]  # the top row says blue: 5 red cells are now "wrong"
        Image.fromarray(np.repeat(np.repeat(wrong + 1, 8, 0), 8, 1).astype(np.uint8)).save(tmp_path / "m.png")
        scores = score_segmentation(seg, tiles, tmp_path / "m.png")  # a mask at downsample 4
        assert scores["patches"]["accuracy"] == pytest.approx(43 / 48)
        assert scores["map"]["accuracy"] == pytest.approx(43 / 48)
        red = scores["map"]["per_class"]["0"]
        # 17 cells are red and clustered red; the mask calls 12 of them red
        assert red["dice"] == pytest.approx(2 * 12 / (17 + 12)) and red["iou"] == pytest.approx(12 / 17)
        Image.fromarray(np.zeros((10, 40), np.uint8)).save(tmp_path / "odd.png")
        with pytest.raises(PathouccError, match=r"odd\.png: label mask is 40x10 px, which does not match"):
            score_segmentation(seg, tiles, tmp_path / "odd.png")


def _inside(x: float, y: float, ring: list) -> bool:
    a = np.asarray(ring, np.float64)
    x0, y0, x1, y1 = a[:-1, 0], a[:-1, 1], a[1:, 0], a[1:, 1]
    crosses = (y0 > y) != (y1 > y)
    at = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1, y1 - y0)
    return bool(np.count_nonzero(crosses & (x < at)) % 2)


def test_geojson_has_one_closed_polygon_per_region_in_level0_pixels(segmented, design_slide) -> None:
    data = json.loads((segmented["folder"] / "clusters.geojson").read_text())
    assert data["type"] == "FeatureCollection"
    features = data["features"]
    assert len(features) == 5  # R frame, R centre, G ring, G bar, B
    seg, colors = segmented["seg"], cluster_colors(3)
    polygons = []
    for f in features:
        props = f["properties"]
        assert props["objectType"] == "annotation" and f["geometry"]["type"] == "Polygon"
        cluster = int(props["classification"]["name"].split()[-1])
        assert props["classification"]["color"] == colors[cluster].tolist()
        rings = f["geometry"]["coordinates"]
        for ring in rings:
            assert ring[0] == ring[-1] and len(ring) >= 5
            xy = np.asarray(ring)
            assert (xy % P == 0).all() and xy[:, 0].max() <= 8 * P and xy[:, 1].max() <= 6 * P
        polygons.append((cluster, rings))
    holes = sorted(len(rings) - 1 for _, rings in polygons)
    assert holes == [0, 0, 0, 1, 1]  # the R frame and the G ring have one hole each
    for r, c in np.ndindex(*seg.cluster_map.shape):  # every cell centre lies in exactly one polygon: its cluster
        x, y = (c + 0.5) * P, (r + 0.5) * P
        owners = [k for k, rings in polygons
                  if _inside(x, y, rings[0]) and not any(_inside(x, y, h) for h in rings[1:])]
        assert owners == [seg.cluster_map[r, c]], (r, c)


def test_trace_rings_orientation_and_pinch() -> None:
    square = np.zeros((4, 4), bool)
    square[1:3, 1:3] = True
    assert trace_rings(square) == [[(1, 1), (3, 1), (3, 3), (1, 3), (1, 1)]]
    pinch = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 1]], bool)  # two holes touching
    rings = trace_rings(pinch)
    areas = sorted(0.5 * sum(a[0] * b[1] - b[0] * a[1] for a, b in itertools.pairwise(r)) for r in rings)
    assert areas == [-1, -1, 16]
    for r in rings:
        assert len(set(r[:-1])) == len(r) - 1  # simple rings: no vertex twice


def test_overlay_is_the_map_blended_over_the_slide(segmented, design_slide) -> None:
    seg = segmented["seg"]
    overlay = np.asarray(Image.open(segmented["folder"] / "overlay.png").convert("RGB"))
    h, w = design_slide["image"].shape[:2]
    expected = map_on_image(seg.cluster_map, P, design_slide["image"], (1.0, 1.0), cluster_colors(3))
    assert overlay.shape[0] >= h and overlay.shape[1] > w  # the legend sits to the right
    assert np.abs(overlay[:h, :w].astype(int) - expected).mean() < 2
    assert seg.extra["overlay_background"] == "slide thumbnail"


def test_overlay_falls_back_to_a_patch_mosaic(design_slide, segmented, tmp_path: Path) -> None:
    slide = tmp_path / "design.png"
    shutil.copy(design_slide["folder"] / "design.png", slide)
    h5 = tile_slide(slide, tmp_path / "tiles", patch_size=P, level=0, tissue_threshold=0, workers=1)
    slide.unlink()
    with open_tiles(h5) as tiles:
        seg = segment_tiles(ColourModel(), segmented["cm"], tiles)
        assert seg.labels is None and score_segmentation(seg, tiles) is None
        folder = write_segmentation(seg, tiles, tmp_path / "out", cluster_colors(3))
    assert seg.extra["overlay_background"].startswith("patch mosaic")
    assert not (folder / "scores.json").exists() and (folder / "overlay.png").is_file()
    overlay = np.asarray(Image.open(folder / "overlay.png").convert("RGB"))
    expected = map_on_image(seg.cluster_map, P, design_slide["image"], (1.0, 1.0), cluster_colors(3))
    h, w = expected.shape[:2]
    assert np.abs(overlay[:h, :w].astype(int) - expected).mean() < 2
    with (folder / "clusters.csv").open() as f:
        assert f.readline().strip() == "x,y,cluster,name"


def test_accumulate_map_sums_over_covered_cells() -> None:
    grid = seg_mod.MapGrid((3, 4), 16.0, 2)
    cells = np.array([[0, 0], [1, 1], [2, 3]])
    values = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32)
    sums, counts = accumulate_map(cells, values, grid)
    np.testing.assert_array_equal(counts, [[1, 1, 0, 0], [1, 2, 1, 0], [0, 1, 1, 1]])
    np.testing.assert_array_equal(sums[1, 1], [1, 1])
    np.testing.assert_array_equal(sums[2, 3], [0.5, 0.5])  # the part of patch 3 outside the map is dropped


@pytest.fixture(scope="module")
def left_right(tmp_path_factory) -> dict:
    """192 x 96 px: red for x < 80, blue from x = 80 (a border on a half-patch position)."""
    folder = tmp_path_factory.mktemp("lr")
    image = np.zeros((96, 192, 3), np.uint8)
    image[:, :80], image[:, 80:] = COLOURS["R"], COLOURS["B"]
    Image.fromarray(image).save(folder / "lr.png")
    truth = np.where(np.arange(192) < 80, 0, 1)[None].repeat(96, 0)
    Image.fromarray((truth + 1).astype(np.uint8)).save(folder / "lr_mask.png")
    tiles = {s: tile_slide(folder / "lr.png", folder / f"s{s}", patch_size=P, stride=s, level=0, tissue_threshold=0,
                           workers=1) for s in (16, 32)}
    return {"folder": folder, "truth": truth, "tiles": tiles, "mask": folder / "lr_mask.png"}


def test_overlapping_patches_give_a_finer_map(left_right) -> None:
    cm = fit_on_train(ColourModel(), _cfg([left_right["tiles"][32]]), k=2)
    truth = left_right["truth"]
    agreement = {}
    for stride, h5 in left_right["tiles"].items():
        with open_tiles(h5) as tiles:
            seg = segment_tiles(ColourModel(), cm, tiles)
            cell = int(seg.grid.cell)
            assert cell == stride and seg.grid.span == P // stride
            pixels = np.repeat(np.repeat(seg.cluster_map, cell, 0), cell, 1)[:96, :192]
            red = cm.distances(np.array([COLOURS["R"]], np.float32) / 255).argmin()
            agreement[stride] = float(np.mean((pixels != red) == truth))
            if stride == 16:
                scores = score_segmentation(seg, tiles, left_right["mask"])
                assert scores["map"]["accuracy"] == 1.0 and scores["map"]["mean_dice"] == 1.0
                assert scores["map"]["num_cells"] == 6 * 12
    assert agreement[16] == 1.0  # the border at x = 80 is resolved at 16 px
    assert agreement[32] == pytest.approx(11 / 12)  # one 16-px column is necessarily wrong with 32-px cells


def test_outputs_are_all_or_nothing(design_slide, segmented, tmp_path: Path, monkeypatch) -> None:
    import pathoucc.segment.write

    out = tmp_path / "out"
    with open_tiles(design_slide["h5"]) as tiles:
        seg = segment_tiles(ColourModel(), segmented["cm"], tiles)
        first = write_segmentation(seg, tiles, out, cluster_colors(3))
        before = {p.name: p.read_bytes() for p in first.iterdir()}

        def boom(*args, **kwargs):
            raise PathouccError("disk full", out)

        monkeypatch.setattr(pathoucc.segment.write, "write_feature_collection", boom)
        with pytest.raises(PathouccError, match="disk full"):
            write_segmentation(seg, tiles, out, cluster_colors(3))
    assert [p.name for p in out.iterdir()] == ["design"]  # the temporary folder is gone
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before  # the previous result is intact
