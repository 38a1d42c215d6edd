"""Evaluation: features of held-out instances -> k-means -> accuracy (Hungarian), NMI, ARI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathoucc.cluster import clustering_scores, fit_kmeans
from pathoucc.config import Config, config_from_dict
from pathoucc.data.pool import InstancePool, load_pools
from pathoucc.errors import PathouccError
from pathoucc.io import write_json
from pathoucc.models import UCCModel, create_model

METRICS = "metrics.json"


@torch.no_grad()
def extract_features(model: UCCModel, pool: InstancePool, batch_size: int = 1024,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """Features ``(N, J)`` float32 of every instance of ``pool``."""
    model.eval()
    out = []
    for i in range(0, len(pool), batch_size):
        x = pool.tensor(slice(i, i + batch_size)).to(device)
        out.append(model.extract_features(x).float().cpu())
    return torch.cat(out).numpy()


def cluster_pool(model: UCCModel, pool: InstancePool, cfg: Config, device: torch.device | str = "cpu") -> dict:
    """k-means (k = ``eval.k`` or the number of classes) on the pool's features, scored against its labels."""
    features = extract_features(model, pool, cfg.eval.batch_size, device)
    return cluster_and_score(features, pool.labels, cfg.eval.k, cfg.seed, cfg.eval.n_init)


def cluster_and_score(features: np.ndarray, labels: np.ndarray, k: int | None, seed: int, n_init: int) -> dict:
    known = labels >= 0
    if not known.any():
        raise PathouccError("the evaluation instances carry no class labels")
    k = k or len(np.unique(labels[known]))
    clusters = fit_kmeans(features[known], k, seed, n_init).labels_
    return clustering_scores(labels[known], clusters) | {"k": k, "num_instances": int(known.sum())}


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[Config, UCCModel]:
    """The config and trained model of a run folder (``model.pt`` read with ``weights_only=True``)."""
    run_dir = Path(run_dir)
    path = run_dir / "model.pt"
    if not run_dir.is_dir():
        raise PathouccError("run folder not found", run_dir)
    if not path.is_file():
        raise PathouccError("run folder has no trained model (model.pt); train it first", run_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        cfg = config_from_dict(json.loads(state["config"]), str(path))
        model = create_model(cfg.model, int(state["num_ucc"]))
        model.load_state_dict(state["model"])
    except PathouccError:
        raise
    except Exception as exc:
        raise PathouccError(f"corrupt or incompatible model file ({type(exc).__name__})", path) from None
    return cfg, model.to(device).eval()


def evaluate_run(run_dir: str | Path, split: str | None = None, device: torch.device | str = "cpu",
                 show: bool = True) -> dict[str, Any]:
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
    if show:
        print_scores({f"{cfg.name} ({split})": result})
    return result


def evaluate_snapshots(run_dir: str | Path, split: str = "test", device: torch.device | str = "cpu") -> list[dict]:
    """Score every weight snapshot of a run (``train.snapshot_every``): accuracy against training time."""
    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir, device)
    pool = load_pools(cfg.data, (split,))[split]
    rows = []
    for path in sorted((run_dir / "snapshots").glob("step-*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        scores = cluster_pool(model, pool, cfg, device)
        rows.append({"step": int(state["step"]), "elapsed_s": float(state["elapsed"])} | scores)
    return rows


def evaluate_raw_pixels(cfg: Config, split: str = "test", show: bool = True) -> dict[str, Any]:
    """The baseline: k-means directly on the pixels of the ``split`` instances."""
    pool = load_pools(cfg.data, (split,))[split]
    features = pool.images.reshape(len(pool), -1).astype(np.float32) / 255.0
    result = {"method": "kmeans-raw-pixels", "split": split} | cluster_and_score(
        features, pool.labels, cfg.eval.k, cfg.seed, cfg.eval.n_init)
    if show:
        print_scores({f"raw pixels ({split})": result})
    return result


def print_scores(rows: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="clustering")
    for col in ("run", "accuracy", "NMI", "ARI", "k", "instances"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['accuracy']:.4f}", f"{r['nmi']:.4f}", f"{r['ari']:.4f}", str(r["k"]),
                      str(r["num_instances"]))
    Console().print(table)
