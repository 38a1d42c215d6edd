"""The decoders: features back to an image (or to the input feature vector), for the reconstruction
(autoencoder) loss."""

from __future__ import annotations

import torch
from torch import nn

from pathoucc.models.encoders import PreActBlock

__all__ = ["ConvDecoder", "FeatureDecoder"]


class ConvDecoder(nn.Module):
    """Mirror of an encoder: features ``(B, J)`` -> image ``(B, C, H, W)`` in [0, 1].

    Linear to ``(widths[0], s, s)``, then [upsample ×2, conv-BN-ReLU] stages, then a 3×3 conv + sigmoid,
    resized to ``out_size`` if needed.
    """

    def __init__(self, num_features: int, out_chans: int = 1, out_size: int = 28,
                 widths: tuple[int, ...] = (128, 64, 32), residual: bool = False) -> None:
        super().__init__()
        self.start = max(out_size // 2 ** (len(widths) - 1), 1)
        self.out_size = out_size
        self.fc = nn.Linear(num_features, widths[0] * self.start**2)
        layers: list[nn.Module] = [nn.Unflatten(1, (widths[0], self.start, self.start))]
        c = widths[0]
        for w in widths[1:]:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers.append(PreActBlock(c, w) if residual else nn.Sequential(
                nn.Conv2d(c, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)))
            c = w
        layers += [nn.Conv2d(c, out_chans, 3, 1, 1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(self.fc(z))
        if x.shape[-1] != self.out_size:
            x = nn.functional.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear",
                                          align_corners=False)
        return x


class FeatureDecoder(nn.Module):
    """Features ``(B, J)`` -> the input feature vector ``(B, D)``: [Linear, GELU] per hidden width, then a linear
    output (feature vectors are not bounded)."""

    def __init__(self, num_features: int, output_dim: int, widths: tuple[int, ...] = (128,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = num_features
        for w in widths:
            layers += [nn.Linear(c, w), nn.GELU()]
            c = w
        layers.append(nn.Linear(c, output_dim))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)
