"""Held-out scoring (``metrics.json``): the scored split's features -> its own ``heldout`` k-means -> scores.

Most of what is reported needs no patch labels, as on slides without masks: the size of each cluster, how well
the clusters agree with the counts of the split's regions (:func:`~pathoucc.cluster.metrics.count_consistency`)
and the count accuracy the training logged (``metrics.jsonl``). Where instances carry labels the clustering is
also scored against them (Hungarian-matched accuracy, NMI, ARI), on the labelled instances only.

With ``data.labelled_fraction`` / ``labels_per_class`` (MNIST/IDX) a few labelled ``train`` instances name the
clusters: the k-means is the ``examples`` fit (constrained k-means of the scored split's features given the
examples', :mod:`.constrained`) and ``named_accuracy`` scores each instance's cluster *name* against its class,
with no matching. The examples come from the ``train`` split only, so none is ever scored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np
import torch

from pathoucc.cluster.constrained import named_cluster_model, nearest_centre
from pathoucc.cluster.features import extract_features, inference_dtype, resolve_device
from pathoucc.cluster.kmeans import default_k, fit_on_heldout
from pathoucc.cluster.metrics import CountConsistency, cluster_sizes, clustering_scores, count_consistency
from pathoucc.config import Config, config_from_dict
from pathoucc.data.labelled import labelled_subset
from pathoucc.data.pool import Pool
from pathoucc.data.sources import load_pools
from pathoucc.errors import PathouccError
from pathoucc.files import write_json
from pathoucc.models import UCCModel
from pathoucc.run import METRICS, METRICS_LOG, SNAPSHOTS, load_run, read_weights

__all__ = ["SPLITS", "EvalResult", "evaluate_raw_pixels", "evaluate_run", "evaluate_snapshots", "score_pool",
           "score_split"]


SPLITS = ("test", "val")  # the held-out splits that can be scored


class EvalResult(TypedDict):
    """The scores of one split (one entry of ``metrics.json``).

    method : ``ucc``, ``autoencoder``, ``kmeans-raw-pixels`` or ``kmeans-frozen-features``; kmeans : the k-means used
    (:meth:`~pathoucc.cluster.kmeans.ClusterModel.describe`: ``fit`` = ``heldout``, ``fitted_on``, ``k``, ``seed``);
    num_instances : instances clustered; num_labelled : of them with a class label (the ones scored);
    cluster_sizes : (k,) instances per cluster; accuracy, nmi, ari : against the labels, only where some exist;
    named_accuracy, num_examples : with labelled examples (the share of instances whose cluster's name is their
    class, no matching; how many ``train`` examples named them); count_consistency : only where the split has
    regions with counts; train_ucc_accuracy / val_ucc_accuracy : the
    last count accuracy the training logged, where logged; seconds : wall time of the evaluation.
    """

    method: str
    split: str
    kmeans: dict[str, str | int]
    k: int
    num_instances: int
    num_labelled: int
    cluster_sizes: list[int]
    accuracy: NotRequired[float]
    nmi: NotRequired[float]
    ari: NotRequired[float]
    named_accuracy: NotRequired[float]
    num_examples: NotRequired[int]
    count_consistency: NotRequired[CountConsistency]
    train_ucc_accuracy: NotRequired[float]
    val_ucc_accuracy: NotRequired[float]
    seconds: NotRequired[float]


def _split(split: str | None, cfg: Config) -> str:
    name = str(split or cfg.eval.split)
    if name not in SPLITS:
        raise PathouccError(f"unknown split '{name}' (use test or val)")
    return name


Examples = tuple[np.ndarray, np.ndarray]  # features (M, J) and classes (M,) of the labelled train instances


def example_rows(cfg: Config) -> tuple[Pool, np.ndarray] | None:
    """The ``train`` pool and the rows of its labelled examples (:func:`~pathoucc.data.labelled.labelled_subset`),
    or None without ``data.labelled_fraction`` / ``labels_per_class``."""
    if cfg.data.labelled_fraction is None and cfg.data.labels_per_class is None:
        return None
    train = load_pools(cfg.data, ("train",))["train"]
    return train, labelled_subset(train.labels, cfg.data.labelled_fraction, cfg.data.labels_per_class, cfg.seed)


def score_split(features: np.ndarray, pool: Pool, cfg: Config, split: str, method: str,
                examples: Examples | None = None) -> EvalResult:
    """Cluster the features ``(N, J)`` of ``pool``'s instances with the ``heldout`` fit (or, with ``examples``,
    the ``examples`` fit) and score them.

    k = ``eval.k``, else the number of classes among the labelled instances, else the run's
    (:func:`~pathoucc.cluster.kmeans.default_k`).
    """
    labels = np.asarray(pool.labels, np.int64)
    known = labels >= 0
    k = cfg.eval.k or (len(np.unique(labels[known])) if known.any() else default_k(cfg))
    if examples is not None:
        classes = sorted(set(np.unique(labels[known]).tolist()) | set(np.unique(examples[1]).tolist()))
        cm, _ = named_cluster_model(features, examples[0], np.searchsorted(classes, examples[1]),
                                    [str(c) for c in classes], k, cfg.seed,
                                    f"{split} split: all {len(labels)} instances, constrained by "
                                    f"{len(examples[1])} labelled train instances")
        clusters = nearest_centre(features, cm.centers)[0]
        kmeans = cm.describe()
    else:
        fit = fit_on_heldout(features, labels, k, cfg.seed, cfg.eval.n_init, split)
        clusters, kmeans = fit.clusters, fit.kmeans.describe()
    result: EvalResult = {"method": method, "split": split, "kmeans": kmeans, "k": k,
                          "num_instances": len(labels), "num_labelled": int(known.sum()),
                          "cluster_sizes": cluster_sizes(clusters, k)}
    if known.any():
        result |= clustering_scores(labels[known], clusters[known])
    if examples is not None:
        names = np.asarray(cm.cluster_names)[clusters]
        result["named_accuracy"] = float(np.mean(names[known] == labels[known].astype(str)))
        result["num_examples"] = len(examples[1])
    if pool.region is not None and pool.region_count is not None:
        consistency = count_consistency(clusters, pool.region, pool.region_count, k)
        if consistency is not None:
            result["count_consistency"] = consistency
    return result


def score_pool(model: UCCModel, pool: Pool, cfg: Config, split: str,
               device: torch.device | str = "cpu") -> EvalResult:
    """:func:`score_split` on the model's features of ``pool`` (batched, in ``eval.amp`` precision), named by the
    config's labelled examples if it has any."""
    device = torch.device(device)
    dtype = inference_dtype(cfg, device)
    features = extract_features(model, pool, cfg.eval.batch_size, device, dtype=dtype)
    method = "ucc" if cfg.loss.ucc_weight > 0 else "autoencoder"
    found = example_rows(cfg)
    examples = None if found is None else (
        extract_features(model, found[0], cfg.eval.batch_size, device, found[1], dtype), found[0].labels[found[1]])
    return score_split(features, pool, cfg, split, method, examples)


def _logged_count_accuracy(path: Path) -> dict[str, float]:
    """The last ``ucc_acc`` and ``val_ucc_acc`` of a training log (JSON lines; unreadable lines are skipped)."""
    found: dict[str, float] = {}
    if not path.is_file():
        return found
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            for key, name in (("ucc_acc", "train_ucc_accuracy"), ("val_ucc_acc", "val_ucc_accuracy")):
                if isinstance(record.get(key), (int, float)):
                    found[name] = float(record[key])
    return found


def evaluate_run(run_dir: str | Path, split: str | None = None, device: torch.device | str = "auto",
                 labelled_fraction: float | None = None, labels_per_class: int | None = None) -> EvalResult:
    """Score ``split`` (test or val; default: the config's ``eval.split``) with the run's features on ``device``
    (auto, cpu, cuda or a torch device); the result replaces that split's entry of ``<run>/metrics.json``
    (``<split>+examples`` when ``labelled_fraction`` / ``labels_per_class`` or the config's name the clusters)."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    cfg, model = load_run(run_dir, dev)
    if labelled_fraction is not None or labels_per_class is not None:
        data = cfg.data.model_dump() | {"labelled_fraction": labelled_fraction, "labels_per_class": labels_per_class}
        cfg = config_from_dict(cfg.to_dict() | {"data": data}, str(run_dir))
    name = _split(split, cfg)
    start = time.perf_counter()
    pool = load_pools(cfg.data, (name,))[name]
    result = score_pool(model, pool, cfg, name, dev)
    result.update(_logged_count_accuracy(run_dir / METRICS_LOG))
    result["seconds"] = round(time.perf_counter() - start, 2)
    metrics_path = run_dir / METRICS
    previous = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    previous[name if "named_accuracy" not in result else f"{name}+examples"] = result
    write_json(metrics_path, previous)
    return result


def evaluate_snapshots(run_dir: str | Path, split: str = "test", device: torch.device | str = "cpu") -> list[dict]:
    """Score every weight snapshot of a run (``train.snapshot_every``): ``{"step", "elapsed_s"}`` and the
    :class:`EvalResult` of each, accuracy against training time."""
    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir, device)
    name = _split(split, cfg)
    pool = load_pools(cfg.data, (name,))[name]
    rows = []
    for path in sorted((run_dir / SNAPSHOTS).glob("step-*.pt")):
        state = read_weights(path, "snapshot")
        model.load_state_dict(state["model"])
        scores = score_pool(model, pool, cfg, name, device)
        rows.append({"step": int(state["step"]), "elapsed_s": float(state["elapsed"])} | scores)
    return rows


def evaluate_raw_pixels(cfg: Config, split: str = "test") -> EvalResult:
    """The baseline: the ``heldout`` k-means (or with labelled examples the ``examples`` fit) directly on the
    pixels (scaled to [0, 1]) of the ``split`` instances, or on their feature vectors as stored (feature files:
    k-means on the frozen features)."""
    name = _split(split, cfg)
    pool = load_pools(cfg.data, (name,))[name]

    def flat(rows: np.ndarray) -> np.ndarray:
        out = rows.reshape(len(rows), -1).astype(np.float32)
        return out / 255.0 if rows.dtype == np.uint8 else out

    raw = pool.read(np.arange(len(pool)))
    found = example_rows(cfg)
    examples = None if found is None else (flat(found[0].read(found[1])), found[0].labels[found[1]])
    return score_split(flat(raw), pool, cfg, name, "kmeans-raw-pixels" if raw.dtype == np.uint8 else
                       "kmeans-frozen-features", examples)
