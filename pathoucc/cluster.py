"""Clustering of instance features and its scores: k-means, Hungarian-matched accuracy, NMI, ARI."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def fit_kmeans(features: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> KMeans:
    """Fit k-means with ``k`` clusters on ``features`` ``(N, J)``; deterministic for a given ``seed``."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) < k:
        raise ValueError(f"need at least k={k} feature rows of shape (N, J), got {features.shape}")
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(features)


def match_clusters(labels: np.ndarray, clusters: np.ndarray) -> dict[int, int]:
    """Best one-to-one map cluster -> class (Hungarian algorithm on the contingency table)."""
    classes, y = np.unique(labels, return_inverse=True)
    ids, c = np.unique(clusters, return_inverse=True)
    table = np.zeros((len(ids), len(classes)), dtype=np.int64)
    np.add.at(table, (c, y), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {int(ids[r]): int(classes[k]) for r, k in zip(rows, cols, strict=True)}


def clustering_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of instances whose cluster maps to their class under the best one-to-one matching."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    mapping = match_clusters(labels, clusters)
    predicted = np.array([mapping.get(int(c), -1) for c in clusters])
    return float(np.mean(predicted == labels))


def clustering_scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """``{"accuracy", "nmi", "ari"}`` of ``clusters`` against ground-truth ``labels`` (both ``(N,)``)."""
    return {
        "accuracy": clustering_accuracy(labels, clusters),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }
