"""Training: bags -> UCC model, with metrics, checkpoints and resume; one loop, read top to bottom."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pathoucc.config import Config, save_config
from pathoucc.data.augment import build_augment
from pathoucc.data.bags import BagSampler, create_bag_sampler
from pathoucc.data.loader import StepDataset, batch_item, step_loader, to_model_input
from pathoucc.data.pool import InstancePool
from pathoucc.data.sources import load_pools
from pathoucc.data.stream import StreamingPool
from pathoucc.distributed import World, check_world_size, rank_seed, world
from pathoucc.errors import PathouccError, TrainingInterrupted
from pathoucc.files import atomic_path, ensure_writable_dir
from pathoucc.models import UCCModel, create_model
from pathoucc.plots import plot_training_curves
from pathoucc.preempt import stop_requests
from pathoucc.run import (
    CHECKPOINT,
    CONFIG,
    CURVES,
    LOG,
    METRICS_LOG,
    MODEL,
    MODEL_UCC,
    check_resume_config,
    clear_weight_outputs,
    load_checkpoint,
    save_model,
    save_weights,
    snapshot_path,
)
from pathoucc.runtime import autocast, autocast_dtype, progress_bar, seed_everything, select_device

__all__ = ["Trainer", "lr_factor", "train_run", "ucc_loss_terms"]

log = logging.getLogger(__name__)

ONECYCLE_WARMUP = 0.3  # share of the steps spent warming up under ``onecycle`` (unless train.warmup_steps is set)
ONECYCLE_START = 1 / 25  # lr factor at step 0 under ``onecycle`` (torch's div_factor 25)
ONECYCLE_END = 1 / 25 / 1e4  # lr factor at the last step under ``onecycle`` (torch's final_div_factor 1e4)


def _cosine(start: float, end: float, progress: float) -> float:
    """From ``start`` (progress 0) to ``end`` (progress >= 1) along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def lr_factor(cfg: Config, step: int, elapsed_s: float = 0.0) -> float:
    """Learning-rate multiplier at ``step`` after ``elapsed_s`` training seconds.

    ``constant`` and ``cosine`` (to zero) follow a linear warm-up of ``warmup_steps``; ``onecycle`` is torch's
    one-cycle policy: a cosine rise from lr/25 to lr over ``warmup_steps`` (default 30 % of the steps), then a
    cosine fall to lr/25e4 at the last step. With a time budget (``max_minutes``) the schedule follows whichever
    runs out first, the steps or the minutes, so a budgeted run still anneals (its learning rates then depend on
    the machine's speed).
    """
    t = cfg.train
    if t.max_minutes:
        step = max(step, math.floor(t.steps * elapsed_s / (t.max_minutes * 60)))
    if t.schedule == "onecycle":
        up = t.warmup_steps or max(1, round(ONECYCLE_WARMUP * t.steps))
        if step < up:
            return _cosine(ONECYCLE_START, 1.0, step / up)
        return _cosine(1.0, ONECYCLE_END, (step - up) / max(1, t.steps - up))
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    return _cosine(1.0, 0.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))


def ucc_nll(logits: torch.Tensor, target: torch.Tensor, upper: torch.Tensor | None = None) -> torch.Tensor:
    """Per-bag negative log-likelihood ``(B,)`` of ucc class ids ``target``; where ``upper`` is True the target is
    an upper bound and the likelihood is ``P(ucc <= target)`` (a subset of a count-only region)."""
    log_p = logits.float().log_softmax(1)
    exact = -log_p.gather(1, target[:, None])[:, 0]
    if upper is None or not bool(upper.any()):
        return exact
    allowed = torch.arange(logits.shape[1], device=logits.device) <= target[:, None]
    bound = -log_p.masked_fill(~allowed, float("-inf")).logsumexp(1)
    return torch.where(upper, bound, exact)


def ucc_loss_terms(model: UCCModel, x: torch.Tensor, members: torch.Tensor, mask: torch.Tensor,
                   ucc_target: torch.Tensor, cfg: Config, upper: torch.Tensor | None = None,
                   ) -> dict[str, torch.Tensor]:
    """Forward pass and the weighted loss: instances ``x`` ``(M, C, H, W)``, bags ``members``/``mask``
    ``(B, N)`` (see :class:`~pathoucc.data.bags.BagBatch`), ``ucc_target`` ``(B,)`` class ids, ``upper`` ``(B,)``
    True where the target is an upper bound. ``ucc_acc``: the predicted class is the target (exact bags) or at
    most the target (upper bounds)."""
    out = model(x, members, mask, chunk=cfg.train.encoder_chunk)
    terms = {"ucc_loss": ucc_nll(out["logits"], ucc_target, upper).mean()}
    pred = out["logits"].argmax(1)
    hit = pred == ucc_target if upper is None else torch.where(upper, pred <= ucc_target, pred == ucc_target)
    terms["ucc_acc"] = hit.float().mean()
    loss = cfg.loss.ucc_weight * terms["ucc_loss"]
    if "recon" in out and cfg.loss.ae_weight > 0:
        terms["recon_loss"] = F.mse_loss(out["recon"].float(), x)
        loss = loss + cfg.loss.ae_weight * terms["recon_loss"]
    terms["loss"] = loss
    return terms


class Trainer:
    """Holds everything a run needs; ``fit`` trains to ``cfg.train.steps`` (or the time budget). Under torchrun,
    ``world`` is this process's rank (see :mod:`pathoucc.distributed`)."""

    def __init__(self, cfg: Config, run_dir: Path, pools: dict[str, InstancePool | StreamingPool],
                 world: World | None = None) -> None:
        self.cfg, self.run_dir, self.world = cfg, run_dir, world or World()
        t = cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.device = self.world.device(select_device(t.device))
        self.amp_dtype = autocast_dtype(self.device, t.amp)
        seed_everything(cfg.seed)
        self.train_pool, self.val_pool = pools["train"], pools.get("val")
        c, h, w = self.train_pool.shape
        if (c, h) != (cfg.model.in_chans, cfg.model.input_size) or h != w:
            raise PathouccError(
                f"model expects {cfg.model.in_chans}×{cfg.model.input_size}×{cfg.model.input_size} instances, "
                f"data has {c}×{h}×{w} (set model.in_chans / model.input_size)"
            )
        b = cfg.bags
        try:
            seed = rank_seed(cfg.seed, self.world.rank)  # each rank its own bags; rank 0 those of one process
            self.sampler = create_bag_sampler(self.train_pool, b.bag_size, b.ucc_min, b.ucc_max, seed,
                                              b.instances_per_batch, b.region_subsets)
            val_sampler = (
                create_bag_sampler(self.val_pool, b.bag_size, b.ucc_min, b.ucc_max, cfg.seed + 1,
                                   b.instances_per_batch)
                if self.val_pool is not None and len(self.val_pool) else None
            )
        except ValueError as exc:
            raise PathouccError(f"cannot build bags: {exc}") from None
        # fixed validation bags: ceil(val_bags / bags_per_batch) batches drawn once
        self.val_batches = [] if val_sampler is None else [
            val_sampler.sample(i, min(b.bags_per_batch, t.val_bags - i * b.bags_per_batch))
            for i in range(math.ceil(t.val_bags / b.bags_per_batch))]
        self.augment = build_augment(cfg.data.augment)
        # item s of ``data``: step s's bags as uint8 pixels (prepared ahead by DataLoader workers in ``fit``)
        self.data = StepDataset(self.sampler, self.train_pool, b.bags_per_batch, self.augment, seed)
        self._feed = None
        # cuDNN picks the fastest kernels for the shapes it sees: worth it when every step has the same shapes
        torch.backends.cudnn.benchmark = self.device.type == "cuda" and isinstance(self.sampler, BagSampler)
        self.model = create_model(cfg.model, self.sampler.num_ucc).to(self.device)
        unused = cfg.loss.ucc_weight == 0 or (cfg.model.decoder and cfg.loss.ae_weight == 0)
        self.model, self.net = self.world.wrap(self.model, self.device, find_unused=bool(unused))  # net: DDP
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.elapsed = 0.0  # training seconds, validation excluded

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "elapsed": self.elapsed,
            "config": json.dumps(self.cfg.to_dict()),
            "world_size": self.world.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])

    def save_checkpoint(self) -> None:
        if not self.world.main:  # only rank 0 writes the run folder
            return
        save_weights(self.state_dict(), self.run_dir / CHECKPOINT)

    def save_snapshot(self) -> None:
        """Weights at this step (``snapshots/step-NNNNNNN.pt``), for accuracy-against-time curves."""
        if not self.world.main:
            return
        save_weights({"model": self.model.state_dict(), "step": self.step, "elapsed": self.elapsed},
                     snapshot_path(self.run_dir, self.step))

    # ----------------------------------------------------------------- loop
    def _tensors(self, item: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """A step's instances ``(M, C, H, W)`` (copied as uint8, converted on the device), members, mask and ucc
        targets on the device; a read error of a DataLoader worker is raised here."""
        if "error" in item:
            raise PathouccError(item["error"])
        dev, target = self.device, item["ucc"] - self.cfg.bags.ucc_min
        return (to_model_input(item["images"], dev), item["members"].to(dev, non_blocking=True),
                item["mask"].to(dev, non_blocking=True), target.to(dev, non_blocking=True),
                item["upper"].to(dev, non_blocking=True))

    def train_step(self) -> dict[str, Any]:
        """One step; returns its loss terms as detached tensors on the device (no host sync) and the lr."""
        self.model.train()
        item = next(self._feed) if self._feed is not None else self.data[self.step]
        assert item["step"] == self.step, (item["step"], self.step)
        x, members, mask, target, upper = self._tensors(item)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.train.lr * lr_factor(self.cfg, self.step, self.elapsed)
        with autocast(self.device, self.amp_dtype):
            terms = ucc_loss_terms(self.net, x, members, mask, target, self.cfg, upper)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return {k: v.detach() for k, v in terms.items()} | {"lr": self.optimizer.param_groups[0]["lr"]}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """ucc loss/accuracy on fixed validation bags (weak labels only)."""
        if not self.val_batches:
            return {}
        self.model.eval()
        totals: dict[str, float] = {}
        for batch in self.val_batches:
            x, members, mask, target, upper = self._tensors(batch_item(self.val_pool, batch))
            with autocast(self.device, self.amp_dtype):
                terms = ucc_loss_terms(self.model, x, members, mask, target, self.cfg, upper)
            for k, v in terms.items():
                totals[f"val_{k}"] = totals.get(f"val_{k}", 0.0) + float(v) * len(target)
        total = sum(len(b.ucc) for b in self.val_batches)
        return {k: v / total for k, v in totals.items()}

    def fit(self, progress: bool = True) -> None:
        t = self.cfg.train
        budget = t.max_minutes * 60 if t.max_minutes else math.inf
        metrics_path = self.run_dir / METRICS_LOG
        # steps prepared ahead (in order, deterministic) by cfg.data.num_workers DataLoader processes
        loader = step_loader(self.data, self.step, t.steps, self.cfg.data.num_workers, self.device.type == "cuda")
        self._feed = iter(loader)
        try:
            self._loop(budget, metrics_path, progress)
        finally:  # whatever ended the loop: the loader goes, and its workers with it
            self._feed = None
            del loader
        self.save_checkpoint()

    def _loop(self, budget: float, metrics_path: Path, progress: bool) -> None:
        t, main = self.cfg.train, self.world.main
        running: dict[str, Any] = {}  # sums since the last log, on the device: read (synced) only when logged
        count, info = 0, ""
        # SIGTERM / SIGUSR1 / Ctrl-C only set a flag: the step in flight finishes, then a checkpoint is saved
        with (stop_requests() as stop, metrics_path.open("a") if main else contextlib.nullcontext() as mlog,
              progress_bar(progress and main, "train", t.steps, self.step, "steps") as advance):
            while self.step < t.steps and self.elapsed < budget:
                start = time.perf_counter()
                terms = self.train_step()
                self.elapsed += time.perf_counter() - start
                for k, v in terms.items():
                    running[k] = running.get(k, 0.0) + (v.double() if torch.is_tensor(v) else v)
                count += 1
                # all ranks stop at the same step, and agree on the time used (one all-reduce; nothing alone)
                stopping, self.elapsed = self.world.agree(stop.signum is not None, self.elapsed, self.device)
                record: dict[str, Any] = {}
                if self.step % t.log_every == 0 or self.step == t.steps:
                    record = self.world.mean({k: float(v) / count for k, v in running.items()}, self.device)
                    running, count = {}, 0
                if main and (self.step % t.val_every == 0 or self.step == t.steps):
                    record |= self.validate()
                if record and main:
                    record = {"step": self.step, "elapsed_s": round(self.elapsed, 3)} | record
                    mlog.write(json.dumps(record) + "\n")
                    mlog.flush()
                    info = (f"ucc_loss {record.get('ucc_loss', float('nan')):.3f} "
                            f"acc {record.get('ucc_acc', float('nan')):.2f}")
                advance(1, info)
                if self.step % t.checkpoint_every == 0:
                    self.save_checkpoint()
                if t.snapshot_every and self.step % t.snapshot_every == 0:
                    self.save_snapshot()
                if stopping:
                    self.save_checkpoint()
                    name, code = (stop.name, stop.exit_code) if stop.signum is not None else ("SIGTERM", 143)
                    log.info("interrupted by %s at step %d; checkpoint saved", name, self.step)
                    raise TrainingInterrupted(name, self.step, code)


def train_run(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train ``cfg`` into ``run_dir`` (config, metrics, checkpoints, model, plot); returns the run folder.

    With ``resume`` the run continues from ``run_dir/checkpoint.pt``; the result equals an uninterrupted
    run with the same seed on the same machine. Score it with :func:`pathoucc.evaluate.evaluate_run`.
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    w = world(cfg.train.device)  # under torchrun: this rank (only rank 0 writes the run folder)
    if resume:
        state = load_checkpoint(ckpt)
        check_resume_config(run_dir, state, cfg)  # only the step/time budget and logging may change
        check_world_size(state, w, ckpt)
    else:
        if ckpt.exists():
            raise PathouccError("run folder already holds a checkpoint: use --resume, or choose another --out",
                                run_dir)
        state = None
    if w.main:
        ensure_writable_dir(run_dir)
        _setup_file_logging(run_dir)
    pools = load_pools(cfg.data, ("train", "val"))
    trainer = Trainer(cfg, run_dir, pools, w)
    if state is not None:
        trainer.load_state_dict(state)
        if w.main:
            _truncate_metrics(run_dir / METRICS_LOG, trainer.step)
        log.info("resumed from step %d", trainer.step)
    elif w.main:
        (run_dir / METRICS_LOG).unlink(missing_ok=True)
    if w.main:
        save_config(cfg, run_dir / CONFIG)
    trainer.fit(progress=progress)
    if w.main:
        removed = clear_weight_outputs(run_dir)  # k-means and refinement of earlier weights are stale now
        if removed:
            log.info("removed %s (derived from earlier weights)", ", ".join(removed))
        # with refine.steps, pathoucc.refine.refine_run turns model-ucc.pt into model.pt
        save_model(trainer.model, cfg, run_dir / (MODEL_UCC if cfg.refine.steps else MODEL))
        plot_training_curves(run_dir / METRICS_LOG, run_dir / CURVES)
    w.finish()
    return run_dir


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint being resumed (they will be produced again), and lines that are
    not JSON records (the torn last line of a killed run), with a warning."""
    if not path.is_file():
        return
    lines, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            torn += bool(line.strip())
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            lines.append(line)
    if torn:
        log.warning("%s: dropped %d unreadable line(s) (a run killed while writing)", path, torn)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{x}\n" for x in lines))


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
