"""The UCC model: encoder -> features in [0, 1] -> KDE per bag -> ucc classifier, plus an autoencoder branch."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pathoucc.models.kde import KDE
from pathoucc.models.presence import PresenceCount


class UCCModel(nn.Module):
    """Unique-class-count model (Oner, Lee & Sung, ICLR 2020).

    Parameters
    ----------
    encoder : nn.Module
        Maps instances (``(M, C, H, W)`` pixels, or ``(M, D)`` feature vectors for a projection) to vectors
        ``(M, encoder.num_features)``.
    num_features : int
        Size J of the instance feature, squashed to [0, 1] by a sigmoid; these features are clustered.
    kde : KDE
        Density of each bag's features.
    mlp : list of int
        Hidden sizes of the distribution-regression MLP.
    num_ucc : int
        Number of ucc classes predicted (ucc_max - ucc_min + 1).
    decoder : nn.Module or None
        Reconstructs instances from their features (autoencoder branch).
    feature_norm : bool
        Batch-normalise the feature logits before the sigmoid.
    iic_clusters : int
        Size of a linear softmax head on the features trained by the invariance term (0: none).
    presence : PresenceCount or None
        Count each bag as its number of present latent clusters instead of by ``kde`` and ``mlp`` (then unused).
    """

    def __init__(self, encoder: nn.Module, num_features: int, kde: KDE, mlp: list[int], num_ucc: int,
                 decoder: nn.Module | None = None, feature_norm: bool = False, iic_clusters: int = 0,
                 presence: PresenceCount | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, num_features)
        # batch-normalised logits keep the features spread over [0, 1] (the KDE's range) from the start
        self.head_norm = nn.BatchNorm1d(num_features) if feature_norm else nn.Identity()
        self.presence = presence
        self.kde = kde if presence is None else None
        self.classifier = None if presence is not None else self._classifier(kde.out_features(num_features), mlp,
                                                                            num_ucc)
        self.decoder = decoder
        self.num_features = num_features
        self.cluster_head = nn.Linear(num_features, iic_clusters) if iic_clusters else None

    @staticmethod
    def _classifier(width: int, mlp: list[int], num_ucc: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for h in mlp:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_ucc))
        return nn.Sequential(*layers)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Instances ``(M, C, H, W)`` (or ``(M, D)``) -> features ``(M, J)`` float32 in [0, 1].

        Under mixed precision the encoder runs in bf16/fp16 but the feature head in fp32: the features are what
        k-means clusters, and bf16's 8-bit mantissa would round nearby features together."""
        h = self.encoder(x)
        with torch.autocast(h.device.type, enabled=False):
            return torch.sigmoid(self.head_norm(self.head(h.float())))

    def encode(self, x: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """:meth:`extract_features` ``chunk`` instances at a time (0: all at once). While training, each chunk's
        activations are recomputed in the backward pass instead of kept (activation checkpointing), so a bag of
        thousands of instances trains in the memory of one chunk. Batch-norm layers see chunks, not the whole
        bag, and update their running statistics again when a chunk is recomputed."""
        if not chunk or len(x) <= chunk:
            return self.extract_features(x)
        if not (torch.is_grad_enabled() and self.training):
            return torch.cat([self.extract_features(part) for part in x.split(chunk)])
        return torch.cat([checkpoint(self.extract_features, part, use_reentrant=False) for part in x.split(chunk)])

    def forward(self, instances: torch.Tensor, members: torch.Tensor, mask: torch.Tensor | None = None,
                chunk: int = 0) -> dict[str, torch.Tensor]:
        """Instances ``(M, C, H, W)`` (or ``(M, D)``), bags as ``members`` ``(B, N)`` positions into them,
        ``mask`` ``(B, N)`` (True = real member; None = all) -> ``logits (B, num_ucc)``, ``features (M, J)``,
        ``recon`` (the instances' shape).

        Bags may share instances: each instance is encoded once, however many bags it is in."""
        features = self.encode(instances, chunk)
        if self.presence is not None:
            logits = self.presence(features.float(), members, mask)
        else:
            logits = self.classifier(self.kde(features.float()[members], mask))
        out = {"logits": logits, "features": features}
        if self.decoder is not None:
            out["recon"] = self.decoder(features)
        return out
