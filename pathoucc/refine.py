"""Count-consistent self-training: the stage between training and the final k-means (``refine.steps`` > 0).

The UCC model learns features from counts alone; on bags of tens to hundreds of patches, k-means on them is
right for about 9 patches in 10. The counts say more than the model used: a region labelled ``c`` holds exactly
``c`` classes. So, per round:

1. the features of every training patch are clustered (k-means, ``k`` = ``eval.k`` or the training classes);
2. in each count-labelled region only the ``c`` clusters holding most of its patches are kept, and each of its
   patches takes the nearest kept cluster (:func:`count_consistent_labels`): a stray patch of a one-class region
   joins that class; patches outside every region get no label and are not used;
3. the encoder and feature head are fine-tuned to predict these pseudo-labels (a linear classifier on the
   features, cross-entropy, Adam with a cosine schedule, ``refine.batch_size`` patches per step, the config's
   augmentations).

The refined features are then clustered as before (``pathoucc cluster`` / ``segment``); new slides need no counts.
The count classifier is not trained here: after refinement it no longer matches the features (the UCC model is
kept as ``model-ucc.pt``). :func:`refine_run` does this for a run folder (``pathoucc train`` calls it after
training when ``refine.steps`` > 0); it always starts from ``model-ucc.pt``, so an interrupted refinement starts
again, with the same result, on ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pathoucc.cluster.features import extract_features, inference_dtype
from pathoucc.cluster.kmeans import MAX_FIT_PATCHES, ClusterModel, default_k, fit_kmeans
from pathoucc.cluster.metrics import clustering_accuracy
from pathoucc.config import Config
from pathoucc.data.augment import augment_images, build_augment, reseed_augment
from pathoucc.data.loader import to_model_input
from pathoucc.data.pool import InstancePool, subsample
from pathoucc.data.sources import load_pools
from pathoucc.data.stream import StreamingPool
from pathoucc.errors import PathouccError
from pathoucc.files import write_json
from pathoucc.models import UCCModel
from pathoucc.plots import plot_refine_curves
from pathoucc.run import MODEL, MODEL_UCC, REFINE, REFINE_CURVES, REFINE_LOG, clear_weight_outputs, load_run, save_model
from pathoucc.runtime import autocast, autocast_dtype, progress_bar, select_device

__all__ = ["count_consistent_labels", "refine_model", "refine_run"]

log = logging.getLogger(__name__)


def count_consistent_labels(distances: np.ndarray, region: np.ndarray, region_ucc: np.ndarray) -> np.ndarray:
    """Pseudo-labels ``(N,)`` int64 that agree with every region's count; -1 outside regions.

    distances : (N, K) squared distances of each patch to the K cluster centres.
    region : (N,) int64 region of each patch (-1 = in none).
    region_ucc : (R,) int64 count of distinct classes of each region.

    In a region of count ``c`` the ``c`` clusters nearest to most of its patches are kept (ties: the lower
    cluster index); each of its patches takes the nearest kept cluster. A region whose patches fall in fewer than
    ``c`` clusters keeps those.
    """
    distances = np.asarray(distances, np.float32)
    region = np.asarray(region, np.int64)
    ucc = np.asarray(region_ucc, np.int64)
    if distances.ndim != 2 or len(distances) != len(region):
        raise ValueError(f"distances {distances.shape} and region {region.shape} do not match")
    if len(region) and region.max(initial=-1) >= len(ucc):
        raise ValueError(f"region index {int(region.max())} has no count (only {len(ucc)} regions)")
    k = distances.shape[1]
    nearest = distances.argmin(1)
    out = np.full(len(region), -1, np.int64)
    inside = np.flatnonzero(region >= 0)
    order = inside[np.argsort(region[inside], kind="stable")]
    ids, starts = np.unique(region[order], return_index=True)
    for r, idx in zip(ids.tolist(), np.split(order, starts[1:]), strict=True):
        counts = np.bincount(nearest[idx], minlength=k)
        present = np.flatnonzero(counts)
        keep = present[np.argsort(-counts[present], kind="stable")][: max(1, int(ucc[r]))]
        out[idx] = keep[distances[np.ix_(idx, keep)].argmin(1)]
    return out


def _cluster(model: UCCModel, pool: InstancePool | StreamingPool, cfg: Config, k: int, index: np.ndarray,
             device: torch.device) -> np.ndarray:
    """Squared distances ``(len(index), k)`` of the patches ``index`` to the centres of the features' k-means
    (fitted on at most MAX_FIT_PATCHES of them, seeded)."""
    features = extract_features(model, pool, cfg.eval.batch_size, device, index=index,
                                dtype=inference_dtype(cfg, device))
    fit = subsample(len(index), MAX_FIT_PATCHES, cfg.seed)
    km = fit_kmeans(features[fit], k, cfg.seed, cfg.eval.n_init)
    return ClusterModel(km.cluster_centers_.astype(np.float32)).distances(features)


def refine_model(model: UCCModel, cfg: Config, pool: InstancePool | StreamingPool, k: int,
                 device: torch.device | str = "cpu", log_path: str | Path | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Fine-tune ``model`` in place for ``cfg.refine.rounds`` rounds of ``cfg.refine.steps`` steps on
    count-consistent pseudo-labels of ``pool``'s region patches (``pool.bag_index`` / ``pool.bag_ucc``).

    Writes one JSON line per ``train.log_every`` steps to ``log_path``; returns a summary per round (patches
    labelled, share changed by the counts, final loss; and, where ``pool.labels`` are known, the accuracy of
    k-means and of the pseudo-labels against them). Deterministic for a given ``cfg.seed`` on one machine.
    """
    r = cfg.refine
    if pool.bag_index is None or pool.bag_ucc is None:
        raise PathouccError("refine needs count-labelled regions (tile files with regions/ucc)")
    device = torch.device(device)
    index = np.flatnonzero(pool.bag_index >= 0)
    if len(index) < k:
        raise PathouccError(f"refine: only {len(index)} patches in count-labelled regions for k={k} clusters")
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    augment = build_augment(cfg.data.augment, cfg.seed)
    known = pool.labels[index] >= 0
    rounds: list[dict[str, Any]] = []
    with open(log_path, "w") if log_path is not None else contextlib.nullcontext() as log_file:
        for rnd in range(r.rounds):
            start = time.perf_counter()
            model.eval()
            distances = _cluster(model, pool, cfg, k, index, device)
            labels = count_consistent_labels(distances, pool.bag_index[index], pool.bag_ucc)
            nearest = distances.argmin(1)
            summary: dict[str, Any] = {"round": rnd + 1, "patches": len(index),
                                       "changed_by_counts": float(np.mean(labels != nearest))}
            if known.any():
                truth = pool.labels[index][known]
                summary |= {"kmeans_accuracy": clustering_accuracy(truth, nearest[known]),
                            "pseudo_label_accuracy": clustering_accuracy(truth, labels[known])}
            log.info("refine round %d: %s", rnd + 1, json.dumps(summary))
            summary["final_loss"] = _fine_tune(model, pool, index, labels, k, cfg, rnd, device, amp_dtype,
                                               augment, log_file, progress)
            summary["seconds"] = round(time.perf_counter() - start, 1)
            rounds.append(summary)
    model.eval()
    return {"k": k, "steps": r.steps, "rounds": rounds}


def _fine_tune(model: UCCModel, pool: InstancePool | StreamingPool, index: np.ndarray, labels: np.ndarray, k: int,
               cfg: Config, rnd: int, device: torch.device, amp_dtype: torch.dtype | None, augment,
               log_file, progress: bool) -> float:
    """One round: encoder + feature head + a new linear classifier, cross-entropy on ``labels`` of ``index``."""
    r = cfg.refine
    torch.manual_seed(cfg.seed + 1000 * (rnd + 1))
    classifier = nn.Linear(model.num_features, k).to(device)
    trained = [*model.encoder.parameters(), *model.head.parameters(), *model.head_norm.parameters()]
    optimizer = torch.optim.Adam([*trained, *classifier.parameters()], lr=r.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    rng = np.random.default_rng([cfg.seed, rnd])
    batch = min(r.batch_size, len(index))
    model.train()
    running, count, loss_value = 0.0, 0, float("nan")
    with progress_bar(progress, f"refine round {rnd + 1}", r.steps, unit="steps") as advance:
        for step in range(r.steps):
            for group in optimizer.param_groups:
                group["lr"] = r.lr * 0.5 * (1.0 + math.cos(math.pi * step / r.steps))
            pick = np.sort(rng.choice(len(index), batch, replace=False))
            reseed_augment(augment, cfg.seed + 1000 * (rnd + 1), step)
            x = to_model_input(torch.from_numpy(augment_images(pool.read(index[pick]), augment)), device)
            target = torch.from_numpy(labels[pick]).to(device)
            with autocast(device, amp_dtype):
                logits = classifier(model.extract_features(x))
            loss = nn.functional.cross_entropy(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            running, count = running + float(loss.detach()), count + 1
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == r.steps:
                loss_value, running, count = running / count, 0.0, 0
                if log_file is not None:
                    log_file.write(json.dumps({"round": rnd + 1, "step": step + 1, "loss": loss_value,
                                               "lr": optimizer.param_groups[0]["lr"]}) + "\n")
                    log_file.flush()
            advance(1, f"loss {loss_value:.3f}")
    return loss_value


def refine_run(run_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """Refine the UCC model of a run folder (``model-ucc.pt``, written by ``train_run`` when ``refine.steps`` > 0)
    with its config's ``refine`` settings: writes ``model.pt``, ``refine.json``, ``refine.jsonl`` and
    ``refine_curves.png``; returns the summary of :func:`refine_model`."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL_UCC).is_file():
        raise PathouccError(f"run folder has no {MODEL_UCC} to refine (train it with refine.steps > 0)", run_dir)
    cfg, model = load_run(run_dir, "cpu", MODEL_UCC)
    if not cfg.refine.steps:
        raise PathouccError("the run's config has refine.steps 0: nothing to refine", run_dir / MODEL_UCC)
    device = select_device(cfg.train.device)
    model.to(device)
    pool = load_pools(cfg.data, ("train",))["train"]
    k = cfg.eval.k or default_k(cfg)
    clear_weight_outputs(run_dir, keep=(MODEL_UCC,))  # model.pt, k-means and refinement of earlier weights
    summary = refine_model(model, cfg, pool, k, device, run_dir / REFINE_LOG, progress)
    write_json(run_dir / REFINE, summary)
    plot_refine_curves(run_dir / REFINE_LOG, run_dir / REFINE_CURVES)
    save_model(model, cfg, run_dir / MODEL)
    return summary
