"""The presence count head: a bag's count as the number of latent clusters present in it."""

from __future__ import annotations

import itertools

import pytest
import torch

from pathoucc.config import ModelConfig
from pathoucc.models import create_model
from pathoucc.models.presence import PresenceCount, poisson_binomial


def test_poisson_binomial_matches_enumeration() -> None:
    p = torch.tensor([[0.1, 0.7, 0.4], [1.0, 0.0, 0.5]])
    dist = poisson_binomial(p)
    for b in range(2):
        want = torch.zeros(4)
        for hits in itertools.product([0, 1], repeat=3):
            h = torch.tensor(hits, dtype=torch.float32)
            want[int(h.sum())] += torch.prod(torch.where(h > 0, p[b], 1 - p[b]))
        torch.testing.assert_close(dist[b], want)


def _head_with_one_hot_clusters() -> PresenceCount:
    """Features are one-hot cluster codes; a large diagonal makes each instance sure of its cluster."""
    head = PresenceCount(num_features=4, clusters=4, num_ucc=4, ucc_min=1)
    with torch.no_grad():
        head.assign.weight.copy_(torch.eye(4) * 50)
        head.assign.bias.zero_()
    return head


def test_count_is_the_number_of_clusters_present_whatever_their_share() -> None:
    head = _head_with_one_hot_clusters()
    codes = torch.eye(4)
    # bag 0: 99 instances of cluster 0 and ONE of cluster 2 -> count 2; bag 1: clusters 0, 1, 3 -> 3; bag 2: 1
    features = torch.cat([codes[[0] * 99 + [2]], codes[[0, 1, 3]], codes[[1] * 5]])
    members = torch.full((3, 100), 0, dtype=torch.long)
    mask = torch.zeros(3, 100, dtype=torch.bool)
    members[0], mask[0] = torch.arange(100), True
    members[1, :3], mask[1, :3] = torch.arange(100, 103), True
    members[2, :5], mask[2, :5] = torch.arange(103, 108), True
    log_p = head(features, members, mask)
    assert log_p.shape == (3, 4)
    assert log_p.argmax(1).tolist() == [1, 2, 0]  # counts 2, 3, 1 (index 0 is count 1)
    assert log_p.exp().max(1).values.min() > 0.99


def test_padding_is_not_counted() -> None:
    """Padded members point at instance 0 (cluster 0): masked out, they add no cluster."""
    head = _head_with_one_hot_clusters()
    features = torch.eye(4)[[3, 3, 0]]
    members = torch.tensor([[0, 1, 2], [0, 1, 2]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert head(features, members, mask).argmax(1).tolist() == [0, 1]


def test_gradient_reaches_the_features() -> None:
    torch.manual_seed(0)
    head = PresenceCount(num_features=3, clusters=5, num_ucc=4)
    features = torch.rand(6, 3, requires_grad=True)
    head(features, torch.tensor([[0, 1, 2], [3, 4, 5]])).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_too_few_clusters_to_count_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot count to 4"):
        PresenceCount(num_features=3, clusters=3, num_ucc=4, ucc_min=1)


def test_factory_builds_the_presence_head_without_kde_or_mlp() -> None:
    cfg = ModelConfig(widths=[8, 16], input_size=28, count_head="presence", presence_clusters=6, decoder=False)
    model = create_model(cfg, num_ucc=3, ucc_min=2)
    assert model.kde is None and model.classifier is None
    assert model.presence.counts.tolist() == [2, 3, 4]
    out = model(torch.rand(8, 1, 28, 28), torch.arange(8).view(2, 4))
    assert out["logits"].shape == (2, 3) and out["features"].shape == (8, 10)
