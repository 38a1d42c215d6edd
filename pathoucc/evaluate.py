"""Evaluation: features of held-out instances -> k-means -> accuracy (Hungarian), NMI, ARI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathoucc.config import Config
from pathoucc.data.pool import InstancePool
from pathoucc.data.sources import load_pools
from pathoucc.data.stream import StreamingPool
from pathoucc.errors import PathouccError
from pathoucc.features import extract_features, inference_dtype
from pathoucc.files import write_json
from pathoucc.kmeans import fit_kmeans
from pathoucc.metrics import clustering_scores
from pathoucc.models import UCCModel
from pathoucc.run import METRICS, SNAPSHOTS, load_run, read_weights

__all__ = ["cluster_and_score", "cluster_pool", "evaluate_raw_pixels", "evaluate_run", "evaluate_snapshots"]


def cluster_pool(model: UCCModel, pool: InstancePool | StreamingPool, cfg: Config,
                 device: torch.device | str = "cpu") -> dict:
    """k-means (k = ``eval.k`` or the number of classes) on the pool's features, scored against its labels."""
    features = extract_features(model, pool, cfg.eval.batch_size, device, dtype=inference_dtype(cfg, device))
    return cluster_and_score(features, pool.labels, cfg.eval.k, cfg.seed, cfg.eval.n_init)


def cluster_and_score(features: np.ndarray, labels: np.ndarray, k: int | None, seed: int, n_init: int) -> dict:
    known = labels >= 0
    if not known.any():
        raise PathouccError("the evaluation instances carry no class labels")
    k = k or len(np.unique(labels[known]))
    clusters = fit_kmeans(features[known], k, seed, n_init).labels_
    return clustering_scores(labels[known], clusters) | {"k": k, "num_instances": int(known.sum())}


def evaluate_run(run_dir: str | Path, split: str | None = None,
                 device: torch.device | str = "cpu") -> dict[str, Any]:
    """Cluster ``split`` (default: the config's ``eval.split``) with the run's features; write ``metrics.json``."""
    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir, device)
    split = split or cfg.eval.split
    if split not in ("test", "val"):
        raise PathouccError(f"unknown split '{split}' (use test or val)")
    start = time.perf_counter()
    pool = load_pools(cfg.data, (split,))[split]
    scores = cluster_pool(model, pool, cfg, device)
    method = "ucc" if cfg.loss.ucc_weight > 0 else "autoencoder"
    result = {"method": method, "split": split} | scores | {"seconds": round(time.perf_counter() - start, 2)}
    metrics_path = run_dir / METRICS
    previous = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    previous[split] = result
    write_json(metrics_path, previous)
    return result


def evaluate_snapshots(run_dir: str | Path, split: str = "test", device: torch.device | str = "cpu") -> list[dict]:
    """Score every weight snapshot of a run (``train.snapshot_every``): accuracy against training time."""
    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir, device)
    pool = load_pools(cfg.data, (split,))[split]
    rows = []
    for path in sorted((run_dir / SNAPSHOTS).glob("step-*.pt")):
        state = read_weights(path, "snapshot")
        model.load_state_dict(state["model"])
        scores = cluster_pool(model, pool, cfg, device)
        rows.append({"step": int(state["step"]), "elapsed_s": float(state["elapsed"])} | scores)
    return rows


def evaluate_raw_pixels(cfg: Config, split: str = "test") -> dict[str, Any]:
    """The baseline: k-means directly on the pixels of the ``split`` instances."""
    pool = load_pools(cfg.data, (split,))[split]
    features = pool.read(np.arange(len(pool))).reshape(len(pool), -1).astype(np.float32) / 255.0
    result = {"method": "kmeans-raw-pixels", "split": split} | cluster_and_score(
        features, pool.labels, cfg.eval.k, cfg.seed, cfg.eval.n_init)
    return result
