"""Scores of a clustering: against ground truth (Hungarian-matched accuracy, NMI, ARI; per-class Dice and IoU),
and without it (cluster sizes, agreement of the clusters with each region's count)."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

__all__ = ["COUNT_SHARE", "CountConsistency", "cluster_sizes", "clustering_accuracy", "clustering_scores",
           "count_consistency", "dice_iou", "match_clusters"]

COUNT_SHARE = 0.05  # a cluster is "in" a region when it holds at least this share of the region's patches


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


def dice_iou(predicted: np.ndarray, truth: np.ndarray) -> dict[int, dict[str, float | int]]:
    """Per class ``c`` of ``truth`` or ``predicted`` (both ``(N,)`` int, same class ids; ``-1`` in ``predicted``
    = no class): ``{"dice", "iou", "cells"}`` with ``cells`` the number of ``truth == c``."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    out = {}
    for c in np.unique(np.concatenate([truth, predicted[predicted >= 0]])).tolist():
        tp = int(np.sum((predicted == c) & (truth == c)))
        p, t = int(np.sum(predicted == c)), int(np.sum(truth == c))
        out[c] = {"dice": 2 * tp / (p + t) if p + t else 0.0, "iou": tp / (p + t - tp) if p + t - tp else 0.0,
                  "cells": t}
    return out


def cluster_sizes(clusters: np.ndarray, k: int) -> list[int]:
    """Instances in each of the ``k`` clusters (``clusters`` (N,) int in 0..k-1)."""
    return np.bincount(np.asarray(clusters, np.int64), minlength=k).tolist()


class CountConsistency(TypedDict):
    """How well clusters agree with region counts, without patch labels.

    regions : regions with at least one patch; exact : share of them whose patches fall in exactly ``count``
    clusters holding >= ``min_share`` of the region's patches each; mean_abs_error : mean |such clusters - count|.
    """

    regions: int
    exact: float
    mean_abs_error: float
    min_share: float


def count_consistency(clusters: np.ndarray, region: np.ndarray, region_count: np.ndarray, k: int,
                      min_share: float = COUNT_SHARE) -> CountConsistency | None:
    """Agreement of ``clusters`` (N,) with the counts ``region_count`` (R,) of the regions ``region`` (N,) (-1 =
    in none); None when no region holds a patch."""
    region, clusters = np.asarray(region, np.int64), np.asarray(clusters, np.int64)
    inside = region >= 0
    ucc = np.asarray(region_count, np.int64)
    table = np.bincount(region[inside] * k + clusters[inside], minlength=len(ucc) * k).reshape(len(ucc), k)
    sizes = table.sum(1)
    present = sizes > 0
    if not present.any():
        return None
    held = ((table > 0) & (table >= min_share * sizes[:, None])).sum(1)[present]
    error = np.abs(held - ucc[present])
    return {"regions": int(present.sum()), "exact": float(np.mean(error == 0)),
            "mean_abs_error": float(error.mean()), "min_share": min_share}
