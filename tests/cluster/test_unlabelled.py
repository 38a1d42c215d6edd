"""Held-out instances without patch labels are normal: evaluation reports what needs no labels (cluster sizes,
agreement of the clusters with each region's count, the logged count accuracy) and scores labels where some exist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import run_cli
from slide_fixtures import CELL

from pathoucc.cluster.evaluate import score_split
from pathoucc.cluster.metrics import clustering_scores, count_consistency
from pathoucc.config import config_from_dict
from pathoucc.data.pool import InstancePool
from pathoucc.slides.tilefile import open_tiles
from pathoucc.slides.tiler import tile_slide


def test_count_consistency_counts_the_clusters_holding_a_share_of_each_region() -> None:
    # region 0: 20 patches in clusters 0 and 1 (count 2: exact); region 1: 19 in cluster 2 and 1 stray in
    # cluster 0, below 10 % (count 1: exact); region 2: 10 + 10 in clusters 0, 2 but count 1 (off by one)
    clusters = np.array([0] * 10 + [1] * 10 + [2] * 19 + [0] + [0] * 10 + [2] * 10 + [1] * 5)
    region = np.array([0] * 20 + [1] * 20 + [2] * 20 + [-1] * 5)
    result = count_consistency(clusters, region, np.array([2, 1, 1, 3]), k=3, min_share=0.1)
    assert result == {"regions": 3, "exact": pytest.approx(2 / 3), "mean_abs_error": pytest.approx(1 / 3),
                      "min_share": 0.1}
    strict = count_consistency(clusters, region, np.array([2, 1, 1, 3]), k=3, min_share=0.0)
    assert strict["exact"] == pytest.approx(1 / 3)  # the stray patch now counts: region 1 holds 2 clusters
    assert count_consistency(clusters, np.full(len(clusters), -1), np.array([1]), k=3) is None


def _blobs(n: int = 90) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of 3 tight, far-apart classes (N, 2), their labels (N,), and 3 one-class regions of 30."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), n // 3)
    features = (np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])[labels] + rng.normal(0, 0.1, (n, 2)))
    return features.astype(np.float32), labels, labels.copy()


def test_partially_labelled_split_is_scored_on_its_labelled_instances() -> None:
    features, labels, region = _blobs()
    cfg = config_from_dict({"seed": 0, "eval": {"n_init": 2}})
    partial = labels.copy()
    partial[1::2] = -1  # every other instance unlabelled
    partial[partial == 2] = -1  # class 2 never labelled: k comes from the labelled classes (2) ...
    pool = InstancePool(np.zeros((len(labels), 2, 2, 3), np.uint8), partial, region, np.array([1, 1, 1]))
    result = score_split(features, pool, cfg, "test", "ucc")
    assert result["k"] == 2 and result["num_labelled"] == int((partial >= 0).sum()) == 30
    assert result["num_instances"] == 90 and sum(result["cluster_sizes"]) == 90
    assert result["kmeans"]["fit"] == "heldout" and "its 30 labelled instances (of 90)" in result["kmeans"]["fitted_on"]
    assert result["accuracy"] == 1.0 and result["nmi"] == pytest.approx(1.0)  # the two labelled classes split
    assert result["count_consistency"]["regions"] == 3
    assert result["count_consistency"]["exact"] == 1.0  # ... and the unlabelled class joins one cluster whole
    unlabelled = InstancePool(pool.images, np.full(90, -1), region, np.array([1, 2, 1]))
    cfg.eval.k = 3
    result = score_split(features, unlabelled, cfg, "test", "ucc")
    assert "accuracy" not in result and result["num_labelled"] == 0
    assert sorted(result["cluster_sizes"]) == [30, 30, 30]  # fitted on all 90: the three blobs
    assert result["count_consistency"]["exact"] == pytest.approx(2 / 3)  # region 1 claims 2 classes, holds 1
    labelled = InstancePool(pool.images, labels)
    result = score_split(features, labelled, cfg, "test", "ucc")
    assert "count_consistency" not in result  # no regions
    assert result["accuracy"] == clustering_scores(labels, labels)["accuracy"] == 1.0


@pytest.fixture(scope="module")
def count_only_tiles(digit_slide, tmp_path_factory) -> Path:
    """The digit slide's 4 regions from its CSV: counts only, no patch labels."""
    folder = tmp_path_factory.mktemp("countonly")
    return tile_slide(digit_slide["slide"], folder / "tiles", patch_size=CELL, level=0,
                      annotations=digit_slide["csv"], workers=1)


def test_train_on_count_only_tiles_with_unlabelled_test_tiles_exits_0(monkeypatch, capsys, count_only_tiles,
                                                                      tmp_path) -> None:
    with open_tiles(count_only_tiles) as tiles:
        assert (tiles.labels < 0).all() and tiles.num_regions == 4  # nothing to score against
        n = tiles.num_patches
    config = {
        "name": "countonly", "seed": 2,
        "data": {"source": "tiles", "train_tiles": [str(count_only_tiles)], "test_tiles": [str(count_only_tiles)],
                 "val_fraction": 0.25},
        "bags": {"bag_size": 8, "bags_per_batch": 3, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": "conv", "widths": [8, 16], "in_chans": 3, "input_size": CELL, "num_features": 4,
                  "mlp": [16], "decoder_widths": [16, 8]},
        "train": {"steps": 4, "val_every": 2, "checkpoint_every": 100, "log_every": 1, "val_bags": 3},
        "eval": {"k": 4, "n_init": 2, "batch_size": 64},
    }
    (tmp_path / "countonly.yaml").write_text(yaml.safe_dump(config))
    code, out, err = run_cli(monkeypatch, capsys, "train", str(tmp_path / "countonly.yaml"), "--out",
                             str(tmp_path / "run"))
    assert code == 0, err
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert "accuracy" not in test and test["num_labelled"] == 0 and test["num_instances"] == n
    assert len(test["cluster_sizes"]) == 4 and sum(test["cluster_sizes"]) == n
    assert test["kmeans"]["fit"] == "heldout" and test["kmeans"]["fitted_on"] == f"test split: all {n} instances " \
        "(none labelled)"
    consistency = test["count_consistency"]
    assert consistency["regions"] == 4 and 0 <= consistency["mean_abs_error"] <= 3
    assert (consistency["exact"] == 1.0) == (consistency["mean_abs_error"] == 0.0)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert test["val_ucc_accuracy"] == [r["val_ucc_acc"] for r in log if "val_ucc_acc" in r][-1]
    assert test["train_ucc_accuracy"] == [r["ucc_acc"] for r in log if "ucc_acc" in r][-1]
    assert "countonly (test)" in out and "regions" in out and "validation count accuracy" in out
