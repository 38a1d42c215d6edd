"""Segmentation: every patch of a slide -> features -> the run's shared k-means -> a cluster map over the slide.

Per tile file, ``<out>/<slide stem>/`` receives (all or nothing: written in a temporary folder, renamed at the end)

* ``clusters.h5``  coords (N, 2) level-0, cluster (N,), distances and probabilities (N, K), labels (N,) if known,
  map (H, W) int16 with attribute ``cell`` (level-0 px per map cell);
* ``clusters.csv`` ``x,y,cluster[,label]`` per patch;
* ``cluster_map.png`` one pixel per map cell; ``overlay.png`` the map over the slide thumbnail, with a legend;
* ``clusters.geojson`` one QuPath annotation per connected region of each cluster, level-0 coordinates;
* ``scores.json`` when patch labels or a ``mask`` are available: accuracy/NMI/ARI of the patches, per-class
  Dice/IoU of the map (clusters matched to classes by the Hungarian algorithm).

With overlapping patches (stride < patch size) the map is finer than the patch grid: a cell of
``gcd(patch size, stride)`` output pixels averages the soft assignments of every patch covering it.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathoucc.cluster import clustering_scores, match_clusters
from pathoucc.cluster_model import (
    ClusterModel,
    check_tiles_fit_model,
    default_batch_size,
    iter_tile_features,
    load_or_fit,
    progress_bar,
)
from pathoucc.errors import PathouccError
from pathoucc.io import _UMASK, ensure_writable_dir, write_json
from pathoucc.slides.h5 import TileFile, open_tiles

__all__ = [
    "MapGrid", "Segmentation", "accumulate_map", "map_grid", "score_segmentation", "segment_run", "segment_tiles",
    "write_segmentation",
]

MAX_MAP_VALUES = 2**25  # map cells x clusters accumulated at most (128 MiB float32); coarser cells beyond
THUMBNAIL_SIZE = 1024


@dataclass(frozen=True)
class MapGrid:
    """Geometry of a map: ``shape`` (H, W) cells of ``cell`` level-0 px from level-0 (0, 0); each patch
    covers ``span`` x ``span`` cells from cell (row, col) = round((y, x) / cell)."""

    shape: tuple[int, int]
    cell: float
    span: int

    def patch_cells(self, coords: np.ndarray) -> np.ndarray:
        """(N, 2) int64 (row, col) of the top-left cell of patches at level-0 ``coords`` (N, 2) (x, y)."""
        return np.rint(np.asarray(coords, np.float64)[:, ::-1] / self.cell).astype(np.int64)

    def cell_coords(self) -> np.ndarray:
        """(H * W, 2) level-0 (x, y) of the top-left of every cell, row-major."""
        r, c = np.divmod(np.arange(self.shape[0] * self.shape[1]), self.shape[1])
        return np.stack([c * self.cell, r * self.cell], 1)


def map_grid(tiles: TileFile, k: int) -> MapGrid:
    """The finest grid on which the tile file's patches (size P, stride S) tile exactly: cells of gcd(P, S)
    output pixels (= S when S divides P), unless that needs more than ``MAX_MAP_VALUES`` accumulators."""
    p, s = tiles.patch_size, tiles.stride
    w, h = tiles.level_dimensions
    for g in (math.gcd(p, s), s):
        shape = (math.ceil(h / g), math.ceil(w / g))
        if shape[0] * shape[1] * k <= MAX_MAP_VALUES or g == s:
            return MapGrid(shape, g * tiles.downsample, max(1, round(p / g)))
    raise AssertionError("unreachable")


def accumulate_map(cells: np.ndarray, values: np.ndarray, grid: MapGrid) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``values`` (N, K) of patches at top-left ``cells`` (N, 2) over the ``span`` x ``span`` cells each covers.

    Returns ``(sums (H, W, K) float32, counts (H, W) int32)``.
    """
    h, w = grid.shape
    k = values.shape[1]
    sums = np.zeros((h * w, k), np.float32)
    counts = np.zeros(h * w, np.int32)
    for dr in range(grid.span):
        for dc in range(grid.span):
            r, c = cells[:, 0] + dr, cells[:, 1] + dc
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            flat = r[ok] * w + c[ok]
            np.add.at(sums, flat, values[ok])
            np.add.at(counts, flat, 1)
    return sums.reshape(h, w, k), counts.reshape(h, w)


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
    scores: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def segment_tiles(model: torch.nn.Module, cluster_model: ClusterModel, tiles: TileFile, batch_size: int = 256,
                  device: torch.device | str = "cpu", progress: bool = False) -> Segmentation:
    """Cluster every patch of an open tile file (streamed ``batch_size`` at a time) and build its map.

    ``model`` has ``extract_features((n, 3, P, P) in [0, 1]) -> (n, J)`` with J = ``cluster_model.num_features``.
    """
    n, k = tiles.num_patches, cluster_model.k
    distances = np.empty((n, k), np.float32)
    with progress_bar(progress, tiles.path.stem, n) as advance:
        for where, features in iter_tile_features(model, tiles, batch_size, device):
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
                        cluster_map, tiles.labels, tiles.class_names)


def score_segmentation(seg: Segmentation, tiles: TileFile, mask: str | Path | None = None) -> dict[str, Any] | None:
    """Scores against the ground truth, or None without any: the tile file's patch labels, or ``mask``.

    ``mask`` is a label image aligned with level 0 at any downsample (0 = unlabelled, v = class v - 1); it
    relabels the patches (majority under each patch) and each map cell. Without a mask a cell's class is the
    majority label of the patches covering it. Clusters are matched one-to-one to classes on the patches
    (Hungarian); the map is scored after that matching.
    """
    from pathoucc.slides.annotations import patch_labels, read_label_mask

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
    names = list(names) if names else [str(i) for i in range(int(max(labels.max(), truth.max())) + 1)]
    seg.labels, seg.class_names = labels, names
    patch = clustering_scores(labels[known], seg.clusters[known]) | {"num_patches": int(known.sum())}
    mapping = match_clusters(labels[known], seg.clusters[known])
    lookup = np.full(seg.distances.shape[1], -1, np.int64)
    for cluster, cls in mapping.items():
        lookup[cluster] = cls
    valid = (seg.cluster_map >= 0) & (truth >= 0)
    pred, gt = lookup[seg.cluster_map[valid].astype(np.int64)], truth[valid]
    per_class = {}
    for c in np.unique(np.concatenate([gt, pred[pred >= 0]])).tolist():
        tp = int(np.sum((pred == c) & (gt == c)))
        p, t = int(np.sum(pred == c)), int(np.sum(gt == c))
        per_class[names[c] if c < len(names) else str(c)] = {
            "dice": 2 * tp / (p + t) if p + t else 0.0, "iou": tp / (p + t - tp) if p + t - tp else 0.0,
            "cells": t}
    in_truth = [v for name, v in per_class.items() if v["cells"] > 0]
    map_scores = {
        "accuracy": float(np.mean(pred == gt)) if gt.size else 0.0,
        "mean_dice": float(np.mean([v["dice"] for v in in_truth])) if in_truth else 0.0,
        "mean_iou": float(np.mean([v["iou"] for v in in_truth])) if in_truth else 0.0,
        "num_cells": int(valid.sum()), "cell": grid.cell, "per_class": per_class,
    }
    return {"slide": seg.name, "k": int(seg.distances.shape[1]), "ground_truth": str(mask or "tile labels"),
            "patches": patch, "map": map_scores,
            "matching": {f"cluster {c}": names[v] if v < len(names) else str(v) for c, v in sorted(mapping.items())}}


def write_segmentation(seg: Segmentation, tiles: TileFile, out_dir: str | Path, colors: np.ndarray,
                       attrs: dict[str, Any] | None = None) -> Path:
    """Write all outputs of ``seg`` to ``<out_dir>/<name>/`` (replacing it), all or nothing."""
    from pathoucc.geojson import label_features, write_feature_collection
    from pathoucc.maps import map_image, map_on_image, patch_mosaic, save_overlay, save_png
    from pathoucc.slides.reader import open_slide

    out_dir = ensure_writable_dir(out_dir)
    final = out_dir / seg.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{seg.name}.", suffix=".partial", dir=out_dir))
    try:
        _write_h5(tmp / "clusters.h5", seg, tiles, attrs or {})
        with (tmp / "clusters.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["x", "y", "cluster", *(["label"] if seg.labels is not None else [])])
            rows = np.column_stack([seg.coords, seg.clusters, *([seg.labels] if seg.labels is not None else [])])
            writer.writerows(rows.tolist())
        save_png(tmp / "cluster_map.png", map_image(seg.cluster_map, colors))
        try:
            with open_slide(tiles.slide_path) as slide:
                picture = slide.thumbnail(THUMBNAIL_SIZE)
            seg.extra["overlay_background"] = "slide thumbnail"
        except PathouccError:  # the slide is gone: draw the patches themselves
            w, h = tiles.slide_dimensions
            scale = max(1.0, max(w, h) / THUMBNAIL_SIZE)
            picture = patch_mosaic(tiles, (max(1, round(w / scale)), max(1, round(h / scale))))
            seg.extra["overlay_background"] = "patch mosaic (slide file not found)"
        ds = (tiles.slide_dimensions[0] / picture.shape[1], tiles.slide_dimensions[1] / picture.shape[0])
        counts = np.bincount(seg.clusters, minlength=len(colors))
        names = [f"cluster {c} ({counts[c]} patches)" for c in range(len(colors))]
        save_overlay(tmp / "overlay.png", map_on_image(seg.cluster_map, seg.grid.cell, picture, ds, colors),
                     colors, names, title=seg.name)
        features = label_features(seg.cluster_map, scale=seg.grid.cell, colors=colors, seed=seg.name)
        write_feature_collection(tmp / "clusters.geojson", features)
        seg.extra["num_regions"] = len(features)
        if seg.scores is not None:
            write_json(tmp / "scores.json", seg.scores)
        os.chmod(tmp, 0o777 & ~_UMASK)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{seg.name}.", suffix=".old", dir=out_dir))
            os.replace(final, old / seg.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise PathouccError(f"cannot write the outputs ({exc.strerror or exc})", final) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_h5(path: Path, seg: Segmentation, tiles: TileFile, attrs: dict[str, Any]) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=seg.coords.astype(np.int64))
        f.create_dataset("cluster", data=seg.clusters.astype(np.int64))
        f.create_dataset("distances", data=seg.distances, compression="gzip", compression_opts=4)
        f.create_dataset("probabilities", data=seg.probabilities, compression="gzip", compression_opts=4)
        if seg.labels is not None:
            f.create_dataset("labels", data=seg.labels.astype(np.int64))
        m = f.create_dataset("map", data=seg.cluster_map, compression="gzip", compression_opts=4)
        m.attrs["cell"] = seg.grid.cell
        m.attrs["span"] = seg.grid.span
        for key, value in {"k": int(seg.distances.shape[1]), "tiles": str(tiles.path.resolve()),
                           "slide_path": tiles.slide_path, "slide_dimensions": list(tiles.slide_dimensions),
                           "patch_size": tiles.patch_size, "stride": tiles.stride, "downsample": tiles.downsample,
                           **attrs}.items():
            f.attrs[key] = value


def _mask_for(mask: Path | None, tiles_path: Path, many: bool) -> Path | None:
    """The mask file of a tile file: ``mask`` itself, or in a folder ``<stem>.png`` / ``<stem>_mask.png`` (…)."""
    if mask is None:
        return None
    if not mask.is_dir():
        if many:
            raise PathouccError("one mask cannot score several slides; pass a folder of <slide stem>_mask.png files",
                                mask)
        return mask
    stem = tiles_path.stem
    for name in (f"{stem}_mask", stem):
        for ext in (".png", ".tif", ".tiff"):
            if (mask / f"{name}{ext}").is_file():
                return mask / f"{name}{ext}"
    return None


def segment_run(run_dir: str | Path, tile_paths: list[str | Path], out: str | Path | None = None,
                k: int | None = None, batch_size: int | None = None, device: str = "auto",
                mask: str | Path | None = None, progress: bool = False, show: bool = True) -> list[Segmentation]:
    """Segment every tile file with a trained run; outputs go to ``<out>/<slide stem>/`` (default
    ``<run>/segments``). The run's ``kmeans-k{k}.npz`` is fitted on its training data first if absent."""
    from pathoucc.evaluate import load_run
    from pathoucc.maps import cluster_colors
    from pathoucc.train import select_device

    run_dir = Path(run_dir)
    dev = select_device(device)
    cfg, model = load_run(run_dir, dev)
    out = Path(out) if out is not None else run_dir / "segments"
    paths = [Path(p) for p in tile_paths]
    if not paths:
        raise PathouccError("no tile files given")
    seen: dict[str, Path] = {}
    for path in paths:  # validate everything before any work
        if path.stem in seen:
            raise PathouccError(f"has the same name as {seen[path.stem]}; outputs would collide", path)
        seen[path.stem] = path
        with open_tiles(path) as tiles:
            check_tiles_fit_model(tiles, cfg)
    mask = Path(mask) if mask is not None else None
    if mask is not None and not mask.exists():
        raise PathouccError("mask not found", mask)
    masks = [_mask_for(mask, p, len(paths) > 1) for p in paths]
    ensure_writable_dir(out)
    batch_size = batch_size or default_batch_size(cfg)
    cm, km_path, fitted = load_or_fit(run_dir, model, cfg, k, batch_size=batch_size, device=dev, progress=progress)
    if show and fitted:
        print(f"fitted k-means (k={cm.k}) on the run's training data -> {km_path}")
    colors = cluster_colors(cm.k)
    results = []
    for path, slide_mask in zip(paths, masks, strict=True):
        with open_tiles(path) as tiles:
            seg = segment_tiles(model, cm, tiles, batch_size, dev, progress)
            seg.scores = score_segmentation(seg, tiles, slide_mask)
            folder = write_segmentation(seg, tiles, out, colors, {"run": str(run_dir.resolve()),
                                                                  "kmeans": str(km_path.resolve())})
        seg.extra["folder"] = folder
        results.append(seg)
        if show:
            print(f"{seg.name}: {len(seg.clusters)} patches, {seg.extra['num_regions']} regions -> {folder}")
    if show and any(s.scores for s in results):
        print_segment_scores([s.scores for s in results if s.scores])
    return results


def print_segment_scores(rows: list[dict[str, Any]]) -> None:
    """A rich table: one row per slide, then its per-class Dice/IoU."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="segmentation")
    for col in ("slide", "k", "patches", "ACC", "NMI", "ARI", "map ACC", "Dice", "IoU"):
        table.add_column(col, justify="left" if col == "slide" else "right")
    for r in rows:
        p, m = r["patches"], r["map"]
        table.add_row(r["slide"], str(r["k"]), str(p["num_patches"]), f"{p['accuracy']:.4f}", f"{p['nmi']:.4f}",
                      f"{p['ari']:.4f}", f"{m['accuracy']:.4f}", f"{m['mean_dice']:.4f}", f"{m['mean_iou']:.4f}")
    per = Table(title="per class (map, after matching)")
    for col in ("slide", "class", "cells", "Dice", "IoU"):
        per.add_column(col, justify="left" if col in ("slide", "class") else "right")
    for r in rows:
        for name, v in r["map"]["per_class"].items():
            per.add_row(r["slide"], name, str(v["cells"]), f"{v['dice']:.4f}", f"{v['iou']:.4f}")
    console = Console()
    console.print(table)
    console.print(per)
