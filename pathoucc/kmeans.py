"""A k-means model fitted once per run and saved in the run folder, so a cluster means the same on every slide.

``<run>/kmeans-k{K}.npz`` holds ``centers`` (K, J) float32, ``k``, ``seed``, ``temperature`` (the mean squared
distance of the fitting features to their centre, the scale of the soft assignments) and ``source`` (what it
was fitted on, a string).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from pathoucc.config import Config
from pathoucc.data.sources import load_pools
from pathoucc.errors import PathouccError
from pathoucc.features import (
    check_tiles_fit_model,
    default_batch_size,
    extract_features,
    inference_dtype,
    iter_features,
)
from pathoucc.files import atomic_path
from pathoucc.run import kmeans_path, load_run
from pathoucc.runtime import progress_bar, select_device
from pathoucc.slides.tilefile import open_tiles

__all__ = ["ClusterModel", "cluster_run", "default_k", "fit_cluster_model", "fit_kmeans", "load_or_fit"]

MAX_FIT_PATCHES = 100_000  # at most this many training patches (a seeded random subset) are used to fit


def fit_kmeans(features: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> KMeans:
    """Fit k-means with ``k`` clusters on ``features`` ``(N, J)``; deterministic for a given ``seed``."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) < k:
        raise ValueError(f"need at least k={k} feature rows of shape (N, J), got {features.shape}")
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(features)


@dataclass
class ClusterModel:
    """k-means centres in the run's feature space; assignments are the nearest centre.

    centers : (K, J) float32
    temperature : scale of :meth:`soft` (squared feature distance); > 0
    """

    centers: np.ndarray
    seed: int = 0
    temperature: float = 1.0
    source: str = ""

    @property
    def k(self) -> int:
        return len(self.centers)

    @property
    def num_features(self) -> int:
        return int(self.centers.shape[1])

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Euclidean distances ``(N, K)`` float32 of ``features`` ``(N, J)`` to the centres."""
        f = np.asarray(features, np.float32)
        d = (f * f).sum(1, keepdims=True) - 2.0 * f @ self.centers.T + (self.centers**2).sum(1)[None]
        return np.maximum(d, 0.0, out=d)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Nearest centre ``(N,)`` int64."""
        return self.distances(features).argmin(1).astype(np.int64)

    def soft(self, distances: np.ndarray) -> np.ndarray:
        """Soft assignments ``(N, K)`` float32 = softmax(-distances / temperature); rows sum to 1."""
        z = -np.asarray(distances, np.float32) / np.float32(self.temperature)
        z -= z.max(1, keepdims=True)
        np.exp(z, out=z)
        return z / z.sum(1, keepdims=True)

    def save(self, path: str | Path) -> None:
        """Write the ``.npz`` atomically."""
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(f, centers=self.centers.astype(np.float32), k=np.int64(self.k), seed=np.int64(self.seed),
                     temperature=np.float64(self.temperature), source=np.str_(self.source))

    @classmethod
    def load(cls, path: str | Path, num_features: int | None = None) -> ClusterModel:
        """Read a ``.npz``; :class:`PathouccError` naming the file if it is unreadable or of the wrong size."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                centers = np.asarray(z["centers"], np.float32)
                k, seed, temperature = int(z["k"]), int(z["seed"]), float(z["temperature"])
                source = str(z["source"]) if "source" in z.files else ""
        except FileNotFoundError:
            raise PathouccError("k-means file not found", path) from None
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise PathouccError(f"not a k-means file (.npz with centers, k, seed, temperature): "
                                f"{type(exc).__name__}", path) from None
        if centers.ndim != 2 or len(centers) != k or k < 2 or not np.isfinite(centers).all() or temperature <= 0:
            raise PathouccError(f"invalid k-means file: centers {centers.shape}, k={k}, temperature={temperature}",
                                path)
        if num_features is not None and centers.shape[1] != num_features:
            raise PathouccError(f"k-means centres have {centers.shape[1]} features but the run's model gives "
                                f"{num_features}; it belongs to another run (delete it or refit with "
                                "`pathoucc cluster`)", path)
        return cls(centers, seed, temperature, source)


def default_k(cfg: Config, tile_paths: list[str | Path] | None = None) -> int:
    """``eval.k`` if set, else the number of classes among the labelled training patches (or the class names)."""
    if cfg.eval.k:
        return int(cfg.eval.k)
    if cfg.data.source == "tiles" or tile_paths:
        classes: set[int] = set()
        named = 0
        for path in tile_paths or cfg.data.train_tiles:
            with open_tiles(path, cfg.data.slide_dir) as tiles:
                if tiles.labels is not None:
                    classes |= set(np.unique(tiles.labels[tiles.labels >= 0]).tolist())
                named = max(named, len(tiles.class_names or []))
        if len(classes) >= 2:
            return len(classes)
        if named >= 2:
            return named
        raise PathouccError("cannot tell the number of clusters: the training tiles carry no class labels and the "
                            "config has no eval.k; pass --k")
    return load_pools(cfg.data, ("train",))["train"].num_classes


def fit_cluster_model(model: torch.nn.Module, cfg: Config, k: int, tile_paths: list[str | Path] | None = None,
                      batch_size: int = 256, device: torch.device | str = "cpu", progress: bool = False,
                      max_patches: int = MAX_FIT_PATCHES, amp: bool | None = None) -> ClusterModel:
    """Fit k-means (``cfg.seed``, ``cfg.eval.n_init``) on the features of the training data.

    Training data are ``tile_paths`` if given, else the config's ``data.train_tiles`` for a ``tiles`` source,
    else the ``train`` split of an MNIST/IDX source. At most ``max_patches`` patches (seeded subset). Features in
    mixed precision with ``amp`` (default ``eval.amp``), read from the tile files batch by batch.
    """
    dtype = inference_dtype(cfg, device, amp)
    if tile_paths or cfg.data.source == "tiles":
        paths = [Path(p) for p in (tile_paths or cfg.data.train_tiles)]
        if not paths:
            raise PathouccError("the run's config lists no data.train_tiles to fit k-means on; pass --tiles")
        features, source = _tile_features(model, cfg, paths, batch_size, device, progress, max_patches, dtype), \
            json.dumps([str(p) for p in paths])
    else:
        pool = load_pools(cfg.data, ("train",))["train"]
        if len(pool) > max_patches:
            keep = np.sort(np.random.default_rng(cfg.seed).choice(len(pool), max_patches, replace=False))
            pool = type(pool)(pool.images[keep], pool.labels[keep])
        features = extract_features(model, pool, batch_size, device, dtype=dtype)
        source = f"{cfg.data.source} train split ({cfg.data.root})"
    if len(features) < k:
        raise PathouccError(f"only {len(features)} training patches for k={k} clusters")
    km = fit_kmeans(features, k, cfg.seed, cfg.eval.n_init)
    temperature = max(float(km.inertia_) / len(features), 1e-8)
    return ClusterModel(km.cluster_centers_.astype(np.float32), cfg.seed, temperature, source)


def _tile_features(model: torch.nn.Module, cfg: Config, paths: list[Path], batch_size: int,
                   device: torch.device | str, progress: bool,
                   max_patches: int, dtype: torch.dtype | None = None) -> np.ndarray:
    files = [open_tiles(p, cfg.data.slide_dir) for p in paths]
    try:
        for tiles in files:
            check_tiles_fit_model(tiles, cfg)
        sizes = np.array([t.num_patches for t in files])
        total = int(sizes.sum())
        chosen = np.arange(total) if total <= max_patches else np.sort(
            np.random.default_rng(cfg.seed).choice(total, max_patches, replace=False))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        out = []
        with progress_bar(progress, "k-means features", len(chosen)) as advance:
            for i, tiles in enumerate(files):
                index = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
                for _, f in iter_features(model, tiles, batch_size, device, index, dtype):
                    out.append(f)
                    advance(len(f))
        return np.concatenate(out)
    finally:
        for tiles in files:
            tiles.close()


def load_or_fit(run_dir: str | Path, model: torch.nn.Module, cfg: Config, k: int | None = None,
                tile_paths: list[str | Path] | None = None, refit: bool = False, batch_size: int = 256,
                device: torch.device | str = "cpu", progress: bool = False,
                amp: bool | None = None) -> tuple[ClusterModel, Path, bool]:
    """The run's ``kmeans-k{k}.npz``, fitted and saved first if absent (or ``refit``).

    Returns ``(cluster_model, path, fitted_now)``. ``k`` defaults to :func:`default_k`.
    """
    k = k or default_k(cfg, tile_paths)
    if k < 2:
        raise PathouccError(f"k must be at least 2, got {k}")
    path = kmeans_path(run_dir, k)
    if path.exists() and not refit:
        return ClusterModel.load(path, model.num_features), path, False
    cm = fit_cluster_model(model, cfg, k, tile_paths, batch_size, device, progress, amp=amp)
    cm.save(path)
    return cm, path, True


def cluster_run(run_dir: str | Path, k: int | None = None, tile_paths: list[str | Path] | None = None,
                batch_size: int | None = None, device: str = "auto", progress: bool = False,
                amp: bool | None = None) -> tuple[ClusterModel, Path]:
    """(Re)fit the run's shared k-means on its training data (or ``tile_paths``) and save ``kmeans-k{k}.npz``
    (features in mixed precision with ``amp``, default ``eval.amp``)."""
    dev = select_device(device)
    cfg, model = load_run(run_dir, dev)
    cm, path, _ = load_or_fit(run_dir, model, cfg, k, tile_paths, refit=True,
                              batch_size=batch_size or default_batch_size(cfg), device=dev, progress=progress,
                              amp=amp)
    return cm, path
