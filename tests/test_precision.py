"""bf16 feature extraction (``eval.amp``, ``segment --amp``) clusters like fp32.

Forced bf16 autocast (it runs on any CPU, natively fast only with AVX512-BF16/AMX) against fp32 on 400 of the 8x8
digits, for the built-in conv encoder and timm's resnet18 (channels-last on the CPU), untrained (their features
are the least spread out, so the hardest case for a coarser number format):

- the run's k-means is fitted once and shared: bf16 features assigned to the fp32 centres land in the same
  cluster as the fp32 features for >= 98 % of the instances (measured 100 % and 98.8 %);
- k-means refitted on the bf16 features (started from the fp32 centres, so that k-means' own dependence on its
  start does not count) gives >= 95 % the same clusters after Hungarian matching.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from pathoucc import runtime
from pathoucc.cluster.features import extract_features, inference_dtype
from pathoucc.cluster.kmeans import fit_kmeans
from pathoucc.cluster.metrics import clustering_accuracy
from pathoucc.config import config_from_dict
from pathoucc.data.pool import InstancePool
from pathoucc.models import create_model
from pathoucc.runtime import cpu_has_bf16


@pytest.mark.parametrize("backbone", ["conv", "resnet18"])
def test_bf16_features_cluster_like_fp32(digits, backbone: str) -> None:
    images, labels = digits
    pool = InstancePool(images[:400], labels[:400])
    cfg = config_from_dict({"model": {"backbone": backbone, "input_size": 8, "num_features": 10, "widths": [8, 16]}})
    torch.manual_seed(0)
    model = create_model(cfg.model, 4)
    fp32 = extract_features(model, pool, 200)
    bf16 = extract_features(model, pool, 200, dtype=torch.bfloat16)
    assert 0 < np.abs(fp32 - bf16).max() < 0.01  # bf16 did run, and the features are close
    km = fit_kmeans(fp32, 10, seed=0, n_init=2)
    assert (km.predict(bf16) == km.labels_).mean() >= 0.98
    refit = KMeans(10, init=km.cluster_centers_, n_init=1).fit(bf16).labels_
    assert clustering_accuracy(km.labels_, refit) >= 0.95


def test_inference_precision_follows_the_switch(monkeypatch) -> None:
    cfg = config_from_dict({})
    assert cfg.eval.amp and inference_dtype(cfg, "cpu", amp=False) is None
    cfg.eval.amp = False
    assert inference_dtype(cfg, "cpu") is None
    expected = torch.bfloat16 if cpu_has_bf16() else None  # bf16 exactly where the CPU has it natively
    assert inference_dtype(cfg, "cpu", amp=True) is expected
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert inference_dtype(cfg, "cpu", amp=True) is torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert inference_dtype(cfg, "cpu", amp=True) is None
