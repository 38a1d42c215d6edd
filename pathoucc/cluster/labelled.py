"""Labelled patches in the count-consistent refinement (``refine.examples``, off by default).

A few patches a user named (:mod:`pathoucc.slides.annotations.examples`) become FIXED pseudo-labels of the
refinement (:mod:`pathoucc.cluster.refine`), and they name its clusters. Per round:

1. the clusters start from constrained k-means (:mod:`.constrained`: each class's centre at the mean of its
   labelled patches, the labelled patches kept in their class), so cluster ``c < C`` is class ``c``'s;
2. with ``refine.count_iters`` > 0, the count-constrained iterations of :mod:`.counted` follow, the labelled
   patches fixed inside them (:func:`fit_labelled_count_kmeans`): each region keeps its ``c`` largest clusters
   (a labelled patch votes for its class's), every other patch takes the nearest kept one, every centre moves to
   the mean of its patches;
3. the round's pseudo-labels (:func:`labelled_pseudo_labels`): the labelled patches their class's cluster, the
   others the count-consistent label.

:func:`pool_examples` finds the labelled patches among the refinement's training patches (the regions the run
trains on; examples in its held-out regions or outside every region are skipped, with a note).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathoucc.cluster.constrained import constrained_kmeans
from pathoucc.cluster.counted import count_consistent_labels
from pathoucc.cluster.kmeans import ClusterModel
from pathoucc.config import Config
from pathoucc.data.sources import load_pools
from pathoucc.errors import PathouccError
from pathoucc.slides.annotations.examples import class_list, label_examples, read_examples
from pathoucc.slides.tilefile import open_tiles

__all__ = ["PoolExamples", "fit_labelled_count_kmeans", "labelled_pseudo_labels", "pool_examples"]


@dataclass
class PoolExamples:
    """The labelled patches of the refinement's training pool: ``clusters`` (N,) int64 the cluster each one keeps
    (named clusters first, in class order; -1 = not labelled), ``names`` (k,) the clusters' names (``cluster c``
    for those without a class) and ``notes`` (skips), one line each."""

    clusters: np.ndarray
    names: list[str]
    notes: list[str] = field(default_factory=list)


def pool_examples(cfg: Config, k: int, pool_rows: int) -> PoolExamples:
    """The labelled patches of ``cfg.refine.examples`` in the ``train`` pool of ``cfg.data`` (``pool_rows``
    patches, in that pool's order). Raises (naming the file) when none lies on a training patch, a class is not
    in ``refine.example_classes``, a patch gets two classes, or more classes have examples than ``k``."""
    path = Path(str(cfg.refine.examples))
    stems, labels, notes = [], [], []
    for tiles_path in cfg.data.train_tiles:
        with open_tiles(tiles_path, cfg.data.slide_dir) as tiles:
            stems.append(Path(tiles.slide_path).stem)
    examples = read_examples(path, stems)
    classes = class_list(examples, cfg.refine.example_classes, path)
    for tiles_path in cfg.data.train_tiles:
        with open_tiles(tiles_path, cfg.data.slide_dir) as tiles:
            lab = label_examples(examples, classes, tiles.coords, tiles.patch_size * tiles.downsample,
                                 tiles.slide_path, path)
        labels.append(lab.labels)
        notes += lab.notes
    every = np.concatenate(labels)
    rows = load_pools(cfg.data.model_copy(update={"streaming": True}), ("train",))["train"].rows  # same order
    if len(rows) != pool_rows:
        raise PathouccError(f"the training pool has {pool_rows} patches but its tile files give {len(rows)}", path)
    mine = every[rows]
    if (lost := int((every >= 0).sum() - (mine >= 0).sum())):
        notes.append(f"{path.name}: {lost} labelled patch(es) lie in held-out (data.val_fraction) regions or in no "
                     "region; the refinement does not see them")
    present = np.unique(mine[mine >= 0])
    if not present.size:
        raise PathouccError(f"none of the {len(examples)} labelled examples lies on a patch of the training "
                            "regions of data.train_tiles", path)
    if len(present) > k:
        raise PathouccError(f"{len(present)} classes have labelled patches but k={k}: each needs its own cluster",
                            path)
    to_cluster = np.full(len(classes), -1, np.int64)
    to_cluster[present] = np.arange(len(present))
    if missing := [classes[c] for c in range(len(classes)) if c not in present]:
        notes.append(f"{path.name}: no labelled training patch of class(es) {', '.join(missing)}; their patches "
                     "fall in unnamed clusters")
    names = [classes[c] for c in present] + [f"cluster {c}" for c in range(len(present), k)]
    return PoolExamples(np.where(mine >= 0, to_cluster[np.maximum(mine, 0)], -1), names, notes)


def labelled_pseudo_labels(distances: np.ndarray, region: np.ndarray, region_count: np.ndarray,
                           fixed: np.ndarray) -> np.ndarray:
    """Count-consistent labels ``(N,)`` (:func:`~.counted.count_consistent_labels` of ``distances`` (N, K)) in
    which each labelled patch (``fixed`` (N,) >= 0) votes for, and keeps, its cluster ``fixed``."""
    fixed = np.asarray(fixed, np.int64)
    labelled = np.flatnonzero(fixed >= 0)
    votes = np.array(distances, np.float32)
    votes[labelled] = np.inf
    votes[labelled, fixed[labelled]] = 0.0
    labels = count_consistent_labels(votes, region, region_count)
    labels[labelled] = fixed[labelled]
    return labels


def fit_labelled_count_kmeans(features: np.ndarray, region: np.ndarray, region_count: np.ndarray,
                              fixed: np.ndarray, k: int, seed: int = 0,
                              max_iter: int = 30) -> tuple[ClusterModel, dict]:
    """The round's fit with labelled patches: constrained k-means of ``features`` (N, J) given the labelled rows
    (``fixed`` (N,) their cluster ``0..C-1``, -1 elsewhere), then at most ``max_iter`` rounds of
    :func:`labelled_pseudo_labels` and centre update (``region`` (N,) >= 0 each row's region, ``region_count``
    (R,) the counts), stopping when the labels no longer change. A cluster left empty keeps its centre. Returns
    the centres and ``{"iterations", "changed", "labelled"}`` (rounds run, share of rows whose label differs from
    the first round's, labelled rows). Deterministic for a given ``seed``."""
    features = np.asarray(features, np.float32)
    fixed = np.asarray(fixed, np.int64)
    labelled = fixed >= 0
    if len(fixed) != len(features):
        raise ValueError(f"need one fixed label per feature row: {fixed.shape} for {features.shape}")
    fit = constrained_kmeans(features[~labelled], features[labelled], fixed[labelled], k, seed)
    centres = fit.centers.copy()
    first = previous = None
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        labels = labelled_pseudo_labels(ClusterModel(centres).distances(features), region, region_count, fixed)
        first = labels if first is None else first
        if previous is not None and np.array_equal(labels, previous):
            break
        previous = labels
        for j in np.flatnonzero(np.bincount(labels, minlength=k)):
            centres[j] = features[labels == j].mean(0)
    changed = float(np.mean(previous != first)) if previous is not None else 0.0
    return ClusterModel(centres, seed=seed), {"iterations": iterations if max_iter else 0, "changed": changed,
                                              "labelled": int(labelled.sum())}
