"""Differentiable kernel density estimation over the instances of each bag."""

from __future__ import annotations

import torch
from torch import nn


class KDE(nn.Module):
    """Per-feature Gaussian KDE of a bag's features, sampled at ``num_bins`` points of [0, 1].

    Input: features ``(B, N, J)`` in [0, 1] (B bags of up to N instances, J features) and optionally ``mask``
    ``(B, N)`` bool, True for a bag's real members: the density is the mean over those only, so a padded bag
    gives exactly the density of its members.
    Output: ``(B, J * num_bins)``, each feature's density normalised to sum to 1 over its bins.

    ``pool="mean+max"`` appends, per feature and bin, the largest kernel value over the bag's members: whether
    *any* member lies near the bin, whatever its share of the bag (a class of 1 patch in a region of 100 moves the
    mean density by 1 %, the max by up to 1). Output ``(B, 2 * J * num_bins)``.
    """

    POOLS = ("mean", "mean+max")

    def __init__(self, num_bins: int = 11, sigma: float = 0.1, pool: str = "mean") -> None:
        super().__init__()
        if num_bins < 2 or sigma <= 0:
            raise ValueError("KDE needs num_bins >= 2 and sigma > 0")
        if pool not in self.POOLS:
            raise ValueError(f"KDE pool must be one of {self.POOLS}, got {pool!r}")
        self.num_bins, self.sigma, self.pool = num_bins, sigma, pool
        self.register_buffer("bins", torch.linspace(0.0, 1.0, num_bins), persistent=False)

    def out_features(self, num_features: int) -> int:
        """Output width for ``num_features`` features per instance."""
        return num_features * self.num_bins * (2 if self.pool == "mean+max" else 1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        kernel = torch.exp((features.unsqueeze(-1) - self.bins).square() * (-0.5 / self.sigma**2))  # (B, N, J, K)
        if mask is None:
            density = kernel.mean(dim=1)
        else:
            weight = mask.to(kernel.dtype)[:, :, None, None]
            density = (kernel * weight).sum(1) / weight.sum(1).clamp_min(1.0)  # (B, J, K)
        density = density / density.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        if self.pool == "mean":
            return density.flatten(1)
        peak = kernel if mask is None else kernel.masked_fill(~mask[:, :, None, None], 0.0)
        return torch.cat([density.flatten(1), peak.amax(dim=1).flatten(1)], dim=1)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, sigma={self.sigma}, pool={self.pool!r}"
