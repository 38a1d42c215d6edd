"""Training: bags -> UCC model, with metrics, checkpoints and resume; one loop, read top to bottom."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pathoucc.config import Config, load_config, save_config
from pathoucc.data.augment import build_augment
from pathoucc.data.bags import create_bag_sampler
from pathoucc.data.pool import InstancePool
from pathoucc.data.sources import load_pools
from pathoucc.errors import PathouccError
from pathoucc.files import atomic_path, ensure_writable_dir
from pathoucc.models import UCCModel, create_model
from pathoucc.plots import plot_training_curves
from pathoucc.run import (
    CHECKPOINT,
    CONFIG,
    CURVES,
    LOG,
    METRICS_LOG,
    MODEL,
    load_checkpoint,
    save_model,
    save_weights,
    snapshot_path,
)
from pathoucc.runtime import progress_bar, seed_everything, select_device

__all__ = ["Trainer", "lr_factor", "train_run", "ucc_loss_terms"]

log = logging.getLogger(__name__)

ONECYCLE_WARMUP = 0.3  # share of the steps spent warming up under ``onecycle`` (unless train.warmup_steps is set)
ONECYCLE_START = 1 / 25  # lr factor at step 0 under ``onecycle`` (torch's div_factor 25)
ONECYCLE_END = 1 / 25 / 1e4  # lr factor at the last step under ``onecycle`` (torch's final_div_factor 1e4)


def _cosine(start: float, end: float, progress: float) -> float:
    """From ``start`` (progress 0) to ``end`` (progress >= 1) along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def lr_factor(cfg: Config, step: int) -> float:
    """Learning-rate multiplier at ``step``.

    ``constant`` and ``cosine`` (to zero) follow a linear warm-up of ``warmup_steps``; ``onecycle`` is torch's
    one-cycle policy: a cosine rise from lr/25 to lr over ``warmup_steps`` (default 30 % of the steps), then a
    cosine fall to lr/25e4 at the last step.
    """
    t = cfg.train
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


def ucc_loss_terms(model: UCCModel, bags: torch.Tensor, ucc_target: torch.Tensor,
                   cfg: Config) -> dict[str, torch.Tensor]:
    """Forward pass and the weighted loss. ``bags`` is ``(B, N, C, H, W)``, ``ucc_target`` ``(B,)`` class ids."""
    out = model(bags)
    terms = {"ucc_loss": F.cross_entropy(out["logits"].float(), ucc_target)}
    terms["ucc_acc"] = (out["logits"].argmax(1) == ucc_target).float().mean()
    loss = cfg.loss.ucc_weight * terms["ucc_loss"]
    if "recon" in out and cfg.loss.ae_weight > 0:
        terms["recon_loss"] = F.mse_loss(out["recon"].float(), bags.flatten(0, 1))
        loss = loss + cfg.loss.ae_weight * terms["recon_loss"]
    terms["loss"] = loss
    return terms


class Trainer:
    """Holds everything a run needs; ``fit`` trains to ``cfg.train.steps`` (or the time budget)."""

    def __init__(self, cfg: Config, run_dir: Path, pools: dict[str, InstancePool]) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        t = cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.device = select_device(t.device)
        self.amp = t.amp and self.device.type == "cuda"
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
            self.sampler = create_bag_sampler(self.train_pool, b.bag_size, b.ucc_min, b.ucc_max, cfg.seed)
            self.val_sampler = (
                create_bag_sampler(self.val_pool, b.bag_size, b.ucc_min, b.ucc_max, cfg.seed + 1)
                if self.val_pool is not None and len(self.val_pool) else None
            )
        except ValueError as exc:
            raise PathouccError(f"cannot build bags: {exc}") from None
        self.val_bags = self.val_sampler.sample(t.val_bags) if self.val_sampler else None
        self.augment = build_augment(cfg.data.augment)
        self.model = create_model(cfg.model, self.sampler.num_ucc).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step = 0
        self.elapsed = 0.0  # training seconds, validation excluded

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": _jsonable(self.sampler.state_dict()),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "elapsed": self.elapsed,
            "config": json.dumps(self.cfg.to_dict()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(_unjsonable(state["sampler"]))
        torch.set_rng_state(state["torch_rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])

    def save_checkpoint(self) -> None:
        save_weights(self.state_dict(), self.run_dir / CHECKPOINT)

    def save_snapshot(self) -> None:
        """Weights at this step (``snapshots/step-NNNNNNN.pt``), for accuracy-against-time curves."""
        save_weights({"model": self.model.state_dict(), "step": self.step, "elapsed": self.elapsed},
                     snapshot_path(self.run_dir, self.step))

    # ----------------------------------------------------------------- loop
    def _batch(self, indices: np.ndarray, augment: bool) -> torch.Tensor:
        x = self.train_pool.tensor(indices.reshape(-1), self.augment if augment else None)
        return x.view(*indices.shape, *x.shape[1:]).to(self.device, non_blocking=True)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def train_step(self) -> dict[str, float]:
        self.model.train()
        indices, ucc = self.sampler.sample(self.cfg.bags.bags_per_batch)
        bags = self._batch(indices, augment=True)
        target = torch.from_numpy(ucc - self.cfg.bags.ucc_min).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.train.lr * lr_factor(self.cfg, self.step)
        with self._autocast():
            terms = ucc_loss_terms(self.model, bags, target, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()} | {"lr": self.optimizer.param_groups[0]["lr"]}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """ucc loss/accuracy on fixed validation bags (weak labels only)."""
        if self.val_bags is None:
            return {}
        self.model.eval()
        indices, ucc = self.val_bags
        totals: dict[str, float] = {}
        chunk = self.cfg.bags.bags_per_batch
        for i in range(0, len(ucc), chunk):
            x = self.val_pool.tensor(indices[i : i + chunk].reshape(-1))
            x = x.view(*indices[i : i + chunk].shape, *x.shape[1:]).to(self.device)
            target = torch.from_numpy(ucc[i : i + chunk] - self.cfg.bags.ucc_min).to(self.device)
            with self._autocast():
                terms = ucc_loss_terms(self.model, x, target, self.cfg)
            for k, v in terms.items():
                totals[f"val_{k}"] = totals.get(f"val_{k}", 0.0) + float(v) * len(target)
        return {k: v / len(ucc) for k, v in totals.items()}

    def fit(self, progress: bool = True) -> None:
        t = self.cfg.train
        budget = t.max_minutes * 60 if t.max_minutes else math.inf
        metrics_path = self.run_dir / METRICS_LOG
        running: dict[str, list[float]] = {}
        info = ""
        with progress_bar(progress, "train", t.steps, self.step, "steps") as advance, metrics_path.open("a") as mlog:
            while self.step < t.steps and self.elapsed < budget:
                start = time.perf_counter()
                try:
                    terms = self.train_step()
                except KeyboardInterrupt:  # keep every finished step; `--resume` continues from here
                    self.save_checkpoint()
                    log.info("interrupted at step %d; checkpoint saved", self.step)
                    raise
                self.elapsed += time.perf_counter() - start
                for k, v in terms.items():
                    running.setdefault(k, []).append(v)
                record: dict[str, Any] = {}
                if self.step % t.log_every == 0 or self.step == t.steps:
                    record = {k: float(np.mean(v)) for k, v in running.items()}
                    running.clear()
                if self.step % t.val_every == 0 or self.step == t.steps:
                    record |= self.validate()
                if record:
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
        self.save_checkpoint()


def _jsonable(obj: Any) -> Any:
    """numpy generator state holds ints beyond 64 bits; store it as JSON text (safe for weights_only)."""
    return json.dumps(obj, default=int)


def _unjsonable(obj: Any) -> Any:
    return json.loads(obj) if isinstance(obj, str) else obj


def train_run(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train ``cfg`` into ``run_dir`` (config, metrics, checkpoints, model, plot); returns the run folder.

    With ``resume`` the run continues from ``run_dir/checkpoint.pt``; the result equals an uninterrupted
    run with the same seed on the same machine. Score it with :func:`pathoucc.evaluate.evaluate_run`.
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    if resume:
        state = load_checkpoint(ckpt)
        saved = load_config(run_dir / CONFIG) if (run_dir / CONFIG).is_file() else None
        if saved is not None and saved.model != cfg.model:
            raise PathouccError("config's model section differs from the run being resumed", run_dir / CONFIG)
    else:
        if ckpt.exists():
            raise PathouccError("run folder already holds a checkpoint: use --resume, or choose another --out",
                                run_dir)
        state = None
    ensure_writable_dir(run_dir)
    _setup_file_logging(run_dir)
    pools = load_pools(cfg.data, ("train", "val"))
    trainer = Trainer(cfg, run_dir, pools)
    if state is not None:
        trainer.load_state_dict(state)
        _truncate_metrics(run_dir / METRICS_LOG, trainer.step)
        log.info("resumed from step %d", trainer.step)
    else:
        (run_dir / METRICS_LOG).unlink(missing_ok=True)
    save_config(cfg, run_dir / CONFIG)
    trainer.fit(progress=progress)
    save_model(trainer.model, cfg, run_dir / MODEL)
    plot_training_curves(run_dir / METRICS_LOG, run_dir / CURVES)
    return run_dir


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint being resumed (they will be produced again)."""
    if path.is_file():
        lines = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x).get("step", 0) <= step]
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
