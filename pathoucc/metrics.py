"""Scores of a clustering against ground truth: Hungarian-matched accuracy, NMI, ARI; per-class Dice and IoU."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


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
