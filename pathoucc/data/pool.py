"""An instance pool: the labelled instances (images) of one split that bags are drawn from (built in
:mod:`pathoucc.data.sources`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class InstancePool:
    """Instances of one split held in memory.

    images : (N, H, W, C) uint8
    labels : (N,) int64 class of each instance (-1 where unknown); used to build bags and to evaluate only.
    bag_index : (N,) int64 or None, the fixed bag (region) of each instance when bags come with the data.
    bag_ucc : (R,) int64 or None, the unique class count of each fixed bag.
    """

    images: np.ndarray
    labels: np.ndarray
    bag_index: np.ndarray | None = None
    bag_ucc: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, C) uint8, got {self.images.shape} {self.images.dtype}")
        if len(self.labels) != len(self.images):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one instance."""
        _, h, w, c = self.images.shape
        return c, h, w

    @property
    def num_classes(self) -> int:
        return len(np.unique(self.labels[self.labels >= 0]))

    def read(self, index: np.ndarray | slice) -> np.ndarray:
        """Instances ``index`` as ``(n, H, W, C)`` uint8 (the interface :class:`~pathoucc.data.stream.StreamingPool`
        shares)."""
        return self.images[index]

    def subset(self, member: np.ndarray, bag_index: np.ndarray | None, bag_ucc: np.ndarray | None) -> InstancePool:
        """The instances where ``member`` is True, with new region indices and counts."""
        return InstancePool(self.images[member], self.labels[member], bag_index, bag_ucc)

    def tensor(self, index: np.ndarray | slice, transform=None) -> torch.Tensor:
        """Instances ``index`` as a float tensor ``(n, C, H, W)`` in [0, 1], optionally augmented (uint8 HWC)."""
        batch = self.images[index]
        if transform is not None:
            batch = np.stack([transform(image=im)["image"] for im in batch])
        return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
