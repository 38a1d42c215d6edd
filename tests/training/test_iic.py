"""The IIC baseline: its loss (minus the mutual information of paired assignments), the paired transform, and
training through the one loop, scored on held-out digits (`pathoucc baseline --method iic`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import run_cli

from pathoucc.cluster.baselines import evaluate_iic
from pathoucc.config import config_from_dict
from pathoucc.training.iic import iic_loss, random_affine


def mutual_information(p: np.ndarray, q: np.ndarray) -> float:
    """I(z, z') of the symmetrised joint, written out term by term."""
    joint = p.T @ q / len(p)
    joint = (joint + joint.T) / 2
    pi, pj = joint.sum(1), joint.sum(0)
    return sum(joint[i, j] * math.log(joint[i, j] / (pi[i] * pj[j]))
               for i in range(len(pi)) for j in range(len(pj)) if joint[i, j] > 0)


def test_loss_is_minus_the_mutual_information() -> None:
    k = 5
    same = torch.eye(k).repeat(4, 1)  # paired one-hot assignments, balanced over k clusters: I = log k
    assert float(iic_loss(same, same)) == pytest.approx(-math.log(k), abs=1e-5)
    constant = torch.zeros(20, k)
    constant[:, 0] = 1  # everything in one cluster: nothing shared, I = 0
    assert float(iic_loss(constant, constant)) == pytest.approx(0.0, abs=1e-5)
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(k), 64), rng.dirichlet(np.ones(k), 64)
    assert float(iic_loss(torch.tensor(p), torch.tensor(q))) == pytest.approx(-mutual_information(p, q), abs=1e-6)
    # swapping the pair or permuting the clusters of both changes nothing
    perm = [2, 0, 4, 1, 3]
    assert float(iic_loss(torch.tensor(q), torch.tensor(p))) == pytest.approx(float(iic_loss(torch.tensor(p),
                                                                                              torch.tensor(q))))
    assert float(iic_loss(torch.tensor(p[:, perm]), torch.tensor(q[:, perm]))) == pytest.approx(
        float(iic_loss(torch.tensor(p), torch.tensor(q))), abs=1e-6)


def test_paired_transform_is_seeded_and_the_identity_without_range() -> None:
    x = torch.rand(6, 1, 12, 12)
    a = random_affine(x, torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(a, random_affine(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, random_affine(x, torch.Generator().manual_seed(4)))
    same = random_affine(x, torch.Generator().manual_seed(3), degrees=0, scale=0, shift=0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)


@pytest.fixture()
def iic_config(tiny_config):
    threads = torch.get_num_threads()  # train.num_threads sets torch's threads for the process: put them back
    yield tiny_config | {"train": tiny_config["train"] | {"steps": 25, "log_every": 25, "lr": 3e-3,
                                                               "num_threads": 1},
                          "eval": {"k": 10, "n_init": 2, "batch_size": 256}}
    torch.set_num_threads(threads)


def test_iic_learns_clusters_of_held_out_digits_through_the_loop(iic_config) -> None:
    cfg = config_from_dict(iic_config)
    result = evaluate_iic(cfg, "test", batch_size=128)
    assert result["method"] == "iic" and result["steps"] == 25 and result["num_instances"] == 300
    chance = 0.1 * 1.5  # ten balanced digits: a constant or random labelling scores ~10-15 %
    assert result["accuracy"] > chance, result
    again = evaluate_iic(cfg, "test", batch_size=128)
    assert again["accuracy"] == result["accuracy"] and again["cluster_sizes"] == result["cluster_sizes"]


def test_iic_baseline_command_stops_at_the_time_budget(monkeypatch, capsys, iic_config, tmp_path) -> None:
    import yaml

    path = tmp_path / "iic.yaml"
    path.write_text(yaml.safe_dump(iic_config))
    code, out, err = run_cli(monkeypatch, capsys, "baseline", str(path), "--method", "iic", "--out",
                             str(tmp_path / "iic.json"), "--set", "train.steps=100000",
                             "--set", "train.max_minutes=0.02")
    assert code == 0, err
    result = json.loads((tmp_path / "iic.json").read_text())
    assert result["method"] == "iic" and 0 < result["steps"] < 100000 and "iic (test)" in out
    assert result["train_seconds"] >= 1.2 and result["train_seconds"] < 10


def test_the_subhead_of_lowest_loss_is_kept(iic_config) -> None:
    from pathoucc.data.sources import load_pools
    from pathoucc.training.iic import IICNet, choose_head

    cfg = config_from_dict(iic_config)
    pool = load_pools(cfg.data, ("train",))["train"]
    net = IICNet(cfg, 10, subheads=3, overcluster=4)
    assert [h.out_features for h in net.heads] == [10] * 3 and [h.out_features for h in net.over] == [40] * 3
    with torch.no_grad():  # head 1 gives every instance the same cluster: no information shared, loss 0
        net.heads[1].weight.zero_()
        net.heads[1].bias.copy_(torch.arange(10.0) * 10)
        net.heads[2].weight.mul_(30)  # sharp, instance-dependent assignments: the most negative loss
    losses = choose_head(net, pool, 64, cfg.seed)
    assert len(losses) == 3 and losses[1] == pytest.approx(0.0, abs=1e-4)
    assert net.best == int(np.argmin(losses)) and losses[net.best] < losses[1]
    assert len(IICNet(cfg, 10, subheads=1, overcluster=0).over) == 0
    with pytest.raises(ValueError, match="subheads >= 1"):
        IICNet(cfg, 10, subheads=0)
