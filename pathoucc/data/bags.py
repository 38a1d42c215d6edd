"""Bags with a known unique class count (ucc), drawn from a labelled pool or given by the data as regions.

Instance labels are used here only to *build* bags and to count a bag's own classes; the model never sees them
as a training target. A step's bags are a :class:`BagBatch`: the instances to encode once, and each bag as
positions into them (bags may share instances, and bags of different sizes are padded and masked).

Sampling is a pure function of ``(seed, step)``: step ``s`` always draws the same bags, so a resumed run, a
DataLoader worker or another DDP rank (``seed`` offset by the rank) needs no sampler state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["BagBatch", "BagSampler", "RegionBagSampler", "create_bag_sampler"]

log = logging.getLogger(__name__)


@dataclass
class BagBatch:
    """The bags of one step.

    instances : (M,) int64, pool indices of the instances to encode (each once)
    members : (B, N) int64, the members of each bag as positions into ``instances`` (padding: 0)
    mask : (B, N) bool, True for real members (a bag of n < N members is padded with N - n False)
    ucc : (B,) int64, unique class count of each bag (for an interval label: its upper end)
    low : (B,) int64 or None, the lowest count a bag can have: ``low == ucc`` for an exact count, lower for an
        interval (a subset of a count-only region holds between ``ucc_min`` and the region's count; the union of
        two regions between the larger of their counts and their sum); None = every count is exact
    """

    instances: np.ndarray
    members: np.ndarray
    mask: np.ndarray
    ucc: np.ndarray
    low: np.ndarray | None = None

    @property
    def low_ucc(self) -> np.ndarray:
        """(B,) int64, the lowest count of each bag (``ucc`` where it is exact)."""
        return self.ucc if self.low is None else self.low

    @property
    def sizes(self) -> np.ndarray:
        """(B,) number of real members of each bag."""
        return self.mask.sum(1)


def _pad(bags: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole bags of pool indices -> (instances, members, mask), every instance listed once per bag."""
    starts = np.cumsum([0] + [len(b) for b in bags[:-1]])
    members, mask = _pad_positions([s + np.arange(len(b)) for s, b in zip(starts, bags, strict=True)])
    return np.concatenate(bags).astype(np.int64), members, mask


def _pad_positions(bags: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bags as positions into a step's instances -> padded ``members`` and ``mask`` (B, N)."""
    n = max(len(b) for b in bags)
    members = np.zeros((len(bags), n), np.int64)
    mask = np.zeros((len(bags), n), bool)
    for i, b in enumerate(bags):
        members[i, : len(b)] = b
        mask[i, : len(b)] = True
    return members, mask


def _balanced(rng: np.random.Generator, values: np.ndarray, num_bags: int) -> np.ndarray:
    """``num_bags`` ucc values cycling through ``values`` (each equally often, ±1), in random order."""
    return rng.permutation(np.resize(rng.permutation(values), num_bags))


class BagSampler:
    """Bags of ``bag_size`` instances whose ucc is drawn from [ucc_min, ucc_max], built from instance labels.

    Each step's ucc values are balanced; every chosen class is present at least once and the other slots take
    instances of the chosen classes at random.

    With ``instances_per_batch`` (M), bags **share instances**: a step first draws M/C instances of each of the C
    classes, encodes them once, and builds every bag from them, so a step can hold many more bags (labels) than
    ``M / bag_size`` at the encoder cost of M instances. Without it each bag has instances of its own.

    Parameters
    ----------
    labels : (N,) int array
        Class of every instance in the pool (only used to build bags).
    bag_size, ucc_min, ucc_max : int
        Instances per bag and the range of unique class counts.
    seed : int
        The same seed gives the same bags at every step.
    instances_per_batch : int or None
        Distinct instances per step when bags share them.
    """

    def __init__(self, labels: np.ndarray, bag_size: int, ucc_min: int = 1, ucc_max: int = 4, seed: int = 0,
                 instances_per_batch: int | None = None) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("labels must be a non-empty 1-D array")
        self.classes, inverse = np.unique(labels, return_inverse=True)
        if ucc_max > len(self.classes):
            raise ValueError(f"bags.ucc_max={ucc_max} but the training instances have only {len(self.classes)} "
                             "classes")
        if not 1 <= ucc_min <= ucc_max <= bag_size:
            raise ValueError(f"need 1 <= bags.ucc_min <= bags.ucc_max <= bags.bag_size, got {ucc_min}, {ucc_max}, "
                             f"{bag_size}")
        if instances_per_batch is not None and instances_per_batch < len(self.classes):
            raise ValueError(f"bags.instances_per_batch={instances_per_batch} is below the number of classes "
                             f"({len(self.classes)}): a step needs at least one instance of each")
        self.bag_size, self.ucc_min, self.ucc_max, self.seed = bag_size, ucc_min, ucc_max, seed
        self.instances_per_batch = instances_per_batch
        order = np.argsort(inverse, kind="stable")
        self._pools = np.split(order, np.cumsum(np.bincount(inverse))[:-1])

    @property
    def num_ucc(self) -> int:
        """Number of distinct ucc values (the classifier's output size)."""
        return self.ucc_max - self.ucc_min + 1

    @property
    def counts(self) -> np.ndarray:
        """The counts the bags are drawn with (every value in [ucc_min, ucc_max])."""
        return np.arange(self.ucc_min, self.ucc_max + 1)

    def sample(self, step: int, num_bags: int) -> BagBatch:
        """The ``num_bags`` bags of ``step`` (the same for the same seed and step)."""
        rng = np.random.default_rng((self.seed, step))
        ucc = _balanced(rng, np.arange(self.ucc_min, self.ucc_max + 1), num_bags)
        if self.instances_per_batch is None:
            bags = [self._own_bag(rng, int(u)) for u in ucc]
            instances, members, mask = _pad(bags)
            return BagBatch(instances, members, mask, ucc)
        return self._shared(rng, ucc)

    def _own_bag(self, rng: np.random.Generator, ucc: int) -> np.ndarray:
        chosen = rng.choice(len(self.classes), size=ucc, replace=False)
        slots = np.concatenate([np.arange(ucc), rng.integers(0, ucc, self.bag_size - ucc)])
        counts = np.bincount(slots, minlength=ucc)
        parts = [rng.choice(self._pools[c], size=n, replace=n > len(self._pools[c]))
                 for c, n in zip(chosen, counts, strict=True)]
        return rng.permutation(np.concatenate(parts))

    def _shared(self, rng: np.random.Generator, ucc: np.ndarray) -> BagBatch:
        c = len(self.classes)
        per = max(1, self.instances_per_batch // c)
        instances = np.concatenate([rng.choice(p, per, replace=len(p) < per) for p in self._pools])
        b, n = len(ucc), self.bag_size
        chosen = rng.random((b, c)).argsort(1)  # a random class order per bag; its first ucc classes are used
        slot = np.arange(n)
        slot = np.where(slot < ucc[:, None], slot, (rng.random((b, n)) * ucc[:, None]).astype(np.int64))
        cls = np.take_along_axis(chosen, slot, 1)  # (B, N) class of every member
        # the j-th member of class c in a bag takes the j-th instance of c in a random order (no repeats unless a
        # bag needs more instances of one class than the step holds)
        rank = np.cumsum(cls[:, :, None] == np.arange(c), 1)[np.arange(b)[:, None], np.arange(n), cls] - 1
        order = rng.random((b, c, per)).argsort(2)
        within = order[np.arange(b)[:, None], cls, rank % per]
        return BagBatch(instances, cls * per + within, np.ones((b, n), bool), ucc)


class RegionBagSampler:
    """Bags given by the data: each region (a window or polygon of a slide) with a known ucc.

    A region of at most ``bag_size`` instances is one whole bag, whatever its size (bags are padded and masked).
    A larger region is, when the labels of all its instances are known (a mask or dense annotations), a random
    subset of ``bag_size`` of them labelled with the count of its **own** classes; when only the region's count is
    known, the whole region (the count of a subset could be lower). Regions are drawn balanced over their ucc
    values; a step holds ``num_bags`` regions, or fewer when ``instances_per_batch`` would be exceeded (never
    fewer than one). Regions whose ucc lies outside [ucc_min, ucc_max] are not used; ``skipped`` counts them.

    With ``subsets`` > 0, each region of more than ``bag_size`` instances also gives that many extra bags: random
    subsets of ``bag_size`` of the region's instances, which share the region's encoded instances (no extra
    encoder cost). Their label is the region's count as an **upper bound** (``BagBatch.low`` = ``ucc_min``; the
    loss then asks only for ``P(ucc <= count)``) -- a subset of a region can miss a class, never gain one.

    With ``unions`` > 0, a step also gives up to that many **union bags**: two of its regions together (again no
    extra encoder cost), whose count lies in ``[max(c1, c2), min(c1 + c2, ucc_max)]`` (the classes they share are
    not known; the classifier's top class stands for "ucc_max or more"). The loss asks for the probability of
    that interval. The pairs are new every step, so a step's few regions give many more distinct bags than the
    cohort has regions: the count classifier cannot learn the regions by heart.

    Patch labels are never read: a region's count is all the sampler knows, whether the tile file holds patch
    labels or not.

    Parameters
    ----------
    region : (N,) int array
        Region of every instance (-1: in no region).
    region_count : (R,) int array
        Unique class count of every region.
    subsets : int
        Extra subset bags per region.
    unions : int
        Extra union bags (pairs of the step's regions) per step.
    """

    def __init__(self, region: np.ndarray, region_count: np.ndarray, bag_size: int, ucc_min: int = 1,
                 ucc_max: int = 4, seed: int = 0, instances_per_batch: int | None = None,
                 subsets: int = 0, unions: int = 0) -> None:
        region, region_count = np.asarray(region), np.asarray(region_count)
        self.bag_size, self.ucc_min, self.ucc_max, self.seed = bag_size, ucc_min, ucc_max, seed
        self.instances_per_batch, self.subsets, self.unions = instances_per_batch, subsets, unions
        order = np.argsort(region, kind="stable")
        bounds = np.searchsorted(region[order], np.arange(len(region_count) + 1))
        self._regions: dict[int, list[np.ndarray]] = {}
        self.skipped = {"below ucc_min": 0, "above ucc_max": 0, "empty": 0}
        for r, u in enumerate(region_count):
            members = order[bounds[r] : bounds[r + 1]]
            if not len(members):
                self.skipped["empty"] += 1
            elif u < ucc_min:
                self.skipped["below ucc_min"] += 1
            elif u > ucc_max:
                self.skipped["above ucc_max"] += 1
            else:
                self._regions.setdefault(int(u), []).append(members)
        if not self._regions:
            found = sorted({int(u) for u in region_count})
            raise ValueError(f"no region has a ucc in [bags.ucc_min, bags.ucc_max] = [{ucc_min}, {ucc_max}] "
                             f"(the regions' counts are {found})")
        if any(self.skipped.values()):
            log.info("regions not used as bags: %s", ", ".join(f"{n} {k}" for k, n in self.skipped.items() if n))
        self._values = np.array(sorted(self._regions))

    @property
    def num_ucc(self) -> int:
        """Number of distinct ucc values (the classifier's output size)."""
        return self.ucc_max - self.ucc_min + 1

    @property
    def counts(self) -> np.ndarray:
        """The distinct counts of the regions used as bags, ascending."""
        return self._values

    @property
    def num_regions(self) -> int:
        return sum(len(r) for r in self._regions.values())

    def sample(self, step: int, num_bags: int) -> BagBatch:
        """Up to ``num_bags`` region bags of ``step`` (the same for the same seed and step), each followed by its
        ``subsets`` subset bags, then the step's ``unions`` union bags."""
        rng = np.random.default_rng((self.seed, step))
        parts, bags, uccs, lows, whole, total = [], [], [], [], [], 0
        for u in _balanced(rng, self._values, num_bags):
            regions = self._regions[int(u)]
            bag, ucc = regions[rng.integers(len(regions))], int(u)
            if parts and self.instances_per_batch and total + len(bag) > self.instances_per_batch:
                break
            parts.append(bag)
            bags.append(total + np.arange(len(bag)))
            uccs.append(ucc)
            lows.append(ucc)
            whole.append((bag, bags[-1], ucc))
            for pick in self._subsets(rng, bag):
                bags.append(total + pick)
                uccs.append(ucc)
                lows.append(self.ucc_min)
            total += len(bag)
        for (a, ca), (b, cb) in self._unions(rng, whole):  # positions and count of each of the two regions
            bags.append(np.concatenate([a, b]))
            uccs.append(min(ca + cb, self.ucc_max))
            lows.append(max(ca, cb))
        members, mask = _pad_positions(bags)
        return BagBatch(np.concatenate(parts).astype(np.int64), members, mask, np.array(uccs, np.int64),
                        np.array(lows, np.int64) if self.subsets or self.unions else None)

    def _subsets(self, rng: np.random.Generator, bag: np.ndarray):
        """``subsets`` random subsets of ``bag_size`` positions in ``bag``."""
        if len(bag) <= self.bag_size:
            return
        for _ in range(self.subsets):
            yield np.sort(rng.choice(len(bag), self.bag_size, replace=False))

    def _unions(self, rng: np.random.Generator, whole: list[tuple[np.ndarray, np.ndarray, int]]):
        """Up to ``unions`` pairs of two different regions among the step's whole regions (``(members,
        positions, ucc)`` each; a region drawn twice in a step is not joined with itself), drawn at random; each
        yielded as ``(positions, ucc)`` twice."""
        if not self.unions:
            return
        first, second = np.triu_indices(len(whole), 1)
        other = np.array([whole[i][0] is not whole[j][0] for i, j in zip(first, second, strict=True)], bool)
        first, second = first[other], second[other]
        for p in np.sort(rng.choice(len(first), min(self.unions, len(first)), replace=False)):
            yield whole[first[p]][1:], whole[second[p]][1:]


def create_bag_sampler(pool, bag_size: int, ucc_min: int, ucc_max: int, seed: int,
                       instances_per_batch: int | None = None, region_subsets: int = 0, region_unions: int = 0,
                       ) -> BagSampler | RegionBagSampler:
    """Regions given by the data when the pool has them (with ``region_subsets`` subset bags each and
    ``region_unions`` union bags per step), else bags built from the instance labels."""
    if pool.region is not None and pool.region_count is not None:
        return RegionBagSampler(pool.region, pool.region_count, bag_size, ucc_min, ucc_max, seed,
                                instances_per_batch, region_subsets, region_unions)
    known = pool.labels >= 0
    if not known.all():
        raise ValueError("instances without labels and without regions cannot be put into bags")
    return BagSampler(pool.labels, bag_size, ucc_min, ucc_max, seed, instances_per_batch)
