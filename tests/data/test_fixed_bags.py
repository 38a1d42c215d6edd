"""Fixed bags of a labelled split: the regions the refinement uses on MNIST/IDX."""

from __future__ import annotations

import numpy as np
import pytest

from pathoucc.data.fixed_bags import fixed_bags, with_fixed_bags
from pathoucc.data.pool import InstancePool


def test_bags_are_disjoint_full_and_counted():
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    labels[:40] = -1  # unknown labels go in no bag
    region, count = fixed_bags(labels, bag_size=6, ucc_min=1, ucc_max=4, seed=2)
    assert (region[:40] == -1).all()
    sizes = np.bincount(region[region >= 0], minlength=len(count))
    assert (sizes == 6).all()  # every bag full, and an instance in one bag at most (region is one value per row)
    for r in range(len(count)):
        assert len(np.unique(labels[region == r])) == count[r]
    assert np.abs(np.bincount(count, minlength=5)[1:] - len(count) / 4).max() <= 1  # balanced counts
    assert (region >= 0).mean() > 0.97  # dealing stops only when the classes run out


def test_same_seed_same_bags_other_seed_other():
    labels = np.random.default_rng(1).integers(0, 5, 800)
    a, b, c = (fixed_bags(labels, 4, 1, 3, seed) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_pool_keeps_its_instances():
    rng = np.random.default_rng(3)
    pool = InstancePool(rng.integers(0, 255, (300, 4, 4), dtype=np.uint8), rng.integers(0, 3, 300))
    bagged = with_fixed_bags(pool, 4, 1, 3, seed=0)
    np.testing.assert_array_equal(bagged.images, pool.images)
    np.testing.assert_array_equal(bagged.labels, pool.labels)
    assert bagged.region is not None and bagged.region.max() + 1 == len(bagged.region_count)


@pytest.mark.parametrize(("sizes", "message"), [((4, 3, 2), "ucc_min <= ucc_max"), ((4, 1, 4), "only 3 classes")])
def test_bad_bag_settings(sizes, message):
    with pytest.raises(ValueError, match=message):
        fixed_bags(np.arange(30) % 3, *sizes)
