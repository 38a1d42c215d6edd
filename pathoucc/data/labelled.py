"""A few labelled instances of a labelled split (MNIST/IDX): a seeded, stratified subset that names the clusters.

``data.labelled_fraction`` (a share of each class) or ``data.labels_per_class`` (a count per class) picks, from
the ``train`` split only, the instances whose labels the constrained k-means may use
(:mod:`pathoucc.cluster.constrained`); the scored split is never among them.
"""

from __future__ import annotations

import numpy as np

from pathoucc.errors import PathouccError

__all__ = ["labelled_subset"]


def labelled_subset(labels: np.ndarray, fraction: float | None = None, per_class: int | None = None,
                    seed: int = 0) -> np.ndarray:
    """Sorted indices ``(M,)`` int64 of a stratified, seeded subset of the instances with a label (``labels``
    (N,) >= 0): ``per_class`` of each class, or ``round(fraction * n_c)`` (at least 1) of each class of
    ``n_c`` instances. The same ``seed`` gives the same subset; a larger ``fraction`` keeps the smaller one's."""
    if (fraction is None) == (per_class is None):
        raise PathouccError("give one of data.labelled_fraction and data.labels_per_class")
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))  # one seeded order: every class takes its first members in it
    picked = []
    for c in np.unique(labels[labels >= 0]).tolist():
        members = order[labels[order] == c]
        n = per_class if per_class is not None else max(1, round(float(fraction) * len(members)))
        if n > len(members):
            raise PathouccError(f"data.labels_per_class is {n} but class {c} has only {len(members)} instances")
        picked.append(members[:n])
    if not picked:
        raise PathouccError("the split has no labelled instances to pick examples from")
    return np.sort(np.concatenate(picked)).astype(np.int64)
