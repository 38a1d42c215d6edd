"""The cohort grid's tools: the intermixed layout, the count filter, cell names and the recipe-checked cache."""

import json
import sys

import numpy as np
import pytest
import shapely
from helpers import tiny_cohort_recipe
from PIL import Image
from slide_fixtures import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from make_cohort import TODAY, Cell, build_cell, grid_cells
from make_digit_slide import make_blob_digit_slide

CELL, MARGIN = 28, 2


def _region_classes(made: dict) -> list[tuple[int, np.ndarray]]:
    """(ucc written, classes of the cells whose centre lies inside) for every region of the GeoJSON."""
    truth = np.asarray(Image.open(made["mask"])).astype(np.int64)[CELL // 2::CELL, CELL // 2::CELL] - 1
    rows, cols = np.nonzero(truth >= 0)
    cx, cy = (cols + 0.5) * CELL, (rows + 0.5) * CELL
    out = []
    for f in json.loads(made["geojson"].read_text())["features"]:
        inside = shapely.contains_xy(shapely.geometry.shape(f["geometry"]), cx, cy)
        out.append((f["properties"]["ucc"], truth[rows[inside], cols[inside]]))
    return out


def test_intermixed_regions_mix_their_counted_classes(tmp_path):
    made = make_blob_digit_slide(tmp_path / "mix.tif", grid=(30, 30), cell=CELL, blob_cells=12, region_cells=6,
                                 blank_fraction=0.1, min_region_patches=8, source="digits", seed=5,
                                 margin_cells=MARGIN, layout="intermixed", ucc_range=(1, 4))
    regions = _region_classes(made)
    assert len(regions) >= 10
    for ucc, classes in regions:
        assert 1 <= ucc <= 4 and len(np.unique(classes)) == ucc
    assert {ucc for ucc, _ in regions} >= {1, 2, 3, 4}
    # intermixed, not blobs: a multi-class region's cells change class between neighbours far more often than
    # the blob layout's, whose classes change only at blob borders
    truth = np.asarray(Image.open(made["mask"])).astype(np.int64)[CELL // 2::CELL, CELL // 2::CELL] - 1
    blobs = make_blob_digit_slide(tmp_path / "blobs.tif", grid=(30, 30), cell=CELL, blob_cells=12, region_cells=6,
                                  blank_fraction=0.1, min_region_patches=8, source="digits", seed=5,
                                  margin_cells=MARGIN)
    blob_truth = np.asarray(Image.open(blobs["mask"])).astype(np.int64)[CELL // 2::CELL, CELL // 2::CELL] - 1

    def changes(t: np.ndarray) -> float:
        both = (t[:, 1:] >= 0) & (t[:, :-1] >= 0)
        return float((t[:, 1:] != t[:, :-1])[both].mean())

    assert changes(truth) > 3 * changes(blob_truth)
    assert ((truth == -1) == (blob_truth == -1)).all()  # the same glass


def test_blob_count_filter_keeps_only_counts_in_range(tmp_path):
    kwargs = {"grid": (30, 30), "cell": CELL, "blob_cells": 8, "region_cells": 6, "min_region_patches": 8,
              "source": "digits", "seed": 4, "margin_cells": MARGIN}
    every = make_blob_digit_slide(tmp_path / "all.tif", **kwargs)
    low = make_blob_digit_slide(tmp_path / "low.tif", ucc_range=(1, 2), **kwargs)
    assert max(every["ucc_histogram"]) > 2
    assert set(low["ucc_histogram"]) <= {1, 2}
    assert low["ucc_histogram"] == {u: n for u, n in every["ucc_histogram"].items() if u <= 2}


def test_cell_names_and_the_grid():
    cells = grid_cells("full")
    assert len(cells) == 25 and len({c.name for c in cells}) == 25
    assert all(Cell.parse(c.name) == c for c in cells)
    with pytest.raises(ValueError, match="bad cell name"):
        Cell.parse("mixed-r300-n200")
    for cell in cells:  # validation digits never from the training slides' MNIST split; test = official test
        splits = {s["name"]: s["split"] for s in cell.recipe()["slides"]}
        assert splits.pop("val") == "val" and splits.pop("test") == "test" and set(splits.values()) == {"train"}
    today = {s["name"]: s for s in Cell.parse(TODAY).recipe()["slides"]}  # tools/bench_slide_heldout.py's slides
    assert [(s["grid"], s["seed"]) for s in today.values()] == [(320, 1), (96, 3), (96, 2)]
    assert {(s["region_cells"], s["min_region_patches"], s["blob_cells"], s["cell"]) for s in today.values()} == \
        {(10.0, 32, 14.0, 32)}


def test_cached_cell_is_reused_only_while_its_recipe_holds(tmp_path, monkeypatch):
    cell = Cell("intermixed", 90, 200, CELL)
    spec = {"layout": "intermixed", "cell": CELL, "region_cells": 5.0, "min_region_patches": 6, "blob_cells": 8.0,
            "source": "digits"}
    recipe = {"cell": {}, "slides": [{"name": n, "split": "train", "seed": s, "grid": 12, **spec}
                                     for n, s in (("train0", 1), ("val", 3), ("test", 2))]}
    monkeypatch.setattr(Cell, "recipe", lambda self: recipe)
    first = build_cell(cell, tmp_path)
    assert first["made"] and first["train_tiles"] == [tmp_path / cell.name / "tiles" / "train0.h5"]
    assert all(p.exists() for p in [*first["train_tiles"], first["val_tiles"], first["test_tiles"]])
    marker = first["folder"] / "marker"
    marker.write_text("x")
    assert not build_cell(cell, tmp_path)["made"] and marker.exists()  # same recipe: reused
    recipe["slides"][0]["seed"] = 7
    again = build_cell(cell, tmp_path)
    assert again["made"] and not marker.exists()  # changed recipe: deleted and rebuilt
    assert json.loads((again["folder"] / "recipe.json").read_text())["slides"][0]["seed"] == 7


@pytest.mark.slow
def test_bench_cohorts_scores_every_slide_of_a_cell(tmp_path, monkeypatch):
    """A small cell trained a few steps end to end: every patch of every slide is in the cluster tables, with
    the digit the mask gives it, and the result names the disjoint validation slide and the test slide."""
    import argparse

    import yaml
    from bench_cohorts import run_cell

    cell = Cell("intermixed", 90, 200, CELL)
    recipe = tiny_cohort_recipe(CELL)
    monkeypatch.setattr(Cell, "recipe", lambda self: recipe)
    cfg = yaml.safe_load((ROOT / "configs" / "digit-slide.yaml").read_text())
    cfg["train"].update(steps=6, val_every=3, checkpoint_every=3)
    cfg["refine"].update(steps=2, rounds=1)
    cfg["model"]["widths"] = [4, 8, 8]
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(cfg))
    args = argparse.Namespace(work=tmp_path / "work", data_dir="data", config=tmp_path / "small.yaml", seed=None,
                              reuse_run=False, resume=False, refine_again=False)
    result = run_cell(cell, args)

    assert result["config"]["resolved"]["model"]["input_size"] == CELL
    assert result["config"]["resolved"]["train"]["max_minutes"] is None
    assert set(result["slides"]) == {"train0", "train1", "val", "test"}
    for name, slide in result["slides"].items():
        truth = np.asarray(Image.open(tmp_path / "work" / cell.name / f"{name}_mask.png"))[CELL // 2::CELL,
                                                                                          CELL // 2::CELL]
        digits = np.bincount(truth[truth > 0].astype(np.int64) - 1, minlength=10)
        clusters = slide["clusters"].values()
        assert sum(c["patches"] for c in clusters) == slide["scores"]["patches"]["num_patches"] == digits.sum()
        per_digit = np.zeros(10, np.int64)
        for c in clusters:
            for d, n in c["digits"].items():
                per_digit[int(d)] += n
        assert (per_digit == digits).all()
    assert result["test_patch_accuracy"] == result["slides"]["test"]["scores"]["patches"]["accuracy"]
    assert result["count_accuracy"]["held_out_regions_last"] is not None
    assert result["refine"]["rounds"] and result["recipe"] == recipe and not result["refined_again"]

    # the same UCC model refined again with other refine settings; any other change is refused
    run = tmp_path / "work" / cell.name / "run-seed0"
    ucc = (run / "model-ucc.pt").read_bytes()
    cfg["refine"].update(rounds=2, count_iters=0, swaps=0)
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(cfg))
    again = run_cell(cell, argparse.Namespace(**{**vars(args), "refine_again": True}))
    assert again["refined_again"] and len(again["refine"]["rounds"]) == 2
    assert (run / "model-ucc.pt").read_bytes() == ucc
    assert "count_kmeans" not in again["refine"]["rounds"][0]
    cfg["train"]["lr"] = 1e-4
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit, match=r"trained with other settings \(train.lr\)"):
        run_cell(cell, argparse.Namespace(**{**vars(args), "refine_again": True}))
