"""Constrained k-means (Basu, Banerjee & Mooney 2002, "seeded"/"constrained" k-means): clusters with names.

The centre of each class that has labelled examples starts at the mean of its examples' features; the other
``k - C`` centres start by k-means++ (D² sampling) on the unlabelled features, given the class centres. Then, until
no assignment changes: the labelled features keep their class, the unlabelled ones take the nearest centre, and
every centre becomes the mean of its members (labelled and unlabelled). Centre ``c < C`` is named after its class;
the others are ``cluster c``.

Vectorised for millions of rows: distances are computed ``chunk`` rows at a time (no (N, K) matrix is kept) and the
centre sums are one sparse (K, N) x (N, J) product per iteration. Without any labelled example this is ordinary
k-means (scikit-learn's ``KMeans`` with those initial centres would give the same fixed point).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from pathoucc.cluster.kmeans import ClusterModel, KMeansFit
from pathoucc.errors import PathouccError

__all__ = ["ConstrainedFit", "constrained_kmeans", "named_cluster_model", "nearest_centre"]

CHUNK = 1 << 16  # rows per distance block: (CHUNK, K) float32 at a time


@dataclass
class ConstrainedFit:
    """The result: ``centers`` (K, J) float32, ``assignment`` (N,) int64 of the unlabelled rows, ``iterations``,
    ``inertia`` (mean squared distance of every row, labelled and unlabelled, to its centre)."""

    centers: np.ndarray
    assignment: np.ndarray
    iterations: int
    inertia: float


def nearest_centre(features: np.ndarray, centers: np.ndarray, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre ``(N,)`` int64 and its squared distance ``(N,)`` float32 of ``features`` (N, J), ``chunk``
    rows at a time."""
    features = np.asarray(features, np.float32)
    centers = np.asarray(centers, np.float32)
    c2 = (centers**2).sum(1)[None]
    index = np.empty(len(features), np.int64)
    dist = np.empty(len(features), np.float32)
    for a in range(0, len(features), chunk):
        f = features[a:a + chunk]
        d = c2 - 2.0 * (f @ centers.T)  # the row's own |f|^2 does not change which centre is nearest
        i = d.argmin(1)
        index[a:a + chunk] = i
        dist[a:a + chunk] = np.maximum(np.take_along_axis(d, i[:, None], 1)[:, 0] + np.einsum("ij,ij->i", f, f), 0)
    return index, dist


def _member_sums(features: np.ndarray, assignment: np.ndarray, k: int,
                 chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster feature sums (K, J) float64 and member counts (K,) int64, ``chunk`` rows at a time."""
    sums = np.zeros((k, features.shape[1]), np.float64)
    for a in range(0, len(assignment), chunk):
        part = assignment[a:a + chunk]
        n = len(part)
        onehot = sparse.csr_matrix((np.ones(n, np.float64), (part, np.arange(n))), shape=(k, n))
        sums += onehot @ features[a:a + chunk].astype(np.float64)
    return sums, np.bincount(assignment, minlength=k)


def _plus_plus(features: np.ndarray, fixed: np.ndarray, extra: int, rng: np.random.Generator) -> np.ndarray:
    """``extra`` more centres (extra, J) by D² sampling from ``features`` given the ``fixed`` (C, J) ones."""
    centres = [*fixed]
    if not centres:
        centres.append(features[rng.integers(len(features))])
    d = nearest_centre(features, np.stack(centres))[1].astype(np.float64)
    while len(centres) < len(fixed) + extra:
        total = d.sum()
        row = int(rng.choice(len(features), p=d / total)) if total > 0 else int(rng.integers(len(features)))
        centres.append(features[row])
        d = np.minimum(d, nearest_centre(features, features[row:row + 1])[1])
    return np.stack(centres[len(fixed):]).astype(np.float32)


def constrained_kmeans(unlabelled: np.ndarray, labelled: np.ndarray, labels: np.ndarray, k: int, seed: int = 0,
                       max_iter: int = 100, tol: float = 1e-4) -> ConstrainedFit:
    """Constrained k-means of ``unlabelled`` (N, J) given ``labelled`` (M, J) rows of class ``labels`` (M,) in
    ``[0, C)`` (every class present); centre ``c < C`` is class ``c``'s. Stops when no assignment changes or the
    centres move by at most ``tol`` x the mean feature variance in all (scikit-learn's rule), or after
    ``max_iter`` iterations. Deterministic for a given ``seed``."""
    unlabelled = np.asarray(unlabelled, np.float32)
    labelled = np.asarray(labelled, np.float32).reshape(-1, unlabelled.shape[1])
    labels = np.asarray(labels, np.int64)
    classes = int(labels.max()) + 1 if labels.size else 0
    if labels.size and (labels.min() < 0 or len(np.unique(labels)) != classes):
        raise ValueError("labels must be 0..C-1 with every class present")
    if classes > k:
        raise PathouccError(f"{classes} named classes have examples but k={k}: each needs its own cluster; raise "
                            "--k or drop classes")
    if len(unlabelled) + len(labelled) < k:
        raise PathouccError(f"only {len(unlabelled) + len(labelled)} patches for k={k} clusters")
    fixed_sums, fixed_counts = _member_sums(labelled, labels, classes) if classes else (
        np.zeros((0, unlabelled.shape[1])), np.zeros(0, np.int64))
    fixed = (fixed_sums / fixed_counts[:, None]).astype(np.float32)
    rng = np.random.default_rng(seed)
    extra = _plus_plus(unlabelled, fixed, k - classes, rng) if k > classes else np.zeros((0, fixed.shape[1]))
    centers = np.concatenate([fixed, extra]).astype(np.float32)
    pad = np.zeros(k - classes, np.int64)
    fixed_sums = np.concatenate([fixed_sums, np.zeros((k - classes, fixed_sums.shape[1]))])
    fixed_counts = np.concatenate([fixed_counts, pad])
    assignment = np.full(len(unlabelled), -1, np.int64)
    threshold = tol * float(np.mean(np.var(unlabelled, axis=0))) if len(unlabelled) else 0.0
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        new, _ = nearest_centre(unlabelled, centers)
        if np.array_equal(new, assignment):
            break
        assignment = new
        sums, counts = _member_sums(unlabelled, assignment, k)
        sums, counts = sums + fixed_sums, counts + fixed_counts
        filled = counts > 0  # an empty cluster keeps its centre
        previous = centers.copy()
        centers[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        if float(((centers - previous) ** 2).sum()) <= threshold:
            assignment = nearest_centre(unlabelled, centers)[0]
            break
    _, d_unlabelled = nearest_centre(unlabelled, centers)
    own = ((labelled - centers[labels]) ** 2).sum(1) if classes else np.zeros(0)
    inertia = float((d_unlabelled.sum() + own.sum()) / max(1, len(unlabelled) + len(labelled)))
    return ConstrainedFit(centers, assignment, iterations, inertia)


def named_cluster_model(unlabelled: np.ndarray, labelled: np.ndarray, labels: np.ndarray, classes: list[str],
                        k: int, seed: int, source: str) -> tuple[ClusterModel, list[str]]:
    """The ``examples`` fit: constrained k-means with ``labels`` (M,) indexing ``classes``; returns the model
    (cluster ``c`` named after its class, or ``cluster c`` for a class without examples) and the notes.

    Classes in ``classes`` without any example get no centre of their own: one note names them."""
    present = sorted(set(np.asarray(labels).tolist()))
    remap = np.full(len(classes), -1, np.int64)
    remap[present] = np.arange(len(present))
    fit = constrained_kmeans(unlabelled, labelled, remap[np.asarray(labels, np.int64)], k, seed)
    names = [classes[c] for c in present] + [f"cluster {c}" for c in range(len(present), k)]
    missing = [classes[c] for c in range(len(classes)) if c not in present]
    notes = [f"classes without a labelled example (their patches fall in unnamed clusters): {', '.join(missing)}"
             ] if missing else []
    cm = ClusterModel(fit.centers, seed, max(fit.inertia, 1e-8), source, KMeansFit.EXAMPLES, names)
    return cm, notes
