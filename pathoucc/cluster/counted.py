"""Clusters that agree with the regions' counts: the refinement's per-round fit (:mod:`pathoucc.cluster.refine`).

A region labelled ``c`` holds exactly ``c`` classes. :func:`count_consistent_labels` corrects one clustering to
that; :func:`fit_count_kmeans` goes further and lets the counts move the centres. It alternates

1. the count-consistent assignment: in each region only its ``c`` largest clusters are kept and each patch takes
   the nearest kept one;
2. each centre becomes the mean of the patches so assigned;
3. a cluster left (nearly) empty — the counts gave its patches to others, as when k-means has split one class in
   two — is re-seeded by splitting the cluster with the largest squared error (two-means of its patches): a
   cluster that holds two classes is the one whose split the counts then keep;
4. with ``swaps`` > 0, once the rounds have settled, a local search (split-and-drop moves): the cluster of largest
   squared error is split in two and any other cluster dropped, the rounds run again, and the move is kept if the
   count-consistent cost falls; at most ``swaps`` moves. A merged pair of classes beside a small mixed cluster is
   a local optimum of the rounds that such a move leaves.

From the refinement's second round on, the rounds also start from the last round's pseudo-labels (the features
were just trained on them; a fresh k-means may cut them along another direction) and the start with the lower
count-consistent cost is kept.

Plain k-means on weak features may join two classes and split a third; the counts of the regions that hold only
one of the joined classes pull them apart. On the hardest digit-slide cohort cell this raised the first round's
pseudo-labels from 0.73 / 0.52 (two seeds) to 0.90 / 0.90 of the region patches right (docs/benchmarks.md).
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.cluster import KMeans

from pathoucc.cluster.kmeans import MAX_FIT_PATCHES, ClusterModel, fit_kmeans
from pathoucc.data.pool import subsample

__all__ = ["count_consistent_labels", "fit_count_kmeans"]

log = logging.getLogger(__name__)


def count_consistent_labels(distances: np.ndarray, region: np.ndarray, region_count: np.ndarray) -> np.ndarray:
    """Pseudo-labels ``(N,)`` int64 that agree with every region's count; -1 outside regions.

    distances : (N, K) squared distances of each patch to the K cluster centres.
    region : (N,) int64 region of each patch (-1 = in none).
    region_count : (R,) int64 count (number of distinct classes) of each region.

    In a region of count ``c`` the ``c`` clusters nearest to most of its patches are kept (ties: the lower
    cluster index); each of its patches takes the nearest kept cluster. A region whose patches fall in fewer than
    ``c`` clusters keeps those.
    """
    distances = np.asarray(distances, np.float32)
    region = np.asarray(region, np.int64)
    count = np.asarray(region_count, np.int64)
    if distances.ndim != 2 or len(distances) != len(region):
        raise ValueError(f"distances {distances.shape} and region {region.shape} do not match")
    if len(region) and region.max(initial=-1) >= len(count):
        raise ValueError(f"region index {int(region.max())} has no count (only {len(count)} regions)")
    k = distances.shape[1]
    nearest = distances.argmin(1)
    out = np.full(len(region), -1, np.int64)
    inside = np.flatnonzero(region >= 0)
    order = inside[np.argsort(region[inside], kind="stable")]
    ids, starts = np.unique(region[order], return_index=True)
    for r, idx in zip(ids.tolist(), np.split(order, starts[1:]), strict=True):
        sizes = np.bincount(nearest[idx], minlength=k)
        present = np.flatnonzero(sizes)
        keep = present[np.argsort(-sizes[present], kind="stable")][: max(1, int(count[r]))]
        out[idx] = keep[distances[np.ix_(idx, keep)].argmin(1)]
    return out


def _count_cost(centres: np.ndarray, features: np.ndarray, region: np.ndarray, region_count: np.ndarray) -> float:
    """Mean squared distance of the rows to their count-consistent centre: what the count fit lowers."""
    distances = ClusterModel(centres).distances(features)
    labels = count_consistent_labels(distances, region, region_count)
    return float(distances[np.arange(len(labels)), labels].mean())


def _count_rounds(centres: np.ndarray, features: np.ndarray, region: np.ndarray, region_count: np.ndarray,
                  seed: int, max_iter: int, floor: int) -> tuple[np.ndarray, dict]:
    """The count-constrained rounds of :func:`fit_count_kmeans` from ``centres`` (K, J), updated in place."""
    k = len(centres)
    first = previous = None
    reseeded = iterations = 0
    for iterations in range(1, max_iter + 1):
        labels = count_consistent_labels(ClusterModel(centres).distances(features), region, region_count)
        first = labels if first is None else first
        sizes = np.bincount(labels, minlength=k)
        for j in np.flatnonzero(sizes):
            centres[j] = features[labels == j].mean(0)
        small = np.flatnonzero(sizes < floor)
        if previous is not None and not small.size and np.array_equal(labels, previous):
            break
        previous = labels
        split: set[int] = set()
        for j in small.tolist():
            error = np.array([((features[labels == c] - centres[c]) ** 2).sum() if c not in split and
                              sizes[c] >= 2 * floor else -1.0 for c in range(k)])
            big = int(error.argmax())
            if error[big] <= 0:
                break
            pair = KMeans(2, n_init=3, random_state=seed + iterations).fit(features[labels == big])
            centres[big], centres[j] = pair.cluster_centers_.astype(np.float32)
            split |= {big, j}
            reseeded += 1
    changed = float(np.mean(previous != first)) if previous is not None else 0.0
    return centres, {"iterations": iterations, "reseeded": reseeded, "changed": changed}


def _swap_moves(centres: np.ndarray, features: np.ndarray, region: np.ndarray, region_count: np.ndarray,
                seed: int, max_iter: int, floor: int, swaps: int) -> tuple[np.ndarray, int]:
    """Step 4 of the module's fit: at most ``swaps`` split-and-drop moves from ``centres`` (K, J), each kept only
    if it lowers the count-consistent cost by more than 1e-4 of it. Returns the centres and the moves kept."""
    k, cost, kept = len(centres), _count_cost(centres, features, region, region_count), 0
    for move in range(swaps):
        labels = count_consistent_labels(ClusterModel(centres).distances(features), region, region_count)
        error = np.array([((features[labels == c] - centres[c]) ** 2).sum() for c in range(k)])
        big = int(error.argmax())
        if (labels == big).sum() < 2:
            break
        pair = KMeans(2, n_init=3, random_state=seed + move).fit(features[labels == big]).cluster_centers_
        best, best_cost = None, cost * (1 - 1e-4)
        for drop in (c for c in range(k) if c != big):
            trial = centres.copy()
            trial[big], trial[drop] = pair.astype(np.float32)
            trial, _ = _count_rounds(trial, features, region, region_count, seed, max_iter, floor)
            if (trial_cost := _count_cost(trial, features, region, region_count)) < best_cost:
                best, best_cost = trial, trial_cost
        if best is None:
            break
        centres, cost, kept = best, best_cost, kept + 1
    return centres, kept


def fit_count_kmeans(features: np.ndarray, region: np.ndarray, region_count: np.ndarray, k: int, seed: int = 0,
                     n_init: int = 10, max_iter: int = 30, min_share: float = 1e-3,
                     previous: np.ndarray | None = None, swaps: int = 0) -> tuple[ClusterModel, dict]:
    """Count-constrained k-means of the region patches' ``features`` ``(N, J)``.

    region : (N,) int64 region of each row, all >= 0; region_count : (R,) count of each region.
    Starts from k-means (``n_init`` restarts on at most MAX_FIT_PATCHES rows, seeded), then runs at most
    ``max_iter`` rounds of count-consistent assignment and centre update (``max_iter`` 0: the k-means alone); a
    cluster holding fewer than ``max(1, min_share * N)`` rows after a round is re-seeded from the cluster with the
    largest squared error. Stops when the assignment no longer changes.

    previous : (N,) int64 labels of an earlier fit (0..k-1; the refinement's last round): the rounds are also
    run from the centres these labels give the new features, and the start whose result has the lower
    count-consistent cost (mean squared distance to the assigned centre; fresh on a tie) is kept — a refinement
    round trained the features on those labels, and a fresh k-means may cut them along another direction.
    swaps : at most this many split-and-drop moves after the rounds of each start (0 = none; step 4 above).

    Returns the centres and ``{"iterations", "reseeded", "changed"}`` (rounds run, clusters re-seeded, share of
    rows whose count-consistent label differs from the first round's; with ``previous`` also ``"start"``, fresh
    or previous, and both ``"costs"``; with ``swaps`` also ``"swaps"``, the moves kept). Deterministic for a
    given ``seed``.
    """
    features = np.asarray(features, np.float32)
    region = np.asarray(region, np.int64)
    if len(region) != len(features) or (len(region) and region.min() < 0):
        raise ValueError(f"need one region >= 0 per feature row: {region.shape} for {features.shape}")
    fit = subsample(len(features), MAX_FIT_PATCHES, seed)
    floor = max(1, int(min_share * len(features)))
    centres = fit_kmeans(features[fit], k, seed, n_init).cluster_centers_.astype(np.float32)
    centres, info = _count_rounds(centres, features, region, region_count, seed, max_iter, floor)
    if swaps and max_iter:
        centres, moves = _swap_moves(centres, features, region, region_count, seed, max_iter, floor, swaps)
        info["swaps"] = moves
    if previous is not None:
        previous = np.asarray(previous, np.int64)
        if previous.shape != region.shape or previous.min(initial=0) < 0 or previous.max(initial=0) >= k:
            raise ValueError(f"previous labels {previous.shape} must be (N,) in 0..{k - 1}")
        sizes = np.bincount(previous, minlength=k)
        start = np.zeros_like(centres)
        np.add.at(start, previous, features)
        start[sizes > 0] /= sizes[sizes > 0, None]
        start[sizes == 0] = centres[sizes == 0]  # an empty label keeps the fresh centre (re-seeded if need be)
        warm, warm_info = _count_rounds(start, features, region, region_count, seed, max_iter, floor)
        if swaps and max_iter:
            warm, moves = _swap_moves(warm, features, region, region_count, seed, max_iter, floor, swaps)
            warm_info["swaps"] = moves
        costs = {"fresh": _count_cost(centres, features, region, region_count),
                 "previous": _count_cost(warm, features, region, region_count)}
        if costs["previous"] < costs["fresh"]:
            centres, info = warm, warm_info
        info = info | {"start": "previous" if centres is warm else "fresh", "costs": costs}
    log.debug("count k-means: %s", info)
    return ClusterModel(centres, seed=seed), info
