"""Count-constrained k-means (pathoucc.cluster.counted): the counts move the centres and split joined classes."""

from __future__ import annotations

import numpy as np
import pytest

from pathoucc.cluster.counted import count_consistent_labels, fit_count_kmeans
from pathoucc.cluster.kmeans import fit_kmeans
from pathoucc.cluster.metrics import clustering_accuracy


def _cohort(seed: int, k: int = 6, regions: int = 120, per: int = 60, spread: float = 0.35):
    """Regions of ``per`` 2-D points holding 1-3 of ``k`` well-separated Gaussian classes, intermixed."""
    rng = np.random.default_rng(seed)
    while True:
        centres = rng.normal(size=(k, 2)) * 2.0
        gaps = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)) + np.eye(k) * 9
        if gaps.min() > 1.6:
            break
    x, y, region, count = [], [], [], []
    for r in range(regions):
        c = int(rng.integers(1, 4))
        classes = rng.choice(k, c, replace=False)
        labels = np.concatenate([classes, rng.choice(classes, per - c)])
        x.append(centres[labels] + rng.normal(size=(per, 2)) * spread)
        y.append(labels), region.append(np.full(per, r)), count.append(c)
    return np.concatenate(x).astype(np.float32), np.concatenate(y), np.concatenate(region), np.array(count)


def test_the_counts_split_two_classes_that_kmeans_joins():
    x, y, region, count = _cohort(27)
    plain, _ = fit_count_kmeans(x, region, count, 6, seed=0, n_init=1, max_iter=0)
    counted, info = fit_count_kmeans(x, region, count, 6, seed=0, n_init=1, max_iter=30)
    before = clustering_accuracy(y, count_consistent_labels(plain.distances(x), region, count))
    after = clustering_accuracy(y, count_consistent_labels(counted.distances(x), region, count))
    assert before < 0.85  # k-means joined two classes (and split another); the count correction cannot undo it
    assert after > 0.99
    assert info["reseeded"] >= 1 and info["changed"] > 0.2 and info["iterations"] < 30


def test_no_iterations_is_plain_kmeans():
    x, _, region, count = _cohort(3)
    plain, info = fit_count_kmeans(x, region, count, 6, seed=4, n_init=2, max_iter=0)
    np.testing.assert_array_equal(plain.centers, fit_kmeans(x, 6, 4, 2).cluster_centers_.astype(np.float32))
    assert info == {"iterations": 0, "reseeded": 0, "changed": 0.0}


def test_deterministic_and_every_cluster_kept():
    x, _, region, count = _cohort(8)
    a, _ = fit_count_kmeans(x, region, count, 6, seed=1, n_init=1, max_iter=30)
    b, _ = fit_count_kmeans(x, region, count, 6, seed=1, n_init=1, max_iter=30)
    np.testing.assert_array_equal(a.centers, b.centers)
    labels = count_consistent_labels(a.distances(x), region, count)
    assert np.bincount(labels, minlength=6).min() >= 1


def test_rows_must_lie_in_regions():
    x, _, region, count = _cohort(3)
    region = region.copy()
    region[0] = -1
    with pytest.raises(ValueError, match="one region >= 0 per feature row"):
        fit_count_kmeans(x, region, count, 6)


def _styled(seed: int, regions: int = 80, per: int = 40, single: float = 0.5, style: float = 1.0):
    """Two classes 1.2 apart along x, each drawn in two styles ``2 * style`` apart along y: k-means cuts by
    style; the regions holding one class (a share ``single`` of them) say the class cut is the right one."""
    rng = np.random.default_rng(seed)
    x, y, region, count = [], [], [], []
    for r in range(regions):
        c = 1 if rng.random() < single else 2
        classes = rng.choice(2, c, replace=False)
        labels = np.concatenate([classes, rng.choice(classes, per - c)])
        points = np.stack([np.where(labels == 0, -0.6, 0.6), rng.choice([-style, style], per)], 1)
        x.append(points + rng.normal(size=(per, 2)) * 0.2)
        y.append(labels), region.append(np.full(per, r)), count.append(c)
    return np.concatenate(x).astype(np.float32), np.concatenate(y), np.concatenate(region), np.array(count)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_previous_rounds_labels_are_kept_when_the_counts_prefer_them(seed):
    x, y, region, count = _styled(seed)
    fresh, _ = fit_count_kmeans(x, region, count, 2, seed=0, n_init=1)
    assert clustering_accuracy(y, fresh.distances(x).argmin(1)) < 0.55  # stuck on the style cut
    # the previous labels: the class cut with a tenth of the rows wrong, as a refinement round leaves them
    noisy = np.where(np.random.default_rng(seed).random(len(y)) < 0.1, 1 - y, y)
    kept, info = fit_count_kmeans(x, region, count, 2, seed=0, n_init=1, previous=noisy)
    assert clustering_accuracy(y, kept.distances(x).argmin(1)) > 0.99
    assert info["start"] == "previous" and info["costs"]["previous"] < info["costs"]["fresh"]


def test_worse_previous_labels_are_dropped():
    x, y, region, count = _cohort(27)
    fresh, plain_info = fit_count_kmeans(x, region, count, 6, seed=0, n_init=1)
    shuffled = np.random.default_rng(0).integers(0, 6, len(y))  # labels unrelated to the features
    kept, info = fit_count_kmeans(x, region, count, 6, seed=0, n_init=1, previous=shuffled)
    assert info["start"] == "fresh" and info["costs"]["fresh"] <= info["costs"]["previous"]
    np.testing.assert_array_equal(kept.centers, fresh.centers)
    assert {k: info[k] for k in plain_info} == plain_info
    with pytest.raises(ValueError, match="previous labels"):
        fit_count_kmeans(x, region, count, 6, previous=shuffled[:-1])


@pytest.mark.parametrize(("k", "seed"), [(6, 24), (8, 7)])
def test_split_and_drop_moves_leave_a_merged_pair(k, seed):
    x, y, region, count = _cohort(seed, k=k)
    stuck, info = fit_count_kmeans(x, region, count, k, seed=0, n_init=1)
    moved, moved_info = fit_count_kmeans(x, region, count, k, seed=0, n_init=1, swaps=3)
    accuracy = [clustering_accuracy(y, count_consistent_labels(m.distances(x), region, count)) for m in (stuck, moved)]
    assert accuracy[0] < 0.85 and "swaps" not in info  # the rounds settle with two classes in one cluster
    assert accuracy[1] > 0.99 and moved_info["swaps"] == 1


def test_split_and_drop_moves_keep_a_right_fit():
    x, _, region, count = _cohort(27)
    right, _ = fit_count_kmeans(x, region, count, 6, seed=0, n_init=1)
    again, info = fit_count_kmeans(x, region, count, 6, seed=0, n_init=1, swaps=3)
    assert info["swaps"] == 0
    np.testing.assert_array_equal(again.centers, right.centers)


def test_swaps_need_the_count_kmeans():
    from pathoucc.config import config_from_dict
    from pathoucc.errors import PathouccError

    config_from_dict({"refine": {"steps": 5, "swaps": 3}})
    for refine in ({"steps": 5, "swaps": 3, "count_iters": 0}, {"steps": 5, "swaps": 3, "examples": "e.csv"}):
        with pytest.raises(PathouccError, match=r"refine\.swaps moves the count k-means"):
            config_from_dict({"data": {"source": "tiles"}, "refine": refine})
