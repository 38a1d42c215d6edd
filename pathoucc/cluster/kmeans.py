"""k-means in the run's feature space, and which features each k-means is fitted on (:class:`KMeansFit`).

Two fits, one rule each, named in every scores file (``kmeans.fit`` and ``kmeans.fitted_on``):

- ``heldout`` (:func:`fit_on_heldout`, ``pathoucc evaluate`` -> ``metrics.json``): transductive, on the scored
  split's own features, as the UCC paper scores MNIST: on its labelled instances, or on all of them when none
  carries a label; fitted anew at every evaluation and not saved.
- ``train`` (:func:`fit_on_train`, ``pathoucc cluster`` / ``segment`` -> ``scores.json``): the run's shared
  ``kmeans-k{K}.npz``, fitted once on a seeded subset of at most ``MAX_FIT_PATCHES`` training patches (every patch
  of the training tile files, or the ``train`` split of MNIST/IDX) and reused on every slide, so a cluster means
  the same on every slide.

- ``examples`` (:func:`pathoucc.cluster.constrained.named_cluster_model`, ``--examples`` of ``cluster`` /
  ``segment``): the ``train`` fit's patches plus a few labelled ones, by constrained k-means; its clusters carry
  the class names (``names``), saved in the same ``kmeans-k{K}.npz``.

(The count-consistent refinement fits its own k-means on the training region patches each round, on the same
:func:`~pathoucc.data.pool.subsample` of at most ``MAX_FIT_PATCHES``.)

``<run>/kmeans-k{K}.npz`` holds ``centers`` (K, J) float32, ``k``, ``seed``, ``temperature`` (the mean squared
distance of the fitting features to their centre, the scale of the soft assignments) and ``source`` (what it
was fitted on, a string), and for the ``examples`` fit ``fit`` and ``names`` (K,) (cluster ``c``'s name).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from pathoucc.cluster.features import (
    check_fits_model,
    default_batch_size,
    inference_dtype,
    iter_features,
    resolve_device,
)
from pathoucc.config import Config
from pathoucc.data.pool import Pool, subsample
from pathoucc.data.sources import load_pools, pool_from_tiles
from pathoucc.errors import PathouccError
from pathoucc.files import atomic_path
from pathoucc.run import kmeans_path, load_run
from pathoucc.runtime import progress_bar
from pathoucc.slides.tilefile import open_tiles

__all__ = ["MAX_FIT_PATCHES", "ClusterModel", "HeldoutFit", "KMeansFit", "cluster_run", "default_k", "fit_kmeans",
           "fit_on_heldout", "fit_on_train", "load_or_fit", "train_features", "training_pool"]

MAX_FIT_PATCHES = 100_000  # at most this many training patches (a seeded random subset) are used to fit


class KMeansFit(StrEnum):
    """Which features a k-means is fitted on (see the module docstring)."""

    HELDOUT = "heldout"  # the scored split's own features (transductive), per evaluation
    TRAIN = "train"  # a seeded subset of <= MAX_FIT_PATCHES training patches: the run's kmeans-k{K}.npz
    EXAMPLES = "examples"  # the train fit's patches plus labelled examples, constrained: clusters with names


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
    fit: KMeansFit = KMeansFit.TRAIN  # a saved k-means is the run's ``train`` or ``examples`` fit
    names: list[str] | None = None  # (K,) cluster names of the ``examples`` fit

    def describe(self) -> dict[str, str | int | list[str]]:
        """What a scores file records of this k-means: ``fit`` (its :class:`KMeansFit`), ``fitted_on``, ``k``,
        ``seed``, and for the ``examples`` fit ``names``."""
        out: dict[str, str | int | list[str]] = {"fit": self.fit.value, "fitted_on": self.source, "k": self.k,
                                                 "seed": self.seed}
        return out | ({"names": list(self.names)} if self.names else {})

    @property
    def cluster_names(self) -> list[str]:
        """The name of each cluster: its class for the ``examples`` fit, else ``cluster c``."""
        return list(self.names) if self.names else [f"cluster {c}" for c in range(self.k)]

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
                     temperature=np.float64(self.temperature), source=np.str_(self.source),
                     fit=np.str_(self.fit.value), names=np.asarray(self.cluster_names, dtype=np.str_))

    @classmethod
    def load(cls, path: str | Path, num_features: int | None = None) -> ClusterModel:
        """Read a ``.npz``; :class:`PathouccError` naming the file if it is unreadable or of the wrong size."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                centers = np.asarray(z["centers"], np.float32)
                k, seed, temperature = int(z["k"]), int(z["seed"]), float(z["temperature"])
                source = str(z["source"]) if "source" in z.files else ""
                fit = KMeansFit(str(z["fit"])) if "fit" in z.files else KMeansFit.TRAIN
                names = [str(n) for n in z["names"]] if fit is KMeansFit.EXAMPLES else None
        except FileNotFoundError:
            raise PathouccError("k-means file not found", path) from None
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:  # ValueError: a bad fit too
            raise PathouccError(f"not a k-means file (.npz with centers, k, seed, temperature): "
                                f"{type(exc).__name__}", path) from None
        if (centers.ndim != 2 or len(centers) != k or k < 2 or not np.isfinite(centers).all() or temperature <= 0
                or (names is not None and len(names) != k)):
            raise PathouccError(f"invalid k-means file: centers {centers.shape}, k={k}, temperature={temperature}",
                                path)
        if num_features is not None and centers.shape[1] != num_features:
            raise PathouccError(f"k-means centres have {centers.shape[1]} features but the run's model gives "
                                f"{num_features}; it belongs to another run (delete it or refit with "
                                "`pathoucc cluster`)", path)
        return cls(centers, seed, temperature, source, fit, names)


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
    classes = load_pools(cfg.data, ("train",))["train"].num_classes
    if classes < 2:  # count-only regions of feature files: no patch labels
        raise PathouccError("cannot tell the number of clusters: the training data carry no class labels and the "
                            "config has no eval.k; pass --k")
    return classes


def _cluster_model(km: KMeans, n: int, seed: int, fit: KMeansFit, source: str) -> ClusterModel:
    temperature = max(float(km.inertia_) / n, 1e-8)
    return ClusterModel(km.cluster_centers_.astype(np.float32), seed, temperature, source, fit)


def training_pool(cfg: Config, tile_paths: list[str | Path] | None = None) -> tuple[Pool, str]:
    """The training patches of the ``train`` fit and a description of them: ``tile_paths`` if given, else the
    config's ``data.train_tiles`` for a ``tiles`` source (every patch, read on demand), else the ``train`` split
    of an MNIST/IDX source."""
    if tile_paths or cfg.data.source == "tiles":
        paths = [str(p) for p in (tile_paths or cfg.data.train_tiles)]
        if not paths:
            raise PathouccError("the run's config lists no data.train_tiles to fit k-means on; pass --tiles")
        pool = pool_from_tiles(paths, need_regions=False, slide_dir=cfg.data.slide_dir, streaming=True)
        check_fits_model(pool, cfg, paths[0])  # the files share one patch size (pool_from_tiles checks)
        return pool, json.dumps(paths)
    return load_pools(cfg.data, ("train",))["train"], f"{cfg.data.source} train split ({cfg.data.root})"


def fit_on_train(model: torch.nn.Module, cfg: Config, k: int, tile_paths: list[str | Path] | None = None,
                 batch_size: int = 256, device: torch.device | str = "cpu", progress: bool = False,
                 max_patches: int = MAX_FIT_PATCHES, amp: bool | None = None) -> ClusterModel:
    """The ``train`` fit: k-means (``cfg.seed``, ``cfg.eval.n_init``) on the features of a seeded subset of at
    most ``max_patches`` patches of :func:`training_pool`, in mixed precision with ``amp`` (default
    ``eval.amp``), read batch by batch."""
    features, source = train_features(model, cfg, tile_paths, batch_size, device, progress, max_patches, amp)
    if len(features) < k:
        raise PathouccError(f"only {len(features)} training patches for k={k} clusters")
    km = fit_kmeans(features, k, cfg.seed, cfg.eval.n_init)
    return _cluster_model(km, len(features), cfg.seed, KMeansFit.TRAIN, source)


def train_features(model: torch.nn.Module, cfg: Config, tile_paths: list[str | Path] | None = None,
                   batch_size: int = 256, device: torch.device | str = "cpu", progress: bool = False,
                   max_patches: int = MAX_FIT_PATCHES, amp: bool | None = None) -> tuple[np.ndarray, str]:
    """Features ``(n, J)`` float32 of the seeded subset of at most ``max_patches`` patches of
    :func:`training_pool` that the ``train`` fit uses, and their description."""
    pool, source = training_pool(cfg, tile_paths)
    rows = subsample(len(pool), max_patches, cfg.seed)
    dtype = inference_dtype(cfg, device, amp)
    parts: list[np.ndarray] = []
    with progress_bar(progress, "k-means features", len(rows)) as advance:
        for _, f in iter_features(model, pool, batch_size, device, rows, dtype):
            parts.append(f)
            advance(len(f))
    if not parts:
        raise PathouccError(f"no training patches to fit k-means on ({source})")
    return np.concatenate(parts), source


@dataclass
class HeldoutFit:
    """The ``heldout`` fit of a split: its k-means and the cluster of every instance.

    clusters : (N,) int64; fitted : (N,) bool, the instances the k-means was fitted on.
    """

    kmeans: ClusterModel
    clusters: np.ndarray
    fitted: np.ndarray


def fit_on_heldout(features: np.ndarray, labels: np.ndarray, k: int, seed: int, n_init: int,
                   split: str) -> HeldoutFit:
    """The ``heldout`` fit: k-means on the ``split``'s own features ``(N, J)``: on its labelled instances
    (``labels`` (N,) >= 0), or on all when none is labelled; the others take the nearest centre."""
    labelled = labels >= 0
    fitted = labelled if labelled.any() else np.ones(len(labels), bool)
    n = int(fitted.sum())
    if n < k:
        raise PathouccError(f"only {n} {split} instances to fit k={k} clusters")
    km = fit_kmeans(features[fitted], k, seed, n_init)
    source = (f"{split} split: its {n} labelled instances (of {len(labels)})" if labelled.any()
              else f"{split} split: all {n} instances (none labelled)")
    cm = _cluster_model(km, n, seed, KMeansFit.HELDOUT, source)
    clusters = np.empty(len(labels), np.int64)
    clusters[fitted] = km.labels_  # sklearn's own assignment of the fitted rows (today's scores exactly)
    if not fitted.all():
        clusters[~fitted] = cm.predict(features[~fitted])
    return HeldoutFit(cm, clusters, fitted)


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
    cm = fit_on_train(model, cfg, k, tile_paths, batch_size, device, progress, amp=amp)
    cm.save(path)
    return cm, path, True


def cluster_run(run_dir: str | Path, k: int | None = None, tile_paths: list[str | Path] | None = None,
                batch_size: int | None = None, device: torch.device | str = "auto", progress: bool = False,
                amp: bool | None = None) -> tuple[ClusterModel, Path]:
    """(Re)fit the run's shared k-means (the ``train`` fit) on its training data (or ``tile_paths``) on ``device``
    (auto, cpu, cuda or a torch device) and save ``kmeans-k{k}.npz`` (features in mixed precision with ``amp``,
    default ``eval.amp``)."""
    dev = resolve_device(device)
    cfg, model = load_run(run_dir, dev)
    cm, path, _ = load_or_fit(run_dir, model, cfg, k, tile_paths, refit=True,
                              batch_size=batch_size or default_batch_size(cfg), device=dev, progress=progress,
                              amp=amp)
    return cm, path
