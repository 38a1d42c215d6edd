"""The losses: the count likelihood of the UCC training (plus the autoencoder's reconstruction) and the
refinement's pseudo-label cross-entropy (plus, with labelled examples, ClusterNet's pairwise term).

A bag's *count* is its number of distinct classes; the count classifier predicts its *count class*
``target = count - bags.ucc_min`` (``0 .. num_ucc - 1``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathoucc.config import Config
from pathoucc.models import UCCModel

__all__ = ["invariance_loss", "pairwise_kl_loss", "pseudo_label_loss", "ucc_loss_terms", "ucc_nll"]


def ucc_nll(logits: torch.Tensor, target: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
    """Per-bag negative log-likelihood ``(B,)`` of the count classes ``target`` ``(B,)`` under ``logits``
    ``(B, num_ucc)``; with ``low`` ``(B,)`` the label is the interval of count classes ``[low, target]`` and the
    likelihood is ``P(low <= count class <= target)`` (exact where ``low == target``; a subset of a count-only
    region has ``low`` 0, a union of two regions the larger of their counts)."""
    log_p = logits.float().log_softmax(1)
    if low is None:
        return -log_p.gather(1, target[:, None])[:, 0]
    # one allowed class (an exact count) gives exactly its log-probability: no branch, no host sync
    classes = torch.arange(logits.shape[1], device=logits.device)
    allowed = (classes >= low[:, None]) & (classes <= target[:, None])
    return -log_p.masked_fill(~allowed, float("-inf")).logsumexp(1)


def invariance_loss(model: UCCModel, x: torch.Tensor, features: torch.Tensor, n: int,
                    generator: torch.Generator) -> torch.Tensor:
    """IIC's loss (minus the mutual information, :func:`pathoucc.training.iic.iic_loss`) between the cluster
    head's assignments of ``n`` of the instances ``x`` ``(M, C, H, W)`` (their ``features`` ``(M, J)`` already
    computed) and of a random affine copy of each (:func:`pathoucc.training.iic.random_affine`); the instances and
    the transforms are drawn from ``generator``."""
    from pathoucc.training.iic import iic_loss, random_affine

    pick = torch.randperm(len(x), generator=generator)[:n].to(x.device)
    copy = model.extract_features(random_affine(x[pick], generator))
    head = model.cluster_head
    return iic_loss(head(features[pick].float()).softmax(1), head(copy.float()).softmax(1))


def ucc_loss_terms(model: UCCModel, x: torch.Tensor, members: torch.Tensor, mask: torch.Tensor,
                   target: torch.Tensor, cfg: Config, low: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Forward pass and the weighted loss: instances ``x`` ``(M, C, H, W)``, bags ``members``/``mask``
    ``(B, N)`` (see :class:`~pathoucc.data.bags.BagBatch`), count classes ``target`` ``(B,)``, ``low`` ``(B,)``
    the lowest count class of interval labels (``target`` where exact). Returns scalar tensors ``loss`` (what is
    minimised), ``ucc_loss``, ``ucc_acc`` (the predicted class lies in the label's interval), with a decoder
    and ``loss.ae_weight`` > 0 ``recon_loss``, and with ``loss.iic_weight`` > 0 and a ``generator`` (training
    steps; validation passes none) ``iic_loss`` (:func:`invariance_loss`)."""
    out = model(x, members, mask, chunk=cfg.train.encoder_chunk)
    terms = {"ucc_loss": ucc_nll(out["logits"], target, low).mean()}
    pred = out["logits"].argmax(1)
    hit = pred == target if low is None else (pred >= low) & (pred <= target)
    terms["ucc_acc"] = hit.float().mean()
    loss = cfg.loss.ucc_weight * terms["ucc_loss"]
    if "recon" in out and cfg.loss.ae_weight > 0:
        terms["recon_loss"] = F.mse_loss(out["recon"].float(), x)
        loss = loss + cfg.loss.ae_weight * terms["recon_loss"]
    if cfg.loss.iic_weight > 0 and generator is not None:
        inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        terms["iic_loss"] = invariance_loss(inner, x, out["features"], cfg.loss.iic_instances, generator)
        loss = loss + cfg.loss.iic_weight * terms["iic_loss"]
    terms["loss"] = loss
    return terms


def pseudo_label_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The refinement's loss: mean cross-entropy (in fp32) of cluster ``logits`` ``(n, k)`` against the
    count-consistent pseudo-labels ``target`` ``(n,)``."""
    return F.cross_entropy(logits.float(), target)


def pairwise_kl_loss(logits: torch.Tensor, classes: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """ClusterNet's pairwise loss (Shukla et al. 2018; the KL-divergence contrastive loss of Hsu & Kira 2016) over
    every ordered pair ``i != j`` of the labelled patches' cluster ``logits`` ``(n, k)`` with classes ``(n,)``.

    With ``p`` the softmax and ``KL_ij = KL(p_i* || p_j)`` (``p_i*`` detached: the target side), a pair of one
    class costs ``KL_ij``, a pair of two classes ``max(0, margin - KL_ij)``; the mean over the pairs (0 for fewer
    than two patches). Same-class patches are pulled to one assignment, different classes pushed ``margin``
    nats apart."""
    if len(logits) < 2:
        return logits.sum() * 0.0
    log_p = logits.float().log_softmax(1)
    target = log_p.detach()
    # KL(p_i* || p_j) = sum_c p_i*(c) (log p_i*(c) - log p_j(c)), all pairs at once: (n, n)
    kl = (target.exp() * target).sum(1, keepdim=True) - target.exp() @ log_p.t()
    same = classes[:, None] == classes[None, :]
    off = ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    cost = torch.where(same, kl, (margin - kl).clamp_min(0.0))
    return cost[off].mean()
