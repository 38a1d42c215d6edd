"""UCC training of a run folder: bags -> count model, through the one loop (:mod:`pathoucc.training.loop`).

One step is :func:`ucc_step`; :func:`prepare_ucc` builds what it needs (model, optimiser, bags), :func:`fit_ucc`
runs the loop, and :func:`train_ucc` does it all for a run folder, with checkpoints and exact resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pathoucc.config import Config, save_config
from pathoucc.data.augment import build_augment, step_seed
from pathoucc.data.bags import BagBatch, BagSampler, create_bag_sampler
from pathoucc.data.features import feature_dim
from pathoucc.data.loader import StepDataset, batch_item, step_loader, to_model_input
from pathoucc.data.pool import Pool
from pathoucc.data.sources import load_pools
from pathoucc.errors import PathouccError
from pathoucc.files import ensure_writable_dir
from pathoucc.models import create_model, input_shape
from pathoucc.run import (
    CHECKPOINT,
    CONFIG,
    CURVES,
    LOG,
    METRICS_LOG,
    MODEL,
    MODEL_UCC,
    REFINE_CHECKPOINT,
    REFINE_LOG,
    check_resume_config,
    clear_weight_outputs,
    load_checkpoint,
    save_model,
    save_weights,
    snapshot_path,
)
from pathoucc.runtime import autocast, autocast_dtype, seed_everything, select_device
from pathoucc.training.distributed import World, check_world_size, joined, rank_seed
from pathoucc.training.loop import LoopPlan, run_loop, truncate_log
from pathoucc.training.losses import ucc_loss_terms
from pathoucc.training.plots import plot_training_curves
from pathoucc.training.schedule import lr_factor
from pathoucc.training.state import TrainState

__all__ = ["UCCTraining", "fit_ucc", "loss_over_chance", "prepare_ucc", "train_ucc", "ucc_step",
           "validate_ucc"]

log = logging.getLogger(__name__)


@dataclass
class UCCTraining:
    """What a UCC training needs: its state, the bag sampler, ``data`` (item ``s``: step ``s``'s bags as uint8
    pixels or feature vectors, see :class:`~pathoucc.data.loader.StepDataset`) and fixed validation batches."""

    state: TrainState
    sampler: Any
    data: StepDataset
    train_pool: Pool
    val_pool: Pool | None
    val_batches: list[BagBatch]


def ucc_step(state: TrainState, batch: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """One UCC training step on ``batch`` (an item of :class:`~pathoucc.data.loader.StepDataset`); returns its
    loss terms as detached tensors on the device (no host sync) and the lr. A DataLoader worker's read error
    arrives as ``batch["error"]`` and is raised here."""
    if "error" in batch:
        raise PathouccError(batch["error"])
    assert batch["step"] == state.step, (batch["step"], state.step)
    device = state.device
    x = to_model_input(batch["images"], device)  # (M, C, H, W) pixels (copied as uint8, converted there) or (M, D)
    members, mask = (batch[key].to(device, non_blocking=True) for key in ("members", "mask"))
    # counts -> count classes (an interval label: low .. target)
    target, low = ((batch[key] - cfg.bags.ucc_min).to(device, non_blocking=True) for key in ("ucc", "low"))
    state.set_lr(cfg.train.lr * lr_factor(cfg, state.step, state.elapsed))
    state.net.train()
    with autocast(device, state.amp_dtype):
        # the invariance term's instances and transforms: drawn from (seed, step), so a resumed run redraws them
        generator = (torch.Generator().manual_seed(step_seed(cfg.seed, state.step)) if cfg.loss.iic_weight > 0
                     else None)
        terms = ucc_loss_terms(state.net, x, members, mask, target, cfg, low, generator)
    state.optimise(terms["loss"])
    return {key: value.detach() for key, value in terms.items()} | {"lr": state.lr}


@torch.no_grad()
def validate_ucc(training: UCCTraining, cfg: Config) -> dict[str, float]:
    """Count loss/accuracy on the fixed validation bags (weak labels only), as ``val_<term>``."""
    if not training.val_batches:
        return {}
    state, model = training.state, training.state.modules["model"]
    model.eval()
    totals: dict[str, float] = {}
    for batch in training.val_batches:
        item = batch_item(training.val_pool, batch)
        x = to_model_input(item["images"], state.device)
        members, mask = (item[key].to(state.device) for key in ("members", "mask"))
        target, low = ((item[key] - cfg.bags.ucc_min).to(state.device) for key in ("ucc", "low"))
        with autocast(state.device, state.amp_dtype):
            terms = ucc_loss_terms(model, x, members, mask, target, cfg, low)
        for key, value in terms.items():
            totals[f"val_{key}"] = totals.get(f"val_{key}", 0.0) + float(value) * len(target)
    total = sum(len(batch.ucc) for batch in training.val_batches)
    return {key: value / total for key, value in totals.items()}


def prepare_ucc(cfg: Config, pools: dict[str, Pool | None],
                world: World | None = None) -> UCCTraining:
    """Seed, check the instances fit the model, build the bags, the model (DDP-wrapped under torchrun), Adam and
    the loss scaler for ``pools["train"]`` (and ``pools["val"]``, if any)."""
    world = world or World()
    train = cfg.train
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    device = world.device(select_device(train.device))
    seed_everything(cfg.seed)
    train_pool, val_pool = pools["train"], pools.get("val")
    expected = input_shape(cfg.model)
    if tuple(train_pool.shape) != expected:
        fix = "model.input_dim" if len(expected) == 1 else "model.in_chans / model.input_size"
        raise PathouccError(f"model expects {'×'.join(map(str, expected))} instances, data has "
                            f"{'×'.join(map(str, train_pool.shape))} (set {fix})")
    bags = cfg.bags
    seed = rank_seed(cfg.seed, world.rank)  # each rank its own bags; rank 0 those of one process
    try:
        sampler = create_bag_sampler(train_pool, bags.bag_size, bags.ucc_min, bags.ucc_max, seed,
                                     bags.instances_per_batch, bags.region_subsets, bags.region_unions)
        val_sampler = (create_bag_sampler(val_pool, bags.bag_size, bags.ucc_min, bags.ucc_max, cfg.seed + 1,
                                          bags.instances_per_batch)
                       if val_pool is not None and len(val_pool) else None)
    except ValueError as exc:
        raise PathouccError(f"cannot build bags: {exc}") from None
    if len(sampler.counts) < 2:  # one count for every bag: the count classifier has nothing to tell apart
        raise PathouccError(f"every training bag has count {int(sampler.counts[0])}: counts that never differ teach "
                            "nothing; give regions of at least two different counts")
    # fixed validation bags: ceil(val_bags / bags_per_batch) batches drawn once
    val_batches = [] if val_sampler is None else [
        val_sampler.sample(i, min(bags.bags_per_batch, train.val_bags - i * bags.bags_per_batch))
        for i in range(math.ceil(train.val_bags / bags.bags_per_batch))]
    data = StepDataset(sampler, train_pool, bags.bags_per_batch, build_augment(cfg.data.augment), seed)
    # cuDNN picks the fastest kernels for the shapes it sees: worth it when every step has the same shapes
    torch.backends.cudnn.benchmark = device.type == "cuda" and isinstance(sampler, BagSampler)
    model = create_model(cfg.model, sampler.num_ucc, cfg.bags.ucc_min).to(device)
    unused = cfg.loss.ucc_weight == 0 or (cfg.model.decoder and cfg.loss.ae_weight == 0)
    model, net = world.wrap(model, device, find_unused=bool(unused))  # net: DDP under torchrun
    amp_dtype = autocast_dtype(device, train.amp)
    state = TrainState(
        {"model": model}, net, torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay),
        torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16), device, amp_dtype,
        meta={"config": json.dumps(cfg.to_dict()), "world_size": world.size})
    return UCCTraining(state, sampler, data, train_pool, val_pool, val_batches)


def fit_ucc(training: UCCTraining, cfg: Config, run_dir: Path, world: World | None = None,
            progress: bool = False) -> None:
    """Train from ``training.state.step`` to ``train.steps`` (or the time budget) through the loop, logging to
    ``run_dir/metrics.jsonl``; the state is saved to ``run_dir/checkpoint.pt`` periodically and at the end."""
    world, train, state = world or World(), cfg.train, training.state

    def snapshot(state: TrainState) -> None:
        """Weights at this step (``snapshots/step-NNNNNNN.pt``), for accuracy-against-time curves."""
        save_weights({"model": state.modules["model"].state_dict(), "step": state.step, "elapsed": state.elapsed},
                     snapshot_path(run_dir, state.step))

    plan = LoopPlan(
        steps=train.steps, log_every=train.log_every, checkpoint_every=train.checkpoint_every,
        checkpoint=run_dir / CHECKPOINT, log_path=run_dir / METRICS_LOG,
        budget_s=train.max_minutes * 60 if train.max_minutes else math.inf,
        validate=partial(validate_ucc, training, cfg), val_every=train.val_every,
        snapshot=snapshot, snapshot_every=train.snapshot_every, label="train",
        show=lambda r: f"ucc_loss {r.get('ucc_loss', float('nan')):.3f} acc {r.get('ucc_acc', float('nan')):.2f}")
    # steps prepared ahead (in order, deterministic) by cfg.data.num_workers DataLoader processes
    loader = step_loader(training.data, state.step, train.steps, cfg.data.num_workers, state.device.type == "cuda")
    try:
        run_loop(state, iter(loader), partial(ucc_step, cfg=cfg), plan, world, progress)
    finally:  # whatever ended the loop: the loader goes, and its workers with it
        del loader
    if world.main:
        state.save(run_dir / CHECKPOINT)


def train_ucc(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = False) -> Path:
    """Train ``cfg``'s UCC model into ``run_dir`` (config, metrics, checkpoint, model, plot); returns the folder.

    The model is ``model.pt``, or ``model-ucc.pt`` with ``refine.steps`` (the refinement then writes ``model.pt``).
    With ``resume`` the run continues from ``run_dir/checkpoint.pt``; the result equals an uninterrupted run with
    the same seed on the same machine. :func:`pathoucc.pipeline.train_run` also refines and scores it.
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    if cfg.model.backbone == "mlp" and cfg.model.input_dim is None:  # the projection's input: the files' D
        cfg.model.input_dim = feature_dim(cfg.data)
    with joined(cfg.train.device) as world:  # under torchrun: this rank (only rank 0 writes the run folder)
        saved = None
        if resume:
            saved = load_checkpoint(ckpt)
            check_resume_config(run_dir, saved, cfg)  # only the step/time budget and logging may change
            check_world_size(saved, world, ckpt)
        elif ckpt.exists():
            raise PathouccError("run folder already holds a checkpoint: use --resume, or choose another --out",
                                run_dir)
        if world.main:
            ensure_writable_dir(run_dir)
            _setup_file_logging(run_dir)
        training = prepare_ucc(cfg, load_pools(cfg.data, ("train", "val")), world)
        if saved is not None:
            training.state.load_state_dict(saved)
            if world.main:
                truncate_log(run_dir / METRICS_LOG, training.state.step)
            log.info("resumed from step %d", training.state.step)
        elif world.main:
            (run_dir / METRICS_LOG).unlink(missing_ok=True)
        if world.main:
            save_config(cfg, run_dir / CONFIG)
        start = training.state.step
        fit_ucc(training, cfg, run_dir, world, progress)
        if world.main:
            # what earlier weights left is stale; an interrupted refinement of these same weights may resume
            unchanged = training.state.step == start and cfg.refine.steps > 0
            removed = clear_weight_outputs(run_dir, keep=(REFINE_CHECKPOINT, REFINE_LOG) if unchanged else ())
            if removed:
                log.info("removed %s (derived from earlier weights)", ", ".join(removed))
            save_model(training.state.modules["model"], cfg, run_dir / (MODEL_UCC if cfg.refine.steps else MODEL))
            plot_training_curves(run_dir / METRICS_LOG, run_dir / CURVES)
            ratio = loss_over_chance(run_dir / METRICS_LOG, training.sampler.num_ucc)
            if ratio is not None and ratio > 0.95:  # seen on a cohort cell of large one-class blobs (benchmarks)
                log.warning("the count loss ended at %.0f %% of chance (ln %d): the model learned (almost) nothing "
                            "from the counts; %s", 100 * ratio, training.sampler.num_ucc,
                            "the clusters rest on the refinement" if cfg.refine.steps else
                            "its clusters are close to random (the refinement, refine.steps > 0, can recover)")
        world.barrier()  # the other ranks may read model-ucc.pt next (the refinement)
    return run_dir


def loss_over_chance(log_path: Path, num_ucc: int, last: float = 0.1) -> float | None:
    """The mean training count loss (``ucc_loss``) of the last ``last`` share of the records of ``log_path`` over
    ln(``num_ucc``), the loss of a count classifier that tells nothing apart (1.0); None without such records."""
    if num_ucc < 2 or not log_path.is_file():
        return None
    losses = [r["ucc_loss"] for r in map(json.loads, log_path.read_text().splitlines()) if "ucc_loss" in r]
    if not losses:
        return None
    tail = losses[-max(1, math.ceil(last * len(losses))):]
    return sum(tail) / len(tail) / math.log(num_ucc)


def _setup_file_logging(run_dir: Path) -> None:
    handler = logging.FileHandler(run_dir / LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pathoucc")
    root.setLevel(logging.INFO)
    for old in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    log.info("run folder %s (pid %d)", run_dir, os.getpid())
