"""The IIC invariance term beside the count loss (``loss.iic_weight`` with ``model.iic_clusters``)."""

from __future__ import annotations

import math

import pytest
import torch

from pathoucc.config import config_from_dict
from pathoucc.data.sources import load_pools
from pathoucc.errors import PathouccError
from pathoucc.training.train import prepare_ucc, ucc_step, validate_ucc


def _raw(tiny_config: dict, clusters: int = 5, weight: float = 1.0) -> dict:
    return tiny_config | {"model": tiny_config["model"] | {"decoder": False, "iic_clusters": clusters},
                          "loss": {"ucc_weight": 1.0, "ae_weight": 0.0, "iic_weight": weight, "iic_instances": 16}}


def test_the_term_trains_the_cluster_head_and_is_drawn_from_the_step(tiny_config) -> None:
    cfg = config_from_dict(_raw(tiny_config))
    pools = load_pools(cfg.data, ("train", "val"))
    first = prepare_ucc(cfg, pools)
    model = first.state.modules["model"]
    head = model.cluster_head.weight.detach().clone()
    terms = ucc_step(first.state, first.data[0], cfg)
    iic = float(terms["iic_loss"])
    assert -math.log(5) - 1e-4 <= iic <= 1e-6  # minus a mutual information between two 5-way assignments
    assert float(terms["loss"]) == pytest.approx(float(terms["ucc_loss"]) + iic, abs=1e-5)
    assert not torch.equal(head, model.cluster_head.weight)  # the head is trained by it
    again = prepare_ucc(cfg, pools)
    assert float(ucc_step(again.state, again.data[0], cfg)["iic_loss"]) == iic  # same seed and step, same draw
    assert "val_iic_loss" not in validate_ucc(first, cfg) and "val_ucc_loss" in validate_ucc(first, cfg)


def test_without_the_term_the_model_has_no_cluster_head(tiny_config) -> None:
    cfg = config_from_dict(_raw(tiny_config, clusters=0, weight=0.0))
    training = prepare_ucc(cfg, load_pools(cfg.data, ("train", "val")))
    assert training.state.modules["model"].cluster_head is None
    assert "iic_loss" not in ucc_step(training.state, training.data[0], cfg)


@pytest.mark.parametrize(("clusters", "weight"), [(5, 0.0), (0, 1.0)])
def test_the_weight_and_the_head_go_together(tiny_config, clusters: int, weight: float) -> None:
    with pytest.raises(PathouccError, match=r"loss.iic_weight > 0 and model.iic_clusters > 0 go together"):
        config_from_dict(_raw(tiny_config, clusters, weight))
