"""Large and variable-size bags in training: shared instances, whole regions larger than bag_size, chunking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pathoucc.config import config_from_dict
from pathoucc.data.pool import InstancePool
from pathoucc.errors import PathouccError
from pathoucc.training.losses import ucc_nll
from pathoucc.training.train import prepare_ucc, ucc_step


def _region_pools(digits, sizes: list[int]) -> dict[str, InstancePool]:
    """One count-only region per size (no patch labels), each of 1-3 digit classes."""
    images, labels = digits
    rng = np.random.default_rng(0)
    picked, region, ucc = [], [], []
    for r, n in enumerate(sizes):
        classes = rng.choice(10, 1 + r % 3, replace=False)
        pool = np.flatnonzero(np.isin(labels, classes))
        members = np.concatenate([np.flatnonzero(labels == c)[:1] for c in classes])  # every class present
        picked.append(np.concatenate([members, rng.choice(pool, n - len(members))]))
        region.append(np.full(n, r))
        ucc.append(len(classes))
    index = np.concatenate(picked)
    pool = InstancePool(images[index], np.full(len(index), -1), np.concatenate(region), np.array(ucc))
    return {"train": pool, "val": None}


def test_whole_region_larger_than_bag_size_trains(tiny_config, digits, tmp_path: Path) -> None:
    """Count-only regions of 7 and 1 000 instances are each one whole bag (bag_size is 8), encoded in chunks."""
    cfg = config_from_dict(tiny_config | {"train": tiny_config["train"] | {"encoder_chunk": 128, "steps": 2},
                                          "bags": tiny_config["bags"] | {"bags_per_batch": 2}})
    training = prepare_ucc(cfg, _region_pools(digits, [7, 1000, 300]))
    batch = training.sampler.sample(0, 2)
    assert sorted(batch.sizes.tolist())[-1] >= 300 and batch.members.shape[1] >= 300
    model = training.state.modules["model"]
    before = [p.detach().clone() for p in model.parameters()]
    terms = ucc_step(training.state, training.data[0], cfg)
    assert np.isfinite(float(terms["loss"])) and training.state.lr == terms["lr"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_shared_instance_bags_train(tiny_config, tmp_path: Path) -> None:
    """bags.instances_per_batch: 16 bags of 8 from 40 shared instances per step."""
    from pathoucc.data.sources import load_pools

    cfg = config_from_dict(tiny_config | {"bags": tiny_config["bags"] | {"bags_per_batch": 16,
                                                                          "instances_per_batch": 40}})
    training = prepare_ucc(cfg, load_pools(cfg.data, ("train", "val")))
    batch = training.sampler.sample(0, 16)
    assert len(batch.instances) == 40 and batch.members.shape == (16, 8)
    item = training.data[0]
    assert item["images"].shape[0] == 40 and item["members"].shape == (16, 8)  # the step gets the shared instances
    before = training.state.modules["model"].head.weight.detach().clone()
    assert np.isfinite(float(ucc_step(training.state, item, cfg)["loss"]))
    assert not torch.equal(before, training.state.modules["model"].head.weight)


def test_ucc_range_wider_than_the_classes_is_a_config_error(tiny_config, tmp_path: Path) -> None:
    from pathoucc.data.sources import load_pools

    cfg = config_from_dict(tiny_config | {"bags": tiny_config["bags"] | {"ucc_max": 8, "bag_size": 16}})
    pools = load_pools(cfg.data, ("train", "val"))
    pools["train"] = InstancePool(pools["train"].images[:300], pools["train"].labels[:300] % 5)
    with pytest.raises(PathouccError, match=r"bags.ucc_max=8 but the training instances have only 5 classes"):
        prepare_ucc(cfg, pools)


def test_subsets_of_count_only_regions_are_upper_bounds() -> None:
    """region_subsets: each region gives its whole bag (exact count) and subsets of bag_size of its own positions,
    labelled with the region's count as an upper bound."""
    from pathoucc.data.bags import RegionBagSampler

    region = np.repeat([0, 1, 2], [40, 12, 3])
    sampler = RegionBagSampler(region, np.array([2, 1, 2]), bag_size=8, ucc_min=1, ucc_max=3, seed=0, subsets=5)
    batch = sampler.sample(0, 3)
    upper = batch.sizes == 8  # the regions hold 40, 12 and 3 instances: only subsets have 8
    assert (batch.low_ucc[upper] == 1).all() and (batch.low_ucc[~upper] == batch.ucc[~upper]).all()
    assert upper.sum() == 5 * sum(len(np.unique(batch.instances[batch.members[i][batch.mask[i]]])) > 8
                                  for i in np.flatnonzero(~upper))
    for i in np.flatnonzero(upper):
        pos = batch.members[i][batch.mask[i]]
        assert len(pos) == 8 and len(np.unique(pos)) == 8
        assert len(np.unique(region[batch.instances[pos]])) == 1  # one region's instances
        assert batch.ucc[i] == {0: 2, 1: 1}[region[batch.instances[pos[0]]]]
    # without subsets the draws are unchanged (same bags as before the option existed)
    plain = RegionBagSampler(region, np.array([2, 1, 2]), bag_size=8, ucc_min=1, ucc_max=3, seed=0).sample(0, 3)
    assert plain.low is None and (plain.low_ucc == plain.ucc).all()


def test_unions_of_two_regions_carry_the_interval_of_their_count() -> None:
    """region_unions: pairs of the step's whole regions, labelled [max(c1, c2), min(c1 + c2, ucc_max)]; the whole
    regions and their draws are those of a sampler without unions."""
    from pathoucc.data.bags import RegionBagSampler

    region = np.repeat(np.arange(6), [5, 6, 7, 8, 9, 10])
    counts = np.array([1, 2, 3, 1, 2, 3])
    plain = RegionBagSampler(region, counts, bag_size=3, ucc_max=4, seed=3).sample(7, 6)
    batch = RegionBagSampler(region, counts, bag_size=3, ucc_max=4, seed=3, unions=4).sample(7, 6)
    n = len(plain.ucc)
    assert len(batch.ucc) == n + 4 and np.array_equal(batch.instances, plain.instances)
    assert np.array_equal(batch.ucc[:n], plain.ucc) and np.array_equal(batch.low_ucc[:n], plain.ucc)
    seen = set()
    for i in range(n, n + 4):
        members = batch.instances[batch.members[i][batch.mask[i]]]
        pair = np.unique(region[members])
        assert len(pair) == 2 and len(members) == np.isin(region, pair).sum()  # two whole regions, nothing else
        c1, c2 = counts[pair]
        assert (batch.low_ucc[i], batch.ucc[i]) == (max(c1, c2), min(c1 + c2, 4))
        seen.add(tuple(pair))
    assert len(seen) == 4  # distinct pairs


def test_interval_loss_is_the_probability_of_the_interval() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.0], [0.5, 1.0, 2.0, 0.0]])
    p = logits.softmax(1)
    target = torch.tensor([1, 1, 3])
    nll = ucc_nll(logits, target, torch.tensor([0, 1, 2]))  # an upper bound, an exact count, an interval
    torch.testing.assert_close(nll[0], -torch.log(p[0, :2].sum()))
    torch.testing.assert_close(nll[1], -torch.log(p[1, 1]))
    torch.testing.assert_close(nll[2], -torch.log(p[2, 2:].sum()))
    torch.testing.assert_close(ucc_nll(logits, target), torch.nn.functional.cross_entropy(logits, target,
                                                                                          reduction="none"))


def test_region_subsets_train(tiny_config, digits, tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_config | {"bags": tiny_config["bags"] | {"bags_per_batch": 2, "region_subsets": 4}})
    training = prepare_ucc(cfg, _region_pools(digits, [7, 60, 30]))
    item = training.data[0]
    assert bool((item["low"] < item["ucc"]).any())  # subsets, labelled with an upper bound, reach the step
    before = {k: v.clone() for k, v in training.state.modules["model"].state_dict().items()}
    terms = ucc_step(training.state, item, cfg)
    # a positive count NLL over whole regions and their subsets, and the step moves the encoder's weights
    assert float(terms["loss"]) > 0 and training.state.step == 0
    changed = [k for k, v in training.state.modules["model"].state_dict().items() if not torch.equal(v, before[k])]
    assert any("encoder" in k for k in changed)
