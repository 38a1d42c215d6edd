"""Labelled patches in the refinement (refine.examples, pathoucc.cluster.labelled): they vote for and keep their
class's cluster, the per-round clusters are named by them, and a run refined with them saves a named k-means."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error, run_cli
from slide_fixtures import CELL, cell_class

from pathoucc.cluster import labelled as labelled_module
from pathoucc.cluster.counted import count_consistent_labels
from pathoucc.cluster.kmeans import ClusterModel
from pathoucc.cluster.labelled import fit_labelled_count_kmeans, labelled_pseudo_labels
from pathoucc.config import config_from_dict
from pathoucc.errors import PathouccError
from pathoucc.pipeline import refine_run
from pathoucc.run import kmeans_path
from pathoucc.slides.tilefile import open_tiles
from pathoucc.slides.tiler import tile_slide
from pathoucc.training.train import train_ucc


def _distances(nearest: list[int], k: int = 3) -> np.ndarray:
    """Patch i is nearest to cluster nearest[i] (0.0), then to the next cluster (1.0), the others 9.0."""
    d = np.full((len(nearest), k), 9.0, np.float32)
    for i, c in enumerate(nearest):
        d[i, c], d[i, (c + 1) % k] = 0.0, 1.0
    return d


def test_labelled_patches_vote_for_and_keep_their_cluster() -> None:
    #          region 0 (ucc 1)  | region 1 (ucc 2): two labelled patches of cluster 0 whose nearest is 1
    nearest = [0, 0, 0, 1, 2, 2, 1, 1, 1, 1, 1]
    region = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    fixed = np.array([-1, -1, -1, 1, -1, -1, -1, -1, -1, 0, 0])
    d, counts = _distances(nearest), np.array([1, 2])
    plain = count_consistent_labels(d, region, counts)
    assert plain.tolist() == [0, 0, 0, 0, 2, 2, 1, 1, 1, 1, 1]
    labels = labelled_pseudo_labels(d, region, counts, fixed)
    # region 0 keeps cluster 0 for the others, its labelled patch keeps 1; in region 1 the labelled votes make
    # cluster 0 one of its two (1: 3 votes, 0 and 2: 2 each, the lower index wins), so the patches nearest 2 take
    # their next nearest kept one, 0
    assert labels.tolist() == [0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0]


def test_the_round_fit_is_named_by_the_labelled_patches() -> None:
    rng = np.random.default_rng(0)
    means = np.array([[10.0, 0.0], [0.0, 0.0], [0.0, 10.0]])  # class c's points around means[c]
    truth = np.repeat(np.arange(3), 60)
    features = (means[truth] + rng.normal(0, 0.5, (len(truth), 2))).astype(np.float32)
    region = np.arange(len(truth)) // 10  # regions of one class each, count 1
    fixed = np.full(len(truth), -1)
    fixed[[0, 1, 60, 120]] = [0, 0, 1, 2]  # one or two labelled points per class
    fixed[5] = 2  # a wrong label: it stays as given
    centres, info = fit_labelled_count_kmeans(features, region, np.ones(18, np.int64), fixed, k=3, seed=3)
    assert centres.k == 3 and info["labelled"] == 5 and info["iterations"] >= 1
    nearest = centres.predict(features)
    free = fixed < 0
    assert (nearest[free] == truth[free]).all()  # cluster c is class c, with no matching
    assert np.allclose(centres.centers[:3], means, atol=0.5)
    again, _ = fit_labelled_count_kmeans(features, region, np.ones(18, np.int64), fixed, k=3, seed=3)
    assert np.array_equal(again.centers, centres.centers)
    alone, info0 = fit_labelled_count_kmeans(features, region, np.ones(18, np.int64), fixed, 3, 3, max_iter=0)
    assert info0["iterations"] == 0 and (alone.predict(features)[free] == truth[free]).all()


def test_examples_in_the_config_are_checked() -> None:
    tiles = {"source": "tiles", "train_tiles": ["a.h5"]}
    with pytest.raises(PathouccError, match=r"refine.example_classes names the classes of refine.examples"):
        config_from_dict({"data": tiles, "refine": {"steps": 5, "example_classes": ["a"]}})
    with pytest.raises(PathouccError, match=r"refine.examples labels patches of the refinement: set refine.steps"):
        config_from_dict({"data": tiles, "refine": {"examples": "x.csv"}})
    with pytest.raises(PathouccError, match=r"refine.examples labels patches of tile files"):
        config_from_dict({"data": {"source": "features", "features": ["f.h5"]}, "model": {"backbone": "mlp"},
                          "refine": {"steps": 5, "examples": "x.csv"}})
    assert config_from_dict({"data": tiles}).refine.examples is None  # off by default


@pytest.fixture(scope="module")
def region_tiles(digit_slide, tmp_path_factory) -> Path:
    """The digit slide tiled with 4 x 4-patch regions labelled from its mask."""
    return tile_slide(digit_slide["slide"], tmp_path_factory.mktemp("labelled") / "tiles", patch_size=CELL,
                      stride=CELL, level=0, region_size=4 * CELL, annotations=digit_slide["mask"], workers=1)


def _write_examples(path: Path, tiles: Path, cells: np.ndarray, per_class: int = 2, wrong: str | None = None) -> list:
    """``per_class`` patch centres of each of the first three classes on the slide, as a ``slide,x,y,class`` CSV."""
    with open_tiles(tiles) as t:
        coords = np.asarray(t.coords)
        slide = Path(t.slide_path).name
    rows, chosen = [], {}
    for x, y in coords.tolist():
        c = cell_class(cells, x, y)
        if c < 0 or (c not in chosen and len(chosen) == 3) or chosen.get(c, 0) == per_class:
            continue
        chosen[c] = chosen.get(c, 0) + 1
        rows.append({"slide": slide, "x": x + CELL // 2, "y": y + CELL // 2, "class": wrong or str(c)})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["slide", "x", "y", "class"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_a_run_refined_with_labelled_patches(digit_slide, region_tiles: Path, tmp_path: Path, monkeypatch,
                                             capsys) -> None:
    cfg = config_from_dict({
        "seed": 0, "data": {"source": "tiles", "train_tiles": [str(region_tiles)], "val_fraction": 0.0},
        "bags": {"bag_size": 4, "bags_per_batch": 2, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": "conv", "widths": [8], "in_chans": 3, "input_size": CELL, "num_features": 4,
                  "mlp": [4]},
        "train": {"steps": 2, "val_every": 2, "checkpoint_every": 2, "log_every": 2, "val_bags": 2},
        "eval": {"k": 10, "n_init": 1}, "refine": {"steps": 4, "batch_size": 16, "count_iters": 3},
    })
    run = train_ucc(cfg, tmp_path / "run")
    examples = tmp_path / "examples.csv"
    rows = _write_examples(examples, region_tiles, digit_slide["cells"])
    classes = list(dict.fromkeys(r["class"] for r in rows))
    assert len(rows) == 6 and len(classes) == 3
    seen = []
    real = labelled_module.labelled_pseudo_labels

    def spy(distances, region, region_count, fixed):
        labels = real(distances, region, region_count, fixed)
        seen.append((fixed.copy(), labels.copy()))
        return labels

    monkeypatch.setattr("pathoucc.cluster.refine.labelled_pseudo_labels", spy)
    summary = refine_run(run, [f"refine.examples={examples}", "refine.count_iters=3"])
    fixed, labels = seen[0]
    assert (fixed >= 0).sum() == 6 and (labels[fixed >= 0] == fixed[fixed >= 0]).all()  # kept, fixed
    first = summary["rounds"][0]
    assert first["labelled_kmeans"]["labelled"] == 6 and 0 <= first["labelled_nearest_own"] <= 1
    assert "count_kmeans" not in first
    assert summary["examples"]["labelled_patches"] == 6 and summary["examples"]["names"][:3] == classes
    assert json.loads((run / "refine.json").read_text())["examples"]["names"][:3] == classes
    named = ClusterModel.load(kmeans_path(run, 10))
    assert named.cluster_names[:3] == classes and named.cluster_names[3] == "cluster 3"

    # bad examples: one line naming the file, before the run's outputs change
    before = (run / "model.pt").read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "refine", str(run), "--set", f"refine.examples={tmp_path / 'no.csv'}")
    assert code != 0
    one_line_error(err, "no.csv")
    _write_examples(examples, region_tiles, digit_slide["cells"], wrong="tumour")
    code, _, err = run_cli(monkeypatch, capsys, "refine", str(run), "--set", f"refine.examples={examples}",
                           "--set", "refine.example_classes=[a,b]")
    assert code != 0
    one_line_error(err, "examples.csv", "'tumour' is not one of the given classes")
    assert (run / "model.pt").read_bytes() == before
