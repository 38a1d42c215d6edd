"""Segmenting one slide: every patch of its tile file -> features -> the run's k-means -> a cluster per patch and a
cluster map; and the scores of that segmentation against ground truth (patch labels or a label mask)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathoucc.cluster.features import iter_features
from pathoucc.cluster.kmeans import ClusterModel
from pathoucc.cluster.metrics import clustering_scores, dice_iou, match_clusters
from pathoucc.errors import PathouccError
from pathoucc.runtime import progress_bar
from pathoucc.segment.grid import MapGrid, accumulate_map, map_grid
from pathoucc.slides.annotations.mask import read_label_mask
from pathoucc.slides.annotations.raster import patch_labels
from pathoucc.slides.patchfile import PatchFile

__all__ = ["Segmentation", "score_segmentation", "segment_tiles"]


@dataclass
class Segmentation:
    """The result for one tile file (arrays are per patch unless noted)."""

    name: str
    tiles_path: Path
    coords: np.ndarray  # (N, 2) int64 level-0 (x, y)
    clusters: np.ndarray  # (N,) int64
    distances: np.ndarray  # (N, K) float32 squared feature distances to the centres
    probabilities: np.ndarray  # (N, K) float32 soft assignments
    grid: MapGrid
    cluster_map: np.ndarray  # (H, W) int16, -1 = no patch
    labels: np.ndarray | None = None  # (N,) int64, -1 unknown
    class_names: list[str] | None = None
    cluster_names: list[str] = field(default_factory=list)  # (K,) the k-means' names ("cluster c" unnamed)
    examples: np.ndarray | None = None  # (N,) int64 the cluster a labelled example names, -1 = not an example
    scores: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def segment_tiles(model: torch.nn.Module, cluster_model: ClusterModel, tiles: PatchFile, batch_size: int = 256,
                  device: torch.device | str = "cpu", progress: bool = False,
                  dtype: torch.dtype | None = None) -> Segmentation:
    """Cluster every patch of an open tile file (streamed ``batch_size`` at a time, under autocast ``dtype``) and
    build its map.

    ``model`` has ``extract_features((n, 3, P, P) in [0, 1]) -> (n, J)`` with J = ``cluster_model.num_features``.
    """
    n, k = tiles.num_patches, cluster_model.k
    distances = np.empty((n, k), np.float32)
    with progress_bar(progress, tiles.path.stem, n) as advance:
        for where, features in iter_features(model, tiles, batch_size, device, dtype=dtype):
            if features.shape[1] != cluster_model.num_features:
                raise PathouccError(f"the model gives {features.shape[1]} features but the k-means centres have "
                                    f"{cluster_model.num_features}", tiles.path)
            distances[where] = cluster_model.distances(features)
            advance(len(features))
    probabilities = cluster_model.soft(distances)
    clusters = distances.argmin(1).astype(np.int64)
    grid = map_grid(tiles, k)
    cells = grid.patch_cells(tiles.coords)
    if grid.span == 1:  # each cell has at most one patch: the map is the patch clusters
        cluster_map = np.full(grid.shape, -1, np.int16)
        cluster_map[cells[:, 0], cells[:, 1]] = clusters
    else:
        sums, counts = accumulate_map(cells, probabilities, grid)
        cluster_map = np.where(counts > 0, sums.argmax(2), -1).astype(np.int16)
    return Segmentation(tiles.path.stem, tiles.path, tiles.coords, clusters, distances, probabilities, grid,
                        cluster_map, tiles.labels, tiles.class_names, cluster_model.cluster_names)


def score_segmentation(seg: Segmentation, tiles: PatchFile, mask: str | Path | None = None,
                       named: bool = False) -> dict[str, Any] | None:
    """Scores against the ground truth, or None without any: the tile file's patch labels, or ``mask``.

    Labelled examples (``seg.examples`` >= 0) and the map cells they cover are never scored. With ``named``
    (the ``examples`` fit) ``named`` scores each patch and cell by its cluster's *name* against the class name,
    with no matching (a cluster whose name is no class is wrong).

    ``mask`` is a label image aligned with level 0 at any downsample (0 = unlabelled, v = class v - 1); it
    relabels the patches (majority under each patch) and each map cell. Without a mask a cell's class is the
    majority label of the patches covering it. Clusters are matched one-to-one to classes on the patches
    (Hungarian); the map is scored after that matching.
    """
    grid = seg.grid
    if mask is not None:
        raster = read_label_mask(mask, tiles.slide_dimensions, classes=tiles.class_names)
        labels = patch_labels(raster, seg.coords, tiles.patch_size * tiles.downsample)
        truth = patch_labels(raster, grid.cell_coords(), grid.cell).reshape(grid.shape)
        names = raster.class_names
    elif seg.labels is not None and (seg.labels >= 0).any():
        labels, names = seg.labels, seg.class_names
        votes_k = int(labels.max()) + 1
        onehot = np.zeros((len(labels), votes_k), np.float32)
        known = labels >= 0
        onehot[np.flatnonzero(known), labels[known]] = 1
        cells = grid.patch_cells(seg.coords)
        sums, _ = accumulate_map(cells[known], onehot[known], grid)
        truth = np.where(sums.max(2) > 0, sums.argmax(2), -1)
    else:
        return None
    known = labels >= 0
    if not known.any():
        raise PathouccError("the mask labels none of the patches (it does not overlap the tissue)", mask)
    examples = seg.examples if seg.examples is not None else np.full(len(labels), -1, np.int64)
    known &= examples < 0
    if not known.any():
        raise PathouccError("every labelled patch is a labelled example; none is left to score", seg.tiles_path)
    names = list(names) if names else [str(i) for i in range(int(max(labels.max(), truth.max())) + 1)]
    seg.labels, seg.class_names = labels, names
    patch = clustering_scores(labels[known], seg.clusters[known]) | {"num_patches": int(known.sum())}
    mapping = match_clusters(labels[known], seg.clusters[known])
    lookup = np.full(seg.distances.shape[1], -1, np.int64)
    for cluster, cls in mapping.items():
        lookup[cluster] = cls
    valid = (seg.cluster_map >= 0) & (truth >= 0)
    if (examples >= 0).any():  # cells under an example are not scored either
        cells = grid.patch_cells(seg.coords[examples >= 0])
        valid &= accumulate_map(cells, np.ones((len(cells), 1), np.float32), grid)[1] == 0
    pred, gt = lookup[seg.cluster_map[valid].astype(np.int64)], truth[valid]
    per_class = {names[c] if c < len(names) else str(c): v for c, v in dice_iou(pred, gt).items()}
    in_truth = [v for name, v in per_class.items() if v["cells"] > 0]
    map_scores = {
        "accuracy": float(np.mean(pred == gt)) if gt.size else 0.0,
        "mean_dice": float(np.mean([v["dice"] for v in in_truth])) if in_truth else 0.0,
        "mean_iou": float(np.mean([v["iou"] for v in in_truth])) if in_truth else 0.0,
        "num_cells": int(valid.sum()), "cell": grid.cell, "per_class": per_class,
    }
    out = {"slide": seg.name, "k": int(seg.distances.shape[1]), "ground_truth": str(mask or "tile labels"),
           "cluster_names": list(seg.cluster_names), "patches": patch, "map": map_scores,
           "matching": {f"cluster {c}": names[v] if v < len(names) else str(v) for c, v in sorted(mapping.items())},
           "num_examples": int((examples >= 0).sum())}
    if named:
        by_name = np.asarray([names.index(n) if n in names else -1 for n in seg.cluster_names], np.int64)
        named_pred = by_name[seg.cluster_map[valid].astype(np.int64)]
        per_name = {names[c] if c < len(names) else str(c): v for c, v in dice_iou(named_pred, gt).items()}
        out["named"] = {
            "patches": {"accuracy": float(np.mean(by_name[seg.clusters[known]] == labels[known]))},
            "map": {"accuracy": float(np.mean(named_pred == gt)) if gt.size else 0.0,
                    "per_class": {n: v for n, v in per_name.items() if n in names}}}
    return out
