"""Differentiable kernel density estimation over the instances of each bag."""

from __future__ import annotations

import torch
from torch import nn


class KDE(nn.Module):
    """Per-feature Gaussian KDE of a bag's features, sampled at ``num_bins`` points of [0, 1].

    Input: features ``(B, N, J)`` in [0, 1] (B bags of N instances, J features).
    Output: ``(B, J * num_bins)``, each feature's density normalised to sum to 1 over its bins.
    """

    def __init__(self, num_bins: int = 11, sigma: float = 0.1) -> None:
        super().__init__()
        if num_bins < 2 or sigma <= 0:
            raise ValueError("KDE needs num_bins >= 2 and sigma > 0")
        self.num_bins, self.sigma = num_bins, sigma
        self.register_buffer("bins", torch.linspace(0.0, 1.0, num_bins), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        diff = features.unsqueeze(-1) - self.bins  # (B, N, J, K)
        density = torch.exp(diff.square() * (-0.5 / self.sigma**2)).mean(dim=1)  # (B, J, K)
        density = density / density.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return density.flatten(1)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, sigma={self.sigma}"
