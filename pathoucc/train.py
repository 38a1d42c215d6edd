"""Training: bags -> UCC model, with metrics, checkpoints, resume, and a final clustering evaluation."""

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
from pathoucc.data.bags import create_bag_sampler
from pathoucc.data.pool import InstancePool, load_pools
from pathoucc.errors import PathouccError
from pathoucc.io import atomic_path, ensure_writable_dir
from pathoucc.models import UCCModel, create_model

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
CONFIG = "config.yaml"
METRICS_LOG = "metrics.jsonl"


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PathouccError("train.device is 'cuda' but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.backends.cudnn.benchmark = False


def build_augment(specs: list[dict[str, Any]]):
    """An albumentations ``Compose`` from ``[{"name": "HorizontalFlip", "p": 0.5}, …]`` (None if empty)."""
    if not specs:
        return None
    import albumentations as A

    transforms = []
    for spec in specs:
        spec = dict(spec)
        name = spec.pop("name", None)
        cls = getattr(A, str(name), None)
        if not isinstance(cls, type):
            raise PathouccError(f"data.augment: unknown albumentations transform {name!r}")
        try:
            transforms.append(cls(**spec))
        except (TypeError, ValueError) as exc:
            raise PathouccError(f"data.augment: {name}: {exc}") from None
    return A.Compose(transforms)


def lr_factor(cfg: Config, step: int) -> float:
    """Learning-rate multiplier at ``step`` (linear warm-up, then constant or cosine to zero)."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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
        with atomic_path(self.run_dir / CHECKPOINT) as tmp:
            torch.save(self.state_dict(), tmp)

    def save_snapshot(self) -> None:
        """Weights at this step (``snapshots/step-NNNNNNN.pt``), for accuracy-against-time curves."""
        state = {"model": self.model.state_dict(), "step": self.step, "elapsed": self.elapsed}
        with atomic_path(self.run_dir / "snapshots" / f"step-{self.step:07d}.pt") as tmp:
            torch.save(state, tmp)

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
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[info]}"))
        with Progress(*columns, disable=not progress) as bar, metrics_path.open("a") as mlog:
            task = bar.add_task("train", total=t.steps, completed=self.step, info="")
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
                    bar.update(task, completed=self.step,
                               info=f"ucc_loss {record.get('ucc_loss', float('nan')):.3f} "
                                    f"acc {record.get('ucc_acc', float('nan')):.2f}")
                else:
                    bar.update(task, completed=self.step)
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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only``); a corrupt or foreign file is a one-line error."""
    if not path.is_file():
        raise PathouccError("no checkpoint to resume from", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PathouccError(f"corrupt or unreadable checkpoint ({type(exc).__name__})", path) from None
    if not isinstance(state, dict) or "model" not in state:
        raise PathouccError("not a pathoucc checkpoint", path)
    return state


def save_model(model: UCCModel, cfg: Config, path: Path) -> None:
    """Final weights plus the config that built them (readable with ``weights_only=True``)."""
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "config": json.dumps(cfg.to_dict()),
                    "num_ucc": cfg.bags.ucc_max - cfg.bags.ucc_min + 1}, tmp)


def train_run(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
              evaluate: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (config, metrics, checkpoints, model, plot), then evaluate.

    With ``resume`` the run continues from ``run_dir/checkpoint.pt``; the result equals an uninterrupted
    run with the same seed on the same machine. Returns the evaluation metrics (empty without ``evaluate``).
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
    from pathoucc.plots import plot_training_curves

    plot_training_curves(run_dir / METRICS_LOG, run_dir / "training_curves.png")
    if not evaluate:
        return {}
    from pathoucc.evaluate import evaluate_run

    return evaluate_run(run_dir, device=trainer.device)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint being resumed (they will be produced again)."""
    if path.is_file():
        lines = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x).get("step", 0) <= step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(f"{x}\n" for x in lines))


def _setup_file_logging(run_dir: Path) -> None:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pathoucc")
    root.setLevel(logging.INFO)
    for old in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    log.info("run folder %s (pid %d)", run_dir, os.getpid())
