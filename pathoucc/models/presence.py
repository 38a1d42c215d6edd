"""A count head with no free count classifier: a bag's count is the number of latent clusters present in it."""

from __future__ import annotations

import torch
from torch import nn


def poisson_binomial(present: torch.Tensor) -> torch.Tensor:
    """Distribution ``(B, K + 1)`` of the number of successes of K independent events of probabilities
    ``present`` ``(B, K)``: entry ``c`` is the probability that exactly ``c`` of them happen."""
    dist = present.new_zeros(present.shape[0], present.shape[1] + 1)
    dist[:, 0] = 1.0
    for k in range(present.shape[1]):
        p = present[:, k : k + 1]
        dist = torch.cat([dist[:, :1] * (1 - p), dist[:, 1:] * (1 - p) + dist[:, :-1] * p], dim=1)
    return dist


class PresenceCount(nn.Module):
    """Count of each bag from soft cluster assignments of its instances.

    Each instance's features ``(J,)`` in [0, 1] get a softmax assignment ``q`` over ``clusters`` latent clusters
    (one linear layer). A cluster is present in a bag with probability ``max`` of its members' ``q`` — one
    member is enough, whatever its share of the bag (a class of 2 patches in a region of 300 counts as much as
    one of 200). The bag's count is the number of present clusters (a Poisson-binomial over the K presence
    probabilities): there is no count classifier to learn the training regions by heart — though the encoder
    still can (measured on a digit-slide cohort of ~200 regions: docs/benchmarks.md; off by default).

    Output: ``(B, num_ucc)`` log-probabilities of the counts ``ucc_min .. ucc_min + num_ucc - 1`` (as logits:
    the loss renormalises them over that range).
    """

    def __init__(self, num_features: int, clusters: int, num_ucc: int, ucc_min: int = 1) -> None:
        super().__init__()
        if clusters < ucc_min + num_ucc - 1:
            raise ValueError(f"{clusters} presence clusters cannot count to {ucc_min + num_ucc - 1}")
        self.assign = nn.Linear(num_features, clusters)
        self.register_buffer("counts", torch.arange(ucc_min, ucc_min + num_ucc), persistent=False)

    def assignments(self, features: torch.Tensor) -> torch.Tensor:
        """Features ``(M, J)`` -> soft cluster assignments ``(M, clusters)`` (rows sum to 1)."""
        return self.assign(features).softmax(-1)

    def forward(self, features: torch.Tensor, members: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Features ``(M, J)``, bags as ``members`` ``(B, N)`` positions into them, ``mask`` ``(B, N)`` (True =
        real member) -> count log-probabilities ``(B, num_ucc)``."""
        q = self.assignments(features)[members]  # (B, N, K)
        if mask is not None:
            q = q.masked_fill(~mask[:, :, None], 0.0)
        dist = poisson_binomial(q.amax(dim=1))
        return dist[:, self.counts].clamp_min(1e-12).log()

    def extra_repr(self) -> str:
        return f"clusters={self.assign.out_features}, counts={self.counts.tolist()}"
