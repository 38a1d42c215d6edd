"""The label-free baselines that need training: IIC (:mod:`pathoucc.training.iic`) scored on a held-out split.

The clusters are the argmax of the IIC sub-head kept by its training loss (no k-means); they are scored as
every other method is (:func:`~pathoucc.cluster.metrics.clustering_scores`: Hungarian-matched accuracy, NMI, ARI).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from pathoucc.cluster.evaluate import EvalResult, _split
from pathoucc.cluster.metrics import cluster_sizes, clustering_scores
from pathoucc.config import Config
from pathoucc.data.loader import to_model_input
from pathoucc.data.sources import load_pools
from pathoucc.training.iic import IICNet, train_iic

__all__ = ["evaluate_iic", "iic_clusters"]


@torch.no_grad()
def iic_clusters(net: IICNet, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The head's argmax ``(N,)`` int64 for ``images`` ``(N, H, W, C)`` uint8."""
    device = next(net.parameters()).device
    out = [net(to_model_input(torch.from_numpy(np.ascontiguousarray(images[a:a + batch_size])), device)).argmax(1)
           for a in range(0, len(images), batch_size)]
    return torch.cat(out).cpu().numpy().astype(np.int64)


def evaluate_iic(cfg: Config, split: str = "test", k: int | None = None, batch_size: int = 512,
                 progress: bool = False) -> EvalResult:
    """Train IIC (``k`` = ``eval.k`` or the number of classes) on the config's ``train`` split under its step and
    time budget, then score the head's clusters of ``split``; ``train_seconds`` and ``steps`` say what it used."""
    name = _split(split, cfg)
    pools = load_pools(cfg.data, ("train", name))
    labels = np.asarray(pools[name].labels, np.int64)
    k = k or cfg.eval.k or pools["train"].num_classes
    start = time.perf_counter()
    net, last = train_iic(cfg, pools["train"], k, batch_size, progress)
    clusters = iic_clusters(net, pools[name].read(np.arange(len(labels))))
    known = labels >= 0
    result: EvalResult = {"method": "iic", "split": name,
                          "kmeans": {"fit": "none (the IIC head's argmax)", "fitted_on": "", "k": k, "seed": cfg.seed},
                          "k": k, "num_instances": len(labels), "num_labelled": int(known.sum()),
                          "cluster_sizes": cluster_sizes(clusters, k)}
    if known.any():
        result |= clustering_scores(labels[known], clusters[known])
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result | {"steps": int(last.get("step", 0)), "train_seconds": float(last.get("elapsed_s", 0.0)),
                     "subheads": len(net.heads), "overcluster_k": net.over[0].out_features if len(net.over) else 0,
                     "head": net.best, "head_losses": last.get("head_losses", [])}
