"""The run folder: the names of its files, and reading and writing the ones that hold weights.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (training metrics per step),
``training_curves.png``, ``train.log``, ``checkpoint.pt`` (everything needed to resume), ``model.pt`` (the final
weights and their config), ``metrics.json`` (clustering scores), ``snapshots/step-NNNNNNN.pt`` (optional weight
snapshots) and ``kmeans-k{K}.npz`` (the run's k-means, fitted once and shared by every slide). With
``refine.steps``, ``model.pt`` holds the refined weights, ``model-ucc.pt`` those of the UCC training, and
``refine.jsonl`` / ``refine.json`` / ``refine_curves.png`` the refinement's log, summary and plot, and
``refine-checkpoint.pt`` the state of an unfinished refinement (removed when it finishes). Every ``.pt``
file is read by :func:`read_weights` (through :func:`pathoucc.files.read_torch`, the one ``torch.load``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pathoucc.config import Config, config_from_dict, load_config
from pathoucc.errors import PathouccError
from pathoucc.files import read_torch, write_torch
from pathoucc.models import UCCModel, create_model

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "CURVES",
    "LOG",
    "METRICS",
    "METRICS_LOG",
    "MODEL",
    "MODEL_UCC",
    "REFINE",
    "REFINE_CHECKPOINT",
    "REFINE_CURVES",
    "REFINE_LOG",
    "RESUMABLE",
    "SNAPSHOTS",
    "check_resume_config",
    "clear_weight_outputs",
    "config_diff",
    "kmeans_path",
    "load_checkpoint",
    "load_run",
    "read_weights",
    "save_model",
    "save_weights",
    "snapshot_path",
]

CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
MODEL_UCC = "model-ucc.pt"
REFINE = "refine.json"
REFINE_LOG = "refine.jsonl"
REFINE_CURVES = "refine_curves.png"
REFINE_CHECKPOINT = "refine-checkpoint.pt"
METRICS_LOG = "metrics.jsonl"
METRICS = "metrics.json"
CURVES = "training_curves.png"
LOG = "train.log"
SNAPSHOTS = "snapshots"

# What ``--resume`` may change: the step and time budget (which set where the learning-rate schedule ends), how
# often things are logged or saved, and the refinement. Everything else must equal the run's config, or its model
# would no longer be what its config.yaml says. How data reach the model (streamed or in memory, by how many
# workers) changes no number.
RESUMABLE = ("train.steps", "train.max_minutes", "train.log_every", "train.val_every", "train.checkpoint_every",
             "train.snapshot_every", "data.streaming", "data.num_workers",
             # the refinement starts again from the trained UCC model on every --resume: a finished run can be
             # refined (again) with other settings, and model.pt is what the new config says
             "refine.steps", "refine.rounds", "refine.lr", "refine.batch_size")


def kmeans_path(run_dir: str | Path, k: int) -> Path:
    """``<run>/kmeans-k{k}.npz``."""
    return Path(run_dir) / f"kmeans-k{k}.npz"


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    """``<run>/snapshots/step-NNNNNNN.pt``."""
    return Path(run_dir) / SNAPSHOTS / f"step-{step:07d}.pt"


def save_weights(state: dict[str, Any], path: str | Path) -> None:
    """Write a state dict (tensors, numbers, strings only) atomically with ``torch.save`` (fsync'ed; a full disk
    is a :class:`PathouccError` naming ``path``, and the previous file stays as it was)."""
    write_torch(state, path)


def read_weights(path: str | Path, what: str = "file") -> dict[str, Any]:
    """A pathoucc ``.pt`` file (a dict with ``model``); a corrupt or foreign file is a :class:`PathouccError`
    naming it. ``what`` names the kind of file in that message."""
    state = read_torch(path, what)
    if not isinstance(state, dict) or "model" not in state:
        raise PathouccError(f"not a pathoucc {what}", path)
    return state


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state of an interrupted run (see :meth:`pathoucc.training.state.TrainState.state_dict`)."""
    if not Path(path).is_file():
        raise PathouccError("no checkpoint to resume from", path)
    return read_weights(path, "checkpoint")


def save_model(model: UCCModel, cfg: Config, path: str | Path) -> None:
    """Final weights plus the config that built them (readable with ``weights_only=True``)."""
    save_weights({"model": model.state_dict(), "config": json.dumps(cfg.to_dict()),
                  "num_ucc": cfg.bags.ucc_max - cfg.bags.ucc_min + 1}, path)


def clear_weight_outputs(run_dir: str | Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Remove what earlier final weights left in ``run_dir`` (``model.pt``, ``model-ucc.pt``, the refinement's
    outputs and checkpoint, the scores ``metrics.json``, ``kmeans-k*.npz``; not the names in ``keep``) before new
    ones are written; returns the names removed."""
    run_dir = Path(run_dir)
    names = [n for n in (MODEL, MODEL_UCC, REFINE, REFINE_LOG, REFINE_CURVES, REFINE_CHECKPOINT, METRICS)
             if n not in keep]
    found = [p for p in [*(run_dir / n for n in names), *sorted(run_dir.glob("kmeans-k*.npz"))] if p.exists()]
    for path in found:
        path.unlink()
    return [p.name for p in found]


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", file: str = MODEL) -> tuple[Config, UCCModel]:
    """The config and trained model (in eval mode, on ``device``) of a run folder: ``model.pt``, or ``file``
    (e.g. ``model-ucc.pt``, the UCC model of a refined run)."""
    run_dir = Path(run_dir)
    path = run_dir / file
    if not run_dir.is_dir():
        raise PathouccError("run folder not found", run_dir)
    if not path.is_file():
        if file == MODEL and (run_dir / MODEL_UCC).is_file():
            raise PathouccError(f"run folder has no refined model ({MODEL}), only the UCC model {MODEL_UCC}: run "
                                f"`pathoucc refine {run_dir}`", run_dir)
        raise PathouccError(f"run folder has no trained model ({file}); train it first", run_dir)
    state = read_weights(path, "model file")
    try:
        cfg = config_from_dict(json.loads(state["config"]), str(path))
        model = create_model(cfg.model, int(state["num_ucc"]), cfg.bags.ucc_min)
        model.load_state_dict(state["model"])
    except PathouccError:
        raise
    except Exception as exc:
        raise PathouccError(f"corrupt or incompatible model file ({type(exc).__name__})", path) from None
    return cfg, model.to(device).eval()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(run: Config, given: Config, ignore: tuple[str, ...] = RESUMABLE) -> list[str]:
    """The keys in which ``given`` differs from ``run``, as ``"bags.bag_size: 4 (run) vs 32 (given)"`` (keys in
    ``ignore`` left out), sorted by key."""
    a, b = _flat(run.to_dict()), _flat(given.to_dict())

    def show(d: dict[str, Any], k: str) -> str:
        return json.dumps(d[k]) if k in d else "(unset)"

    return [f"{k}: {show(a, k)} (run) vs {show(b, k)} (given)" for k in sorted(a.keys() | b.keys())
            if k not in ignore and (k in a, a.get(k)) != (k in b, b.get(k))]


def check_resume_config(run_dir: str | Path, state: dict[str, Any], cfg: Config) -> None:
    """Refuse to resume with a config that differs from the run's (``config.yaml``, else the checkpoint's) in
    anything but :data:`RESUMABLE`: one line naming every differing key with both values."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if path.is_file():
        saved = load_config(path)
    else:
        path = run_dir / CHECKPOINT
        try:
            saved = config_from_dict(json.loads(state["config"]), str(path))
        except (KeyError, TypeError, ValueError):
            return  # a checkpoint without its config: nothing to compare with
    diff = config_diff(saved, cfg)
    if diff:
        raise PathouccError(f"--resume with a config that differs from the run's: {'; '.join(diff)} (only "
                            f"{', '.join(RESUMABLE)} may change; train with another --out instead)", path)
