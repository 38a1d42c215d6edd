"""THE training loop, shared by the UCC training (:mod:`pathoucc.training.train`) and the refinement
(:mod:`pathoucc.cluster.refine`): steps to a step or time budget, JSONL logging, a validation hook, periodic
checkpoints and snapshots, a progress bar, and stop signals (SIGTERM / SIGUSR1 / Ctrl-C finish the step in flight,
save a checkpoint and raise :class:`~pathoucc.errors.TrainingInterrupted`), agreed between DDP ranks.

What a step does is the caller's ``step(state, batch) -> terms`` function: it reads one batch, trains on it and
returns its loss terms (detached tensors or floats); the loop counts the step and averages the terms for the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pathoucc.errors import TrainingInterrupted
from pathoucc.files import atomic_path
from pathoucc.runtime import progress_bar
from pathoucc.training.distributed import World
from pathoucc.training.preempt import stop_requests
from pathoucc.training.state import TrainState

__all__ = ["LoopPlan", "run_loop", "truncate_log"]

log = logging.getLogger(__name__)

Step = Callable[[TrainState, Any], dict[str, Any]]


@dataclass
class LoopPlan:
    """How one loop runs.

    steps : train until ``state.step`` reaches this, or ``budget_s`` training seconds have passed.
    log_every : average the terms over this many steps into one JSON line of ``log_path`` (and at the end).
    checkpoint_every : save ``state`` to ``checkpoint`` every so many steps (0: only when stopped; no file: never).
    fields : constant keys put first in every log record (e.g. ``{"round": 2}``).
    validate, val_every : extra terms (e.g. ``val_ucc_loss``) added to the record every ``val_every`` steps and
        at the end, on rank 0.
    snapshot, snapshot_every : called with the state every so many steps (0: never), on rank 0.
    label, show : the progress bar's label and its text from the last record.
    """

    steps: int
    log_every: int
    checkpoint_every: int
    checkpoint: Path | None
    log_path: Path | None
    budget_s: float = math.inf
    fields: dict[str, Any] = field(default_factory=dict)
    validate: Callable[[], dict[str, float]] | None = None
    val_every: int = 0
    snapshot: Callable[[TrainState], None] | None = None
    snapshot_every: int = 0
    label: str = "train"
    show: Callable[[dict[str, Any]], str] = lambda record: ""


def _due(step: int, every: int) -> bool:
    return bool(every) and step % every == 0


def run_loop(state: TrainState, batches: Iterator[Any], step: Step, plan: LoopPlan, world: World,
             progress: bool = False) -> dict[str, Any]:
    """Run ``step`` on ``batches`` (one item per step, from ``state.step`` on) until the plan's budget; returns
    the last log record ({} when no step ran). Only rank 0 writes the log and the checkpoints; the caller saves
    the final state."""
    main, saving = world.main, world.main and plan.checkpoint is not None
    log_to = plan.log_path.open("a") if main and plan.log_path is not None else contextlib.nullcontext()
    running: dict[str, Any] = {}  # sums since the last log, on the device: read (synced) only when logged
    pending, info, last = 0, "", {}  # pending: steps summed in running
    # SIGTERM / SIGUSR1 / Ctrl-C only set a flag: the step in flight finishes, then a checkpoint is saved
    with (stop_requests() as stop, log_to as log_file,
          progress_bar(progress and main, plan.label, plan.steps, state.step, "steps") as advance):
        while state.step < plan.steps and state.elapsed < plan.budget_s:
            start = time.perf_counter()
            terms = step(state, next(batches))
            state.step += 1
            state.elapsed += time.perf_counter() - start
            for key, value in terms.items():
                running[key] = running.get(key, 0.0) + (value.double() if torch.is_tensor(value) else value)
            pending += 1
            # all ranks stop at the same step, and agree on the time used (one all-reduce; nothing alone)
            stopping, state.elapsed = world.agree(stop.signum is not None, state.elapsed, state.device)
            end = state.step == plan.steps
            record: dict[str, Any] = {}
            if _due(state.step, plan.log_every) or end:
                record = world.mean({k: float(v) / pending for k, v in running.items()}, state.device)
                running, pending = {}, 0
            if main and plan.validate is not None and (_due(state.step, plan.val_every) or end):
                record |= plan.validate()
            if record and main:
                record = plan.fields | {"step": state.step, "elapsed_s": round(state.elapsed, 3)} | record
                if log_file is not None:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                info, last = plan.show(record), record
            advance(1, info)
            if saving and _due(state.step, plan.checkpoint_every):
                state.save(plan.checkpoint)
            if main and plan.snapshot is not None and _due(state.step, plan.snapshot_every):
                plan.snapshot(state)
            if stopping:
                if saving:
                    state.save(plan.checkpoint)
                name, code = (stop.name, stop.exit_code) if stop.signum is not None else ("SIGTERM", 143)
                log.info("interrupted by %s at step %d; checkpoint saved", name, state.step)
                raise TrainingInterrupted(name, state.step, code)
    return last


def truncate_log(path: Path, step: int, round_: int = 0) -> None:
    """Drop the records of a JSONL log written after the checkpoint being resumed (at ``step`` of round
    ``round_``; records without a round are round 0): they will be produced again. Lines that are not JSON
    records (the torn last line of a killed run) go too, with a warning."""
    if not path.is_file():
        return
    lines, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            torn += bool(line.strip())
            continue
        if isinstance(record, dict) and (record.get("round", 0), record.get("step", 0)) <= (round_, step):
            lines.append(line)
    if torn:
        log.warning("%s: dropped %d unreadable line(s) (a run killed while writing)", path, torn)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{x}\n" for x in lines))
