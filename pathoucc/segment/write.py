"""Writing a segmentation: ``<out>/<slide stem>/`` receives (all or nothing: built in a temporary folder, swapped
in at the end)

* ``clusters.h5``  coords (N, 2) level-0, cluster (N,), distances and probabilities (N, K), labels (N,) if known,
  examples (N,) (the cluster a labelled example names, -1 elsewhere) if any, map (H, W) int16 with attribute
  ``cell`` (level-0 px per map cell); attributes ``cluster_names`` (K,) and ``cluster_colors`` (K, 3);
* ``clusters.csv`` ``x,y,cluster,name[,label][,example]`` per patch (``name``: the cluster's name);
* ``cluster_map.png`` one pixel per map cell; ``overlay.png`` the map over the slide thumbnail, with a legend of
  the cluster names (a feature file whose slide is not found has none);
* ``clusters.geojson`` one QuPath annotation per connected region of each cluster, classified by the cluster's
  name and colour, level-0 coordinates; ``patches.geojson`` one QuPath ``tile`` object per patch, classified the
  same, with its ``cluster distance`` (squared feature distance to the centre) as a measurement;
* ``scores.json`` when patch labels or a mask are available (see :func:`~.segment.score_segmentation`).

Cluster names are the k-means' (:attr:`~pathoucc.cluster.kmeans.ClusterModel.cluster_names`: class names from
labelled examples, else ``cluster c``); colours follow the name (:func:`~.maps.name_color`), so a class has
the same colour on every slide and in every run.

A new output format is one more writer called from :func:`_write_all`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pathoucc.errors import PathouccError
from pathoucc.files import atomic_dir, write_json
from pathoucc.segment.geojson import label_features, tile_features, write_feature_collection
from pathoucc.segment.maps import map_image, map_on_image, patch_mosaic, save_overlay, save_png
from pathoucc.segment.segment import Segmentation
from pathoucc.slides.patchfile import PatchFile
from pathoucc.slides.reader import open_slide

__all__ = ["THUMBNAIL_SIZE", "write_segmentation"]

THUMBNAIL_SIZE = 1024


def write_segmentation(seg: Segmentation, tiles: PatchFile, out_dir: str | Path, colors: np.ndarray,
                       attrs: dict[str, Any] | None = None) -> Path:
    """Write all outputs of ``seg`` to ``<out_dir>/<name>/`` (replacing it), all or nothing."""
    final = Path(out_dir) / seg.name
    try:
        with atomic_dir(final) as tmp:
            _write_all(tmp, seg, tiles, colors, attrs or {})
    except OSError as exc:
        raise PathouccError(f"cannot write the outputs ({exc.strerror or exc})", final) from None
    return final


def _write_all(folder: Path, seg: Segmentation, tiles: PatchFile, colors: np.ndarray, attrs: dict[str, Any]) -> None:
    _write_h5(folder / "clusters.h5", seg, tiles, colors, attrs)
    _write_csv(folder / "clusters.csv", seg)
    _write_pictures(folder, seg, tiles, colors)
    names = seg.cluster_names or [f"cluster {c}" for c in range(len(colors))]
    features = label_features(seg.cluster_map, scale=seg.grid.cell, names=names, colors=colors, seed=seg.name)
    write_feature_collection(folder / "clusters.geojson", features)
    own = seg.distances[np.arange(len(seg.clusters)), seg.clusters]
    write_feature_collection(folder / "patches.geojson", tile_features(
        seg.coords, tiles.patch_size * tiles.downsample, seg.clusters, own, names, colors, seed=seg.name))
    seg.extra["num_regions"] = len(features)
    if seg.scores is not None:
        write_json(folder / "scores.json", seg.scores)


def _write_csv(path: Path, seg: Segmentation) -> None:
    names = seg.cluster_names or [f"cluster {c}" for c in range(seg.distances.shape[1])]
    examples = seg.examples if seg.examples is not None and (seg.examples >= 0).any() else None
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "y", "cluster", "name", *(["label"] if seg.labels is not None else []),
                         *(["example"] if examples is not None else [])])
        cluster_name = np.asarray(names, dtype=object)[seg.clusters]
        columns = [seg.coords[:, 0], seg.coords[:, 1], seg.clusters, cluster_name]
        if seg.labels is not None:
            columns.append(seg.labels)
        if examples is not None:  # the class a labelled example was given ("" elsewhere)
            columns.append(np.where(examples >= 0, np.asarray(names, dtype=object)[np.maximum(examples, 0)], ""))
        writer.writerows(zip(*(c.tolist() for c in columns), strict=True))


def _write_pictures(folder: Path, seg: Segmentation, tiles: PatchFile, colors: np.ndarray) -> None:
    """``cluster_map.png`` and ``overlay.png`` (over the slide's thumbnail, or its patches if the slide is gone)."""
    save_png(folder / "cluster_map.png", map_image(seg.cluster_map, colors))
    try:
        if not tiles.slide_path:
            raise PathouccError("the slide was not found", tiles.path)
        with open_slide(tiles.slide_path) as slide:
            picture = slide.thumbnail(THUMBNAIL_SIZE)
        seg.extra["overlay_background"] = "slide thumbnail"
    except PathouccError:  # the slide is gone: draw the patches themselves (feature vectors: no overlay)
        if not tiles.has_pixels:
            seg.extra["overlay_background"] = None
            seg.extra["notice"] = (f"{tiles.path.name}: no overlay.png, its slide was not found (give the slides' "
                                   "folder with --slides)")
            return
        w, h = tiles.slide_dimensions
        scale = max(1.0, max(w, h) / THUMBNAIL_SIZE)
        picture = patch_mosaic(tiles, (max(1, round(w / scale)), max(1, round(h / scale))))
        seg.extra["overlay_background"] = "patch mosaic (slide file not found)"
    ds = (tiles.slide_dimensions[0] / picture.shape[1], tiles.slide_dimensions[1] / picture.shape[0])
    counts = np.bincount(seg.clusters, minlength=len(colors))
    names = [f"{n} ({counts[c]} patches)" for c, n in
             enumerate(seg.cluster_names or [f"cluster {c}" for c in range(len(colors))])]
    save_overlay(folder / "overlay.png", map_on_image(seg.cluster_map, seg.grid.cell, picture, ds, colors),
                 colors, names, title=seg.name)


def _write_h5(path: Path, seg: Segmentation, tiles: PatchFile, colors: np.ndarray, attrs: dict[str, Any]) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=seg.coords.astype(np.int64))
        f.create_dataset("cluster", data=seg.clusters.astype(np.int64))
        f.create_dataset("distances", data=seg.distances, compression="gzip", compression_opts=4)
        f.create_dataset("probabilities", data=seg.probabilities, compression="gzip", compression_opts=4)
        if seg.labels is not None:
            f.create_dataset("labels", data=seg.labels.astype(np.int64))
        if seg.examples is not None and (seg.examples >= 0).any():
            f.create_dataset("examples", data=seg.examples.astype(np.int64))
        m = f.create_dataset("map", data=seg.cluster_map, compression="gzip", compression_opts=4)
        m.attrs["cell"] = seg.grid.cell
        m.attrs["span"] = seg.grid.span
        for key, value in {"k": int(seg.distances.shape[1]), "tiles": str(tiles.path.resolve()),
                           "slide_path": tiles.slide_path, "slide_dimensions": list(tiles.slide_dimensions),
                           "patch_size": tiles.patch_size, "stride": tiles.stride, "downsample": tiles.downsample,
                           "cluster_names": list(seg.cluster_names) or [f"cluster {c}" for c in range(len(colors))],
                           "cluster_colors": np.asarray(colors, np.uint8), **attrs}.items():
            f.attrs[key] = value
