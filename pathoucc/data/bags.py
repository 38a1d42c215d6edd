"""Bags with a known unique class count, drawn from any labelled pool of instances.

Instance labels are used here only to *build* bags; the model never sees them as a training target.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class _UccSampler:
    """Shared machinery: a seeded generator and ucc values cycled in shuffled order (balanced batches)."""

    def __init__(self, bag_size: int, ucc_min: int, ucc_max: int, seed: int, ucc_values: list[int]) -> None:
        self.bag_size, self.ucc_min, self.ucc_max = bag_size, ucc_min, ucc_max
        self._ucc_values = np.asarray(ucc_values)
        self.rng = np.random.default_rng(seed)
        self._ucc_queue: list[int] = []

    @property
    def num_ucc(self) -> int:
        """Number of distinct ucc values (the classifier's output size)."""
        return self.ucc_max - self.ucc_min + 1

    def _next_ucc(self) -> int:
        if not self._ucc_queue:
            self._ucc_queue = list(self.rng.permutation(self._ucc_values))
        return int(self._ucc_queue.pop())

    def _draw(self, ucc: int) -> np.ndarray:
        raise NotImplementedError

    def sample(self, num_bags: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(indices (num_bags, bag_size) int64, ucc (num_bags,) int64)``."""
        indices = np.empty((num_bags, self.bag_size), dtype=np.int64)
        ucc = np.empty(num_bags, dtype=np.int64)
        for b in range(num_bags):
            ucc[b] = self._next_ucc()
            indices[b] = self._draw(int(ucc[b]))
        return indices, ucc

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "queue": [int(u) for u in self._ucc_queue]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._ucc_queue = list(state["queue"])


class BagSampler(_UccSampler):
    """Draw bags of ``bag_size`` instance indices whose number of distinct classes lies in [ucc_min, ucc_max].

    Each batch is balanced over the ucc values (they are cycled in a shuffled order), every chosen class is
    present at least once, and the remaining slots are filled with instances of the chosen classes at random.

    Parameters
    ----------
    labels : (N,) int array
        Class of every instance in the pool (only used to build bags).
    bag_size, ucc_min, ucc_max : int
        Bag shape and the range of unique class counts.
    seed : int
        Seed of the sampler's own generator; the same seed gives the same sequence of bags.
    """

    def __init__(self, labels: np.ndarray, bag_size: int, ucc_min: int = 1, ucc_max: int = 4, seed: int = 0) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("labels must be a non-empty 1-D array")
        self.classes, inverse = np.unique(labels, return_inverse=True)
        if ucc_max > len(self.classes):
            raise ValueError(f"ucc_max={ucc_max} but the pool has only {len(self.classes)} classes")
        if not 1 <= ucc_min <= ucc_max <= bag_size:
            raise ValueError(f"need 1 <= ucc_min <= ucc_max <= bag_size, got {ucc_min}, {ucc_max}, {bag_size}")
        super().__init__(bag_size, ucc_min, ucc_max, seed, list(range(ucc_min, ucc_max + 1)))
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(self.classes))
        self._pools = np.split(order, np.cumsum(counts)[:-1])

    def _draw(self, ucc: int) -> np.ndarray:
        chosen = self.rng.choice(len(self.classes), size=ucc, replace=False)
        # every chosen class once, the rest of the slots at random among them
        slots = np.concatenate([np.arange(ucc), self.rng.integers(0, ucc, self.bag_size - ucc)])
        counts = np.bincount(slots, minlength=ucc)
        parts = [
            self.rng.choice(self._pools[c], size=n, replace=n > len(self._pools[c]))
            for c, n in zip(chosen, counts, strict=True)
        ]
        return self.rng.permutation(np.concatenate(parts))


class RegionBagSampler(_UccSampler):
    """Bags given by the data: each region (e.g. a window of a slide) is one bag with a known ucc.

    A bag is ``bag_size`` instances of one region: all of them, repeated to fill the bag, when the region has
    at most ``bag_size`` (the count is then exact), else a random subset; regions are
    drawn balanced over their ucc values. Regions whose ucc lies outside [ucc_min, ucc_max] are not used.

    Parameters
    ----------
    bag_index : (N,) int array
        Region of every instance (-1: in no region).
    bag_ucc : (R,) int array
        Unique class count of every region.
    """

    def __init__(self, bag_index: np.ndarray, bag_ucc: np.ndarray, bag_size: int, ucc_min: int = 1,
                 ucc_max: int = 4, seed: int = 0) -> None:
        bag_index, bag_ucc = np.asarray(bag_index), np.asarray(bag_ucc)
        order = np.argsort(bag_index, kind="stable")
        bounds = np.searchsorted(bag_index[order], np.arange(len(bag_ucc) + 1))
        regions: dict[int, list[np.ndarray]] = {}
        for r, u in enumerate(bag_ucc):
            members = order[bounds[r] : bounds[r + 1]]
            if ucc_min <= u <= ucc_max and len(members):
                regions.setdefault(int(u), []).append(members)
        if not regions:
            raise ValueError(f"no region has a ucc in [{ucc_min}, {ucc_max}]")
        super().__init__(bag_size, ucc_min, ucc_max, seed, sorted(regions))
        self._regions = regions

    def _draw(self, ucc: int) -> np.ndarray:
        regions = self._regions[ucc]
        members = regions[self.rng.integers(len(regions))]
        if len(members) > self.bag_size:  # a subset: its count may be below the region's
            return self.rng.choice(members, self.bag_size, replace=False)
        # every member at least once (the count stays exact), repeats fill the bag
        extra = self.rng.choice(members, self.bag_size - len(members), replace=True)
        return self.rng.permutation(np.concatenate([members, extra]))


def create_bag_sampler(pool, bag_size: int, ucc_min: int, ucc_max: int, seed: int):
    """Regions given by the data when the pool has them, else bags built from the instance labels."""
    if pool.bag_index is not None and pool.bag_ucc is not None:
        return RegionBagSampler(pool.bag_index, pool.bag_ucc, bag_size, ucc_min, ucc_max, seed)
    known = pool.labels >= 0
    if not known.all():
        raise ValueError("instances without labels and without regions cannot be put into bags")
    return BagSampler(pool.labels, bag_size, ucc_min, ucc_max, seed)
