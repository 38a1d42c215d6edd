"""Learning-rate schedules: one cosine helper, used by the UCC training (:func:`lr_factor`) and the refinement
(:func:`refine_lr_factor`)."""

from __future__ import annotations

import math

from pathoucc.config import Config

__all__ = ["ONECYCLE_END", "ONECYCLE_START", "ONECYCLE_WARMUP", "cosine", "lr_factor", "refine_lr_factor"]

ONECYCLE_WARMUP = 0.3  # share of the steps spent warming up under ``onecycle`` (unless train.warmup_steps is set)
ONECYCLE_START = 1 / 25  # lr factor at step 0 under ``onecycle`` (torch's div_factor 25)
ONECYCLE_END = 1 / 25 / 1e4  # lr factor at the last step under ``onecycle`` (torch's final_div_factor 1e4)


def cosine(start: float, end: float, progress: float) -> float:
    """From ``start`` (progress 0) to ``end`` (progress >= 1) along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def lr_factor(cfg: Config, step: int, elapsed_s: float = 0.0) -> float:
    """Learning-rate multiplier of the UCC training at ``step`` after ``elapsed_s`` training seconds.

    ``constant`` and ``cosine`` (to zero) follow a linear warm-up of ``warmup_steps``; ``onecycle`` is torch's
    one-cycle policy: a cosine rise from lr/25 to lr over ``warmup_steps`` (default 30 % of the steps), then a
    cosine fall to lr/25e4 at the last step. With a time budget (``max_minutes``) the schedule follows whichever
    runs out first, the steps or the minutes, so a budgeted run still anneals (its learning rates then depend on
    the machine's speed).
    """
    train = cfg.train
    if train.max_minutes:
        step = max(step, math.floor(train.steps * elapsed_s / (train.max_minutes * 60)))
    if train.schedule == "onecycle":
        up = train.warmup_steps or max(1, round(ONECYCLE_WARMUP * train.steps))
        if step < up:
            return cosine(ONECYCLE_START, 1.0, step / up)
        return cosine(1.0, ONECYCLE_END, (step - up) / max(1, train.steps - up))
    if train.warmup_steps and step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return 1.0
    return cosine(1.0, 0.0, (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps))


def refine_lr_factor(step: int, steps: int) -> float:
    """Learning-rate multiplier of a refinement round at ``step`` of ``steps``: cosine from 1 to 0, no warm-up."""
    return cosine(1.0, 0.0, step / steps)
