"""The IIC baseline (Ji, Henriques & Vedaldi, ICCV 2019): clusters without any labels or counts, by maximising
the mutual information between the cluster assignments of an image and of a randomly transformed copy.

One step (:func:`iic_step`): a seeded batch of training instances ``x`` and a random affine copy ``g(x)``
(rotation, scale, shift; drawn per step from the run's seed) -> the encoder of the run's config and, as in the
paper, ``subheads`` linear ``k``-way softmax heads plus as many over-clustering heads of ``overcluster × k`` ways
(the auxiliary heads that keep IIC from collapsing early) -> the mean of their losses :func:`iic_loss` -> Adam.
Training goes through THE loop (:func:`~pathoucc.training.loop.run_loop`) under the config's step and time budget
(``train.steps``, ``train.max_minutes``). After training the ``k``-way sub-head of lowest loss on a seeded batch
of training pairs is kept (label-free, the paper's choice); the clusters are its argmax
(:mod:`pathoucc.cluster.baselines` scores them).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pathoucc.config import Config
from pathoucc.data.augment import step_seed
from pathoucc.data.loader import to_model_input
from pathoucc.data.pool import Pool
from pathoucc.models.factory import create_encoder
from pathoucc.runtime import autocast, autocast_dtype, seed_everything, select_device
from pathoucc.training.distributed import World
from pathoucc.training.loop import LoopPlan, run_loop
from pathoucc.training.schedule import lr_factor
from pathoucc.training.state import TrainState

__all__ = ["IICNet", "choose_head", "iic_loss", "iic_step", "paired_losses", "random_affine", "train_iic"]


def iic_loss(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """IIC's objective, minus the mutual information ``I(z, z')`` of paired soft assignments ``p``, ``q``
    ``(B, K)`` (rows sum to 1): the joint ``P = p^T q / B``, symmetrised, and ``-sum P log(P / (P_i P_j))``."""
    joint = p.float().t() @ q.float() / p.shape[0]
    joint = ((joint + joint.t()) / 2).clamp_min(eps)
    marginal_i, marginal_j = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    return -(joint * (joint.log() - marginal_i.log() - marginal_j.log())).sum()


class IICNet(nn.Module):
    """The config's encoder, ``subheads`` ``k``-way linear heads and ``subheads`` over-clustering heads of
    ``overcluster * k`` ways (none with ``overcluster`` 0). ``forward(x (B, C, H, W)) -> (B, k)``: the
    probabilities of the kept sub-head (``self.best``, set by :func:`choose_head`; 0 before)."""

    def __init__(self, cfg: Config, k: int, subheads: int = 5, overcluster: int = 5) -> None:
        super().__init__()
        if subheads < 1 or overcluster < 0:
            raise ValueError(f"IIC needs subheads >= 1 and overcluster >= 0, got {subheads} and {overcluster}")
        self.encoder = create_encoder(cfg.model)
        width = self.encoder.num_features
        self.heads = nn.ModuleList(nn.Linear(width, k) for _ in range(subheads))
        self.over = nn.ModuleList(nn.Linear(width, overcluster * k) for _ in range(subheads if overcluster else 0))
        self.best = 0

    def all_heads(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The probabilities of every ``k``-way head and of every over-clustering head, ``(B, k)`` / ``(B, o k)``."""
        z = self.encoder(x)
        return ([h(z).float().softmax(1) for h in self.heads], [h(z).float().softmax(1) for h in self.over])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[self.best](self.encoder(x)).float().softmax(1)


def paired_losses(net: IICNet, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`iic_loss` of every ``k``-way head ``(subheads,)`` and of every over-clustering head for the pairs
    ``x``, ``g(x)`` (``g`` :func:`random_affine` drawn from ``generator``); the second is empty without them."""
    (main, over), (main_t, over_t) = net.all_heads(x), net.all_heads(random_affine(x, generator))
    stack = [torch.stack([iic_loss(p, q) for p, q in zip(a, b, strict=True)]) if a else torch.zeros(0)
             for a, b in ((main, main_t), (over, over_t))]
    return stack[0], stack[1].to(stack[0].device)


def random_affine(x: torch.Tensor, generator: torch.Generator, degrees: float = 25.0, scale: float = 0.2,
                  shift: float = 0.15) -> torch.Tensor:
    """Each image of ``x`` ``(B, C, H, W)`` rotated by up to ``degrees``, scaled by 1 ± ``scale`` and shifted by up
    to ``shift`` of its size (uniform, from ``generator``), bilinear, zeros outside."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=generator) * 2 - 1
    angle, s = u[:, 0] * math.radians(degrees), 1 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * shift * 2], 1),
                         torch.stack([sin, cos, u[:, 3] * shift * 2], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def iic_step(state: TrainState, batch: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """One IIC step on ``batch`` (``images`` (B, H, W, C) uint8 and the step's ``seed``); returns the detached
    loss and the lr."""
    x = to_model_input(batch["images"], state.device)
    generator = torch.Generator().manual_seed(batch["seed"])
    state.set_lr(cfg.train.lr * lr_factor(cfg, state.step, state.elapsed))
    state.net.train()
    with autocast(state.device, state.amp_dtype):
        main, over = paired_losses(state.net, x, generator)
        loss = main.mean() + (over.mean() if over.numel() else 0.0)
    state.optimise(loss)
    return {"iic_loss": loss.detach(), "lr": state.lr}


def _batches(pool: Pool, batch_size: int, seed: int, start: int) -> Iterator[dict[str, Any]]:
    """Step ``s``'s batch: ``batch_size`` instances of ``pool`` drawn with the seed of step ``s`` (so a step's
    batch depends on nothing else)."""
    step = start
    while True:
        s = step_seed(seed, step)
        rows = np.sort(np.random.default_rng(s).choice(len(pool), min(batch_size, len(pool)), replace=False))
        yield {"images": torch.from_numpy(np.ascontiguousarray(pool.read(rows))), "seed": s}
        step += 1


@torch.no_grad()
def choose_head(net: IICNet, pool: Pool, batch_size: int, seed: int) -> list[float]:
    """Keep (``net.best``) the ``k``-way sub-head of lowest :func:`iic_loss` on a seeded batch of ``pool``'s
    instances and their paired copies (no labels); returns every sub-head's loss."""
    net.eval()
    device = next(net.parameters()).device
    rows = np.sort(np.random.default_rng([seed, 1]).choice(len(pool), min(4 * batch_size, len(pool)), replace=False))
    x = to_model_input(torch.from_numpy(np.ascontiguousarray(pool.read(rows))), device)
    losses = paired_losses(net, x, torch.Generator().manual_seed(seed + 1))[0].cpu().tolist()
    net.best = int(np.argmin(losses))
    return losses


def train_iic(cfg: Config, pool: Pool, k: int, batch_size: int = 512, progress: bool = False, subheads: int = 5,
              overcluster: int = 5) -> tuple[IICNet, dict]:
    """Train :class:`IICNet` with ``k`` clusters (``subheads`` heads, over-clustering heads of ``overcluster × k``
    ways) on ``pool`` for ``train.steps`` steps or ``train.max_minutes`` (Adam at ``train.lr`` on the config's
    schedule, mixed precision with ``train.amp``), then :func:`choose_head`; returns the model (eval mode) and the
    last log record (``iic_loss``, ``step``, ``elapsed_s``, ``head_losses``, ``head``)."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.seed)
    device = select_device(cfg.train.device)
    net = IICNet(cfg, k, subheads, overcluster).to(device)
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    state = TrainState({"model": net}, net, torch.optim.Adam(net.parameters(), lr=cfg.train.lr),
                       torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16), device, amp_dtype)
    plan = LoopPlan(steps=cfg.train.steps, log_every=cfg.train.log_every, checkpoint_every=0, checkpoint=None,
                    log_path=None, budget_s=cfg.train.max_minutes * 60 if cfg.train.max_minutes else math.inf,
                    label="iic", show=lambda r: f"iic_loss {r.get('iic_loss', float('nan')):.3f}")
    last = run_loop(state, _batches(pool, batch_size, cfg.seed, 0), partial(iic_step, cfg=cfg), plan, World(),
                    progress)
    losses = choose_head(net, pool, batch_size, cfg.seed)
    return net.eval(), last | {"step": state.step, "elapsed_s": round(state.elapsed, 3), "head_losses": losses,
                               "head": net.best}
