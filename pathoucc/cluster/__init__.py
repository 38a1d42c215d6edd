"""Stage 5, clustering: a trained model's features (:mod:`.features`), the k-means fitted on them
(:mod:`.kmeans`: which features each fit uses is a named rule, :class:`KMeansFit`), scores with and without
labels (:mod:`.metrics`) and held-out evaluation into ``metrics.json`` (:mod:`.evaluate`).

The stage's surface is re-exported here; everything reads instances through the pool protocol
(:class:`~pathoucc.data.pool.Instances`: ``len``, ``shape``, ``read``).
"""

from __future__ import annotations

from pathoucc.cluster.evaluate import EvalResult, evaluate_raw_pixels, evaluate_run, evaluate_snapshots
from pathoucc.cluster.features import extract_features, iter_features
from pathoucc.cluster.kmeans import (
    MAX_FIT_PATCHES,
    ClusterModel,
    KMeansFit,
    cluster_run,
    fit_kmeans,
    fit_on_heldout,
    fit_on_train,
    load_or_fit,
)
from pathoucc.cluster.metrics import clustering_accuracy, clustering_scores, count_consistency

__all__ = [
    "MAX_FIT_PATCHES", "ClusterModel", "EvalResult", "KMeansFit", "cluster_run", "clustering_accuracy",
    "clustering_scores", "count_consistency", "evaluate_raw_pixels", "evaluate_run", "evaluate_snapshots",
    "extract_features", "fit_kmeans", "fit_on_heldout", "fit_on_train", "iter_features", "load_or_fit",
]
