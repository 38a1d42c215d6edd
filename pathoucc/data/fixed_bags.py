"""Fixed bags of a labelled split (MNIST, IDX): the regions that the count-consistent refinement needs.

Slides bring their regions; built bags are drawn afresh every step. For the refinement
(:mod:`pathoucc.cluster.refine`) the training instances are dealt once into disjoint bags, drawn as the training
draws them (:class:`pathoucc.data.bags.BagSampler`: balanced counts in ``[ucc_min, ucc_max]``, every chosen class
present, the other slots among the chosen classes). The labels only make the bags; the refinement sees each bag's
count, as the UCC training does.
"""

from __future__ import annotations

import numpy as np

from pathoucc.data.pool import Pool

__all__ = ["fixed_bags", "with_fixed_bags"]


def fixed_bags(labels: np.ndarray, bag_size: int, ucc_min: int, ucc_max: int, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Deal the labelled instances into disjoint bags of ``bag_size``.

    labels : (N,) int64 class of each instance (-1: unknown, in no bag).
    Returns ``region`` (N,) int64 (the bag of each instance, -1 in none) and ``region_count`` (R,) int64 (each
    bag's count of distinct classes). Dealing stops at the first bag the instances left can no longer fill; those
    lie in no bag. The same seed gives the same bags.
    """
    labels = np.asarray(labels, np.int64)
    if not 1 <= ucc_min <= ucc_max <= bag_size:
        raise ValueError(f"need 1 <= ucc_min <= ucc_max <= bag_size, got {ucc_min}, {ucc_max}, {bag_size}")
    classes = np.unique(labels[labels >= 0])
    if len(classes) < ucc_max:
        raise ValueError(f"ucc_max={ucc_max} but the instances have only {len(classes)} classes")
    rng = np.random.default_rng([seed, 0xBA6])
    stacks = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    taken, left = np.zeros(len(classes), np.int64), np.array([len(st) for st in stacks], np.int64)
    region = np.full(len(labels), -1, np.int64)
    counts: list[int] = []
    values, queue = np.arange(ucc_min, ucc_max + 1), []
    while True:
        queue = queue or rng.permutation(values).tolist()  # balanced counts: each value once per len(values) bags
        count = int(queue.pop())
        if np.count_nonzero(left) < count:
            break
        with np.errstate(divide="ignore"):  # classes with none left: log 0 = -inf, never chosen
            chosen = np.argsort(-(np.log(left) + rng.gumbel(size=len(left))))[:count]  # weighted by left, no repeats
        slots = np.bincount(np.concatenate([np.arange(count), rng.integers(0, count, bag_size - count)]),
                            minlength=count)
        if (slots > left[chosen]).any():
            break
        for c, n in zip(chosen.tolist(), slots.tolist(), strict=True):
            region[stacks[c][taken[c]:taken[c] + n]] = len(counts)
        taken[chosen] += slots
        left[chosen] -= slots
        counts.append(count)
    return region, np.asarray(counts, np.int64)


def with_fixed_bags(pool: Pool, bag_size: int, ucc_min: int, ucc_max: int, seed: int = 0) -> Pool:
    """``pool`` with its instances dealt into fixed bags (:func:`fixed_bags`) as its regions."""
    region, count = fixed_bags(pool.labels, bag_size, ucc_min, ucc_max, seed)
    return pool.subset(np.ones(len(pool), bool), region, count)
