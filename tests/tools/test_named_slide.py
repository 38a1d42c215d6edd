"""tools/bench_named_slide.py: examples drawn from the training slides only, reproducible draws, and the named
map accuracy it reports equal to one counted by hand from the map the package wrote."""

import csv
import sys

import numpy as np
import pytest
import yaml
from helpers import tiny_cohort_recipe
from PIL import Image
from slide_fixtures import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from bench_named_slide import draw_examples, named_scores, run_bench, training_patches
from make_cohort import Cell, build_cell

CELL = 28


def test_named_scores_count_unnamed_clusters_as_wrong():
    clusters = np.array([0, 0, 1, 2, 2, 1, 0])
    labels = np.array([3, 3, 1, 1, -1, 1, 5])  # -1: glass, not scored
    scores = named_scores(clusters, ["3", "1", "cluster 2"], labels)
    # scored: 3->"3" ok, 3->"3" ok, 1->"1" ok, 1->"cluster 2" wrong, 1->"1" ok, 5->"3" wrong
    assert scores["accuracy"] == pytest.approx(4 / 6) and scores["num_patches"] == 6
    assert scores["per_class"] == {"1": pytest.approx(2 / 3), "3": 1.0, "5": 0.0}
    assert scores["unnamed_clusters"] == 1 and scores["unnamed_share"] == pytest.approx(1 / 6)
    skip = np.array([True, False, True, True, True, True, True])  # e.g. an example patch, never scored
    assert named_scores(clusters, ["3", "1", "cluster 2"], labels, skip)["num_patches"] == 5


@pytest.mark.slow
def test_named_slide_bench_on_a_tiny_trained_cell(tmp_path, monkeypatch):
    from pathoucc.config import load_config
    from pathoucc.training.train import train_ucc

    cell = Cell("intermixed", 90, 200, CELL)
    recipe = tiny_cohort_recipe(CELL)
    monkeypatch.setattr(Cell, "recipe", lambda self: recipe)
    built = build_cell(cell, tmp_path / "work")
    raw = yaml.safe_load((ROOT / "configs" / "digit-slide.yaml").read_text())
    raw["train"].update(steps=6, val_every=3, checkpoint_every=3, max_minutes=None)
    raw["refine"].update(steps=0)
    raw["model"].update(widths=[4, 8, 8], input_size=CELL)
    raw["data"].update(train_tiles=[str(p) for p in built["train_tiles"]], test_tiles=[str(built["val_tiles"])])
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(raw))
    run = built["folder"] / "run-seed0"
    train_ucc(load_config(tmp_path / "small.yaml"), run)
    kmeans = sorted(p.name for p in run.iterdir())

    patches = training_patches(built["train_tiles"], built["folder"])
    first = draw_examples(patches, 3, seed=7)
    assert first == draw_examples(patches, 3, seed=7) and first != draw_examples(patches, 3, seed=8)
    keep = tmp_path / "maps"
    result = run_bench(built["folder"], run, [3], draws=2, draw_seed=7, keep=keep)
    assert sorted(p.name for p in run.iterdir()) == kmeans  # the run itself is left as it was

    for draw in result["draws"]:
        rows = draw["examples"]
        assert draw_examples(patches, 3, draw["seed"]) == rows  # the draw is its seed's
        assert len(rows) == 30 and all(sum(r["class"] == str(d) for r in rows) == 3 for d in range(10))
        for r in rows:  # only training slides, each point on a patch of its class in that slide's mask
            assert r["slide"] in {"train0.tif", "train1.tif"}
            mask = np.asarray(Image.open(built["folder"] / r["slide"].replace(".tif", "_mask.png")))
            assert int(mask[r["y"], r["x"]]) - 1 == int(r["class"])
        with open(keep / f"n3-draw{draw['draw']}" / "examples.csv", newline="") as f:
            written = [{**row, "x": int(row["x"]), "y": int(row["y"])} for row in csv.DictReader(f)]
        assert written == rows
        assert draw["slides"]["test"]["num_examples"] == 0  # nothing on the held-out slides is an example
        for slide in ("val", "test"):  # by hand: the written map's names against the mask under each centre
            mask = np.asarray(Image.open(built["folder"] / f"{slide}_mask.png")).astype(np.int64) - 1
            with open(keep / f"n3-draw{draw['draw']}" / slide / "clusters.csv", newline="") as f:
                cells = [(int(r["x"]), int(r["y"]), r["name"]) for r in csv.DictReader(f)]
            hits = [name == str(mask[y + CELL // 2, x + CELL // 2]) for x, y, name in cells
                    if mask[y + CELL // 2, x + CELL // 2] >= 0]
            assert draw["slides"][slide]["num_patches"] == len(hits) > 0
            assert draw["slides"][slide]["accuracy"] == pytest.approx(np.mean(hits), abs=1e-12)
    assert set(result["unnamed"]["slides"]) == {"val", "test"}
    summary = result["summary"]["3"]["test"]
    assert summary["mean"] == pytest.approx(np.mean([d["slides"]["test"]["accuracy"] for d in result["draws"]]))
