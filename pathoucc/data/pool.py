"""The pool protocol: the instances of one split that bags are drawn from, and what features and k-means read
(built in :mod:`pathoucc.data.sources`). An instance is an image (uint8 pixels) or a feature vector (float32, read
from a foundation-model feature file); nothing downstream asks which, the model takes what the data gives.

:class:`Instances` is anything that reads instances by index: a :class:`Pool`, or an open tile, coords or feature
file (:class:`~pathoucc.slides.patchfile.PatchFile`). A :class:`Pool` adds class labels (for scoring only) and the
regions with counts that bags are drawn from; :class:`InstancePool` (in memory) and
:class:`~pathoucc.data.stream.StreamingPool` (read from tile files on demand) implement it.
:func:`subsample` picks the seeded subset of at most N rows that every k-means fit uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["InstancePool", "Instances", "Pool", "subsample"]


@runtime_checkable
class Instances(Protocol):
    """Instances read by index."""

    def __len__(self) -> int: ...

    @property
    def shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image, or (D,) of one feature vector."""
        ...

    def read(self, index: np.ndarray | slice) -> np.ndarray:
        """Instances ``index`` (any order, repeats allowed) as ``(n, H, W, C)`` uint8 or ``(n, D)`` float32."""
        ...


@runtime_checkable
class Pool(Instances, Protocol):
    """The instances of one split with their labels and regions.

    labels : (N,) int64 class of each instance (-1 where unknown); to build MNIST bags and to score only.
    region : (N,) int64 or None, the region (fixed bag) of each instance, -1 in none.
    region_count : (R,) int64 or None, the unique class count of each region.
    """

    labels: np.ndarray
    region: np.ndarray | None
    region_count: np.ndarray | None

    @property
    def num_classes(self) -> int:
        """Distinct known labels."""
        ...

    def subset(self, member: np.ndarray, region: np.ndarray | None, region_count: np.ndarray | None) -> Pool:
        """The instances where ``member`` (N,) bool is True, with new region indices and counts."""
        ...


def subsample(n: int, at_most: int, seed: int) -> np.ndarray:
    """Sorted row numbers ``(min(n, at_most),)`` int64: all ``n`` rows, or a seeded random subset of ``at_most``."""
    if n <= at_most:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, at_most, replace=False)).astype(np.int64)


@dataclass
class InstancePool:
    """The instances of one split held in memory (a :class:`Pool`).

    images : (N, H, W, C) uint8 (an (N, H, W) array gains C = 1); labels, region, region_count : as in :class:`Pool`.
    """

    images: np.ndarray
    labels: np.ndarray
    region: np.ndarray | None = None
    region_count: np.ndarray | None = None

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
        """Distinct known labels."""
        return len(np.unique(self.labels[self.labels >= 0]))

    def read(self, index: np.ndarray | slice) -> np.ndarray:
        """Instances ``index`` as ``(n, H, W, C)`` uint8."""
        return self.images[index]

    def subset(self, member: np.ndarray, region: np.ndarray | None, region_count: np.ndarray | None) -> InstancePool:
        """The instances where ``member`` is True, with new region indices and counts."""
        return InstancePool(self.images[member], self.labels[member], region, region_count)
