"""Bags with a known unique class count, drawn from any labelled pool of instances.

Instance labels are used here only to *build* bags; the model never sees them as a training target.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class BagSampler:
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
        self.bag_size, self.ucc_min, self.ucc_max = bag_size, ucc_min, ucc_max
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(self.classes))
        self._pools = np.split(order, np.cumsum(counts)[:-1])
        self.rng = np.random.default_rng(seed)
        self._ucc_queue: list[int] = []

    @property
    def num_ucc(self) -> int:
        """Number of distinct ucc values (the classifier's output size)."""
        return self.ucc_max - self.ucc_min + 1

    def _next_ucc(self) -> int:
        if not self._ucc_queue:
            self._ucc_queue = list(self.rng.permutation(np.arange(self.ucc_min, self.ucc_max + 1)))
        return int(self._ucc_queue.pop())

    def sample(self, num_bags: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(indices (num_bags, bag_size) int64, ucc (num_bags,) int64)``."""
        indices = np.empty((num_bags, self.bag_size), dtype=np.int64)
        ucc = np.empty(num_bags, dtype=np.int64)
        for b in range(num_bags):
            u = self._next_ucc()
            chosen = self.rng.choice(len(self.classes), size=u, replace=False)
            # every chosen class once, the rest of the slots at random among them
            slots = np.concatenate([np.arange(u), self.rng.integers(0, u, self.bag_size - u)])
            counts = np.bincount(slots, minlength=u)
            parts = [
                self.rng.choice(self._pools[c], size=n, replace=n > len(self._pools[c]))
                for c, n in zip(chosen, counts, strict=True)
            ]
            indices[b] = self.rng.permutation(np.concatenate(parts))
            ucc[b] = u
        return indices, ucc

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "queue": [int(u) for u in self._ucc_queue]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._ucc_queue = list(state["queue"])


class RegionBagSampler:
    """Bags given by the data: each region (e.g. a window of a slide) is one bag with a known ucc.

    A bag is ``bag_size`` instances drawn from one region (with replacement if it has fewer); regions are
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
        self.bag_size, self.ucc_min, self.ucc_max = bag_size, ucc_min, ucc_max
        members = [np.flatnonzero(bag_index == r) for r in range(len(bag_ucc))]
        self._regions = {
            u: [m for m, ru in zip(members, bag_ucc, strict=True) if ru == u and len(m) > 0]
            for u in range(ucc_min, ucc_max + 1)
        }
        self._regions = {u: rs for u, rs in self._regions.items() if rs}
        if not self._regions:
            raise ValueError(f"no region has a ucc in [{ucc_min}, {ucc_max}]")
        self.rng = np.random.default_rng(seed)
        self._ucc_queue: list[int] = []

    @property
    def num_ucc(self) -> int:
        return self.ucc_max - self.ucc_min + 1

    def _next_ucc(self) -> int:
        if not self._ucc_queue:
            self._ucc_queue = list(self.rng.permutation(sorted(self._regions)))
        return int(self._ucc_queue.pop())

    def sample(self, num_bags: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(indices (num_bags, bag_size) int64, ucc (num_bags,) int64)``."""
        indices = np.empty((num_bags, self.bag_size), dtype=np.int64)
        ucc = np.empty(num_bags, dtype=np.int64)
        for b in range(num_bags):
            u = self._next_ucc()
            regions = self._regions[u]
            members = regions[self.rng.integers(len(regions))]
            indices[b] = self.rng.choice(members, self.bag_size, replace=len(members) < self.bag_size)
            ucc[b] = u
        return indices, ucc

    state_dict = BagSampler.state_dict
    load_state_dict = BagSampler.load_state_dict


def create_bag_sampler(pool, bag_size: int, ucc_min: int, ucc_max: int, seed: int):
    """Regions given by the data when the pool has them, else bags built from the instance labels."""
    if pool.bag_index is not None and pool.bag_ucc is not None:
        return RegionBagSampler(pool.bag_index, pool.bag_ucc, bag_size, ucc_min, ucc_max, seed)
    known = pool.labels >= 0
    if not known.all():
        raise ValueError("instances without labels and without regions cannot be put into bags")
    return BagSampler(pool.labels, bag_size, ucc_min, ucc_max, seed)
