"""Count-consistent self-training: the stage between training and the final k-means (``refine.steps`` > 0).

The UCC model learns features from counts alone; on bags of tens to hundreds of patches, k-means on them is
right for about 9 patches in 10. The counts say more than the model used: a region labelled ``c`` holds exactly
``c`` classes. So, per round:

1. the features of every training patch are clustered (k-means, ``k`` = ``eval.k`` or the training classes),
   and with ``refine.count_iters`` > 0 (the default) the centres are then moved by the counts
   (count-constrained k-means, :func:`pathoucc.cluster.counted.fit_count_kmeans`: it splits classes that plain
   k-means joins; from the second round on, the fit also starts from the last round's pseudo-labels and keeps the
   start of lower count-consistent cost);
2. in each count-labelled region only the ``c`` clusters holding most of its patches are kept, and each of its
   patches takes the nearest kept cluster (:func:`count_consistent_labels`): a stray patch of a one-class region
   joins that class; patches outside every region get no label and are not used; with ``refine.examples`` a few
   labelled patches keep their class's cluster and name the clusters (:mod:`pathoucc.cluster.labelled`);
3. the encoder and feature head are fine-tuned to predict these pseudo-labels (a linear classifier on the
   features, cross-entropy, Adam with a cosine schedule, ``refine.batch_size`` patches per step, the config's
   augmentations; with ``refine.pairwise_weight`` > 0 also ClusterNet's pairwise loss on ``refine.pairwise_batch``
   labelled patches: :func:`~pathoucc.training.losses.pairwise_kl_loss`): :func:`refine_step`, run by the training
   loop (:mod:`pathoucc.training.loop`), so a round has the UCC training's checkpoints, stop signals, logging and
   DDP.

The refined features are then clustered as before (``pathoucc cluster`` / ``segment``); new slides need no counts.
The count classifier is not trained here: after refinement it no longer matches the features (the UCC model is
kept as ``model-ucc.pt``). :func:`pathoucc.pipeline.refine_run` does this for a run folder (``pathoucc train``
calls it after training when ``refine.steps`` > 0, ``pathoucc refine RUN`` on its own): it starts from
``model-ucc.pt``, or continues an interrupted refinement from ``refine-checkpoint.pt`` (the same result as an
uninterrupted one).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pathoucc.cluster.counted import count_consistent_labels, fit_count_kmeans
from pathoucc.cluster.features import extract_features, inference_dtype
from pathoucc.cluster.labelled import fit_labelled_count_kmeans, labelled_pseudo_labels
from pathoucc.cluster.metrics import clustering_accuracy
from pathoucc.config import Config
from pathoucc.data.augment import augment_images, build_augment, reseed_augment
from pathoucc.data.loader import to_model_input
from pathoucc.data.pool import Pool
from pathoucc.errors import PathouccError
from pathoucc.models import UCCModel
from pathoucc.runtime import autocast, autocast_dtype
from pathoucc.training.distributed import World
from pathoucc.training.loop import LoopPlan, run_loop, truncate_log
from pathoucc.training.losses import pairwise_kl_loss, pseudo_label_loss
from pathoucc.training.schedule import refine_lr_factor
from pathoucc.training.state import TrainState

__all__ = ["count_consistent_labels", "refine_model", "refine_step"]

log = logging.getLogger(__name__)

RANK_STRIDE = 1_000_000  # rank r > 0 augments with seed + 1000 (round + 1) + RANK_STRIDE r


def _cluster(model: UCCModel, pool: Pool, cfg: Config, k: int, index: np.ndarray, device: torch.device,
             fixed: np.ndarray | None = None, previous: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Squared distances ``(len(index), k)`` of the patches ``index`` to the centres of the round's fit: k-means
    of their features, then ``refine.count_iters`` rounds of count-constrained k-means
    (:func:`pathoucc.cluster.counted.fit_count_kmeans`; also started from ``previous``, the last round's
    pseudo-labels, keeping the start of lower count-consistent cost; ``refine.swaps`` split-and-drop moves); with
    labelled patches (``fixed`` (len(index),) their cluster, -1 elsewhere) constrained k-means and
    count-constrained rounds that keep them fixed (:func:`pathoucc.cluster.labelled.fit_labelled_count_kmeans`);
    and that fit's summary."""
    features = extract_features(model, pool, cfg.eval.batch_size, device, index=index,
                                dtype=inference_dtype(cfg, device))
    if fixed is not None:
        centres, info = fit_labelled_count_kmeans(features, pool.region[index], pool.region_count, fixed, k,
                                                  cfg.seed, cfg.refine.count_iters)
        return centres.distances(features), info
    centres, info = fit_count_kmeans(features, pool.region[index], pool.region_count, k, cfg.seed, cfg.eval.n_init,
                                     cfg.refine.count_iters, cfg.refine.min_cluster_share,
                                     previous if cfg.refine.count_iters else None, cfg.refine.swaps)
    return centres.distances(features), info


class _ClusterNet(nn.Module):
    """The model's features -> a linear classifier over the k clusters: what a refinement round trains."""

    def __init__(self, model: UCCModel, classifier: nn.Linear) -> None:
        super().__init__()
        self.model, self.classifier = model, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.model.extract_features(x))


def refine_step(state: TrainState, batch: tuple[torch.Tensor, ...], lr: float, steps: int,
                pairwise_weight: float = 0.0, margin: float = 2.0) -> dict[str, Any]:
    """One refinement step on ``batch``: uint8 patches ``(n, H, W, C)``, already augmented, and their pseudo-labels
    ``(n,)`` — cross-entropy of the cluster classifier on the features — and, with ``pairwise_weight`` > 0, labelled
    patches ``(m, H, W, C)`` and their classes ``(m,)`` — plus ``pairwise_weight`` × ClusterNet's pairwise loss of
    their cluster logits (hinge ``margin``). Returns the loss (detached, with ``pairwise_loss``) and the lr."""
    images, target = batch[:2]
    n = len(images)
    pairwise = pairwise_weight > 0
    x = to_model_input(torch.cat([images, batch[2]]) if pairwise else images, state.device)
    state.set_lr(lr * refine_lr_factor(state.step, steps))
    state.net.train()
    with autocast(state.device, state.amp_dtype):
        logits = state.net(x)
    loss = pseudo_label_loss(logits[:n], target.to(state.device))
    record = {}
    if pairwise:
        record["pairwise_loss"] = pairwise_kl_loss(logits[n:], batch[3].to(state.device), margin)
        loss = loss + pairwise_weight * record["pairwise_loss"]
        record["pairwise_loss"] = record["pairwise_loss"].detach()
    state.optimise(loss)
    return {"loss": loss.detach(), **record, "lr": state.lr}


def _patches(pool: Pool, index: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
             batch: int, augment, seed: int, start: int, pairs: np.ndarray | None = None,
             pair_batch: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
    """Step ``start``, ``start + 1``, ...'s patches: ``batch`` of ``index`` drawn by ``rng`` (without replacement),
    read, augmented (reseeded from ``(seed, step)``), with their pseudo-labels; with ``pairs`` ((len(pool),) class
    of the labelled patches, -1 elsewhere) also ``pair_batch`` (at most all) labelled patches and their classes."""
    labelled = None if pairs is None else np.flatnonzero(pairs >= 0)
    for step in itertools.count(start):
        pick = np.sort(rng.choice(len(index), batch, replace=False))
        reseed_augment(augment, seed, step)
        out = (torch.from_numpy(augment_images(pool.read(index[pick]), augment)), torch.from_numpy(labels[pick]))
        if labelled is not None:
            rows = np.sort(rng.choice(labelled, min(pair_batch, len(labelled)), replace=False))
            out += (torch.from_numpy(augment_images(pool.read(rows), augment)), torch.from_numpy(pairs[rows]))
        yield out


def _round_state(model: UCCModel, cfg: Config, k: int, rnd: int, device: torch.device, world: World,
                 meta: dict[str, Any]) -> TrainState:
    """A round's state: a new classifier (seeded), Adam over the encoder, feature head and classifier."""
    torch.manual_seed(cfg.seed + 1000 * (rnd + 1))
    classifier = nn.Linear(model.num_features, k).to(device)
    trained = [*model.encoder.parameters(), *model.head.parameters(), *model.head_norm.parameters()]
    optimizer = torch.optim.Adam([*trained, *classifier.parameters()], lr=cfg.refine.lr)
    _, net = world.wrap(_ClusterNet(model, classifier), device, find_unused=True)  # the count head is not trained
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    rng = np.random.default_rng([cfg.seed, rnd] if world.main else [cfg.seed, rnd, world.rank])
    return TrainState({"model": model, "classifier": classifier}, net, optimizer,
                      torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16), device, amp_dtype, rng=rng,
                      meta=meta)


def refine_model(model: UCCModel, cfg: Config, pool: Pool, k: int,
                 device: torch.device | str = "cpu", log_path: str | Path | None = None, progress: bool = False,
                 checkpoint: str | Path | None = None, resume: dict[str, Any] | None = None,
                 world: World | None = None, examples: np.ndarray | None = None,
                 pairs: np.ndarray | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` in place for ``cfg.refine.rounds`` rounds of ``cfg.refine.steps`` steps on
    count-consistent pseudo-labels of ``pool``'s region patches (``pool.region`` / ``pool.region_count``).

    Logs one JSON line per ``train.log_every`` steps to ``log_path``, saves the state to ``checkpoint`` every
    ``train.checkpoint_every`` steps, at each round's end and on a stop signal; ``resume`` (such a checkpoint,
    loaded) continues where it stopped. Returns ``{"k", "steps", "rounds"}``, a summary per round (patches
    labelled, share changed by the counts, final loss, seconds; and, where ``pool.labels`` are known, the accuracy
    of k-means and of the pseudo-labels against them). Deterministic for a given ``cfg.seed`` on one machine.
    ``examples`` (len(pool),) int64: labelled patches, the cluster each keeps (-1 = none; :mod:`.labelled`).
    ``pairs`` (len(pool),) int64: labelled patches' classes (-1 = none) for ``refine.pairwise_weight`` > 0.
    """
    if pool.region is None or pool.region_count is None:
        raise PathouccError("refine needs count-labelled regions (tile files with regions/ucc)")
    world, device = world or World(), torch.device(device)
    log_path, checkpoint = (None if p is None else Path(p) for p in (log_path, checkpoint))
    index = np.flatnonzero(pool.region >= 0)
    if len(index) < k:
        raise PathouccError(f"refine: only {len(index)} patches in count-labelled regions for k={k} clusters")
    if (over := int((pool.region_count > k).sum())) and world.main:  # kept: their patches keep all k clusters
        log.warning("refine: %d of %d regions count more classes than the k=%d clusters; their patches keep their "
                    "nearest cluster (set eval.k to at least the largest count)", over, len(pool.region_count), k)
    if (cfg.refine.pairwise_weight > 0) != (pairs is not None and bool((pairs >= 0).any())):
        raise PathouccError("refine.pairwise_weight > 0 and labelled patches go together (none given, or no "
                            "pairwise weight for them)")
    augment = build_augment(cfg.data.augment, cfg.seed)
    known = pool.labels[index] >= 0
    rounds: list[dict[str, Any]] = json.loads(resume["rounds"]) if resume is not None else []
    labels: np.ndarray | None = None  # the last round's pseudo-labels: a start of the next round's fit
    if resume is not None and len(rounds) == int(resume["round"]):  # stopped between rounds
        model.load_state_dict(resume["model"])
        labels, resume = resume["labels"].numpy(), None
    if log_path is not None and world.main:
        if rounds or resume is not None:
            truncate_log(log_path, int(resume["step"]) if resume else cfg.refine.steps, len(rounds) + bool(resume))
        else:
            log_path.unlink(missing_ok=True)
    for rnd in range(len(rounds), cfg.refine.rounds):
        start = time.perf_counter()
        if resume is not None:  # the round in progress: its pseudo-labels from the checkpoint
            labels, summary = resume["labels"].numpy(), json.loads(resume["summary"])
            cluster_s = float(resume["cluster_seconds"])
        else:
            model.eval()
            fixed = None if examples is None else examples[index]
            distances, fitted = _cluster(model, pool, cfg, k, index, device, fixed, labels)
            labels = (count_consistent_labels(distances, pool.region[index], pool.region_count) if fixed is None
                      else labelled_pseudo_labels(distances, pool.region[index], pool.region_count, fixed))
            nearest = distances.argmin(1)
            summary = {"round": rnd + 1, "patches": len(index), "changed_by_counts": float(np.mean(labels != nearest))}
            if cfg.refine.count_iters or fixed is not None:
                summary["count_kmeans" if fixed is None else "labelled_kmeans"] = fitted
            if fixed is not None:  # how many labelled patches the features already put nearest their class
                summary["labelled_nearest_own"] = float(np.mean(nearest[fixed >= 0] == fixed[fixed >= 0]))
            if known.any():
                truth = pool.labels[index][known]
                summary |= {"kmeans_accuracy": clustering_accuracy(truth, nearest[known]),
                            "pseudo_label_accuracy": clustering_accuracy(truth, labels[known])}
            log.info("refine round %d: %s", rnd + 1, json.dumps(summary))
            cluster_s = time.perf_counter() - start
        state = _round_state(model, cfg, k, rnd, device, world, meta={
            "config": json.dumps(cfg.to_dict()), "world_size": world.size, "round": rnd + 1,
            "labels": torch.from_numpy(labels), "summary": json.dumps(summary), "rounds": json.dumps(rounds),
            "cluster_seconds": cluster_s})
        if resume is not None:
            state.load_state_dict(resume)
            resume = None
        seed = cfg.seed + 1000 * (rnd + 1) + RANK_STRIDE * world.rank
        batches = _patches(pool, index, labels, state.rng, min(cfg.refine.batch_size, len(index)), augment, seed,
                           state.step, pairs, cfg.refine.pairwise_batch)
        plan = LoopPlan(steps=cfg.refine.steps, log_every=cfg.train.log_every,
                        checkpoint_every=cfg.train.checkpoint_every, checkpoint=checkpoint, log_path=log_path,
                        fields={"round": rnd + 1}, label=f"refine round {rnd + 1}",
                        show=lambda record: f"loss {record['loss']:.3f}")
        step = partial(refine_step, lr=cfg.refine.lr, steps=cfg.refine.steps,
                       pairwise_weight=cfg.refine.pairwise_weight, margin=cfg.refine.pairwise_margin)
        last = run_loop(state, batches, step, plan, world, progress) or _last_record(log_path, rnd + 1)
        summary |= {"final_loss": last.get("loss", float("nan")), "seconds": round(cluster_s + state.elapsed, 1)}
        rounds.append(summary)
        state.meta["rounds"] = json.dumps(rounds)
        if checkpoint is not None and world.main:
            state.save(checkpoint)
    model.eval()
    return {"k": k, "steps": cfg.refine.steps, "rounds": rounds}


def _last_record(log_path: Path | None, rnd: int) -> dict[str, Any]:
    """The last record of round ``rnd`` in the log (a round resumed after its last step: nothing left to run)."""
    if log_path is None or not log_path.is_file():
        return {}
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return next((r for r in reversed(records) if r.get("round") == rnd), {})

