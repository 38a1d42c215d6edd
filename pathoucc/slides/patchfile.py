"""What every per-slide patch file shares: the patch grid, the slide it came from, optional labels and regions,
and one :meth:`PatchFile.read` that turns a failed read into a one-line error naming the file.

:class:`~pathoucc.slides.tilefile.TileFile` (pixels stored in the HDF5 file) and
:class:`~pathoucc.slides.coords.CoordsFile` (CLAM/TRIDENT coordinates, pixels read from the slide) are the two
kinds; each supplies only ``_read_pixels`` and ``close``. Both read like an instance pool (``len``, ``shape``,
``read``), so features, k-means and segmentation take either without asking which it is.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from pathoucc.errors import PathouccError

__all__ = ["PatchFile", "PatchIndex"]

PatchIndex = int | slice | np.ndarray | list[int]
# what a broken file raises while reading pixels: h5py (a bad chunk, a vanished or truncated file), zlib, a slide
_READ_ERRORS = (OSError, KeyError, RuntimeError, ValueError)


@dataclass(kw_only=True)
class PatchFile(ABC):
    """The patches of one slide. Metadata is loaded eagerly; pixels are read on demand by :meth:`read`.

    coords : (N, 2) int64 level-0 (x, y) of each patch's top-left.
    patch_size : output px per side; patch_level : the pyramid level read; downsample : level-0 px per output px;
    stride : output px between neighbouring patches; level_dimensions : the slide in output px (W, H).
    labels : (N,) int64 class per patch (-1 unknown) or None; region : (N,) int64 region per patch (-1 none) or
    None; region_boxes : (R, 4) int64 level-0 (x, y, w, h); region_count : (R,) int64 count of each region.
    layout : who wrote the file: ``pathoucc`` (patches stored), ``clam`` or ``trident`` (coordinates only).
    """

    path: Path
    coords: np.ndarray
    patch_size: int
    patch_level: int
    downsample: float
    stride: int
    level_dimensions: tuple[int, int]
    slide_path: str
    slide_dimensions: tuple[int, int]
    mpp: tuple[float, float] | None
    tissue_threshold: float = math.nan
    class_names: list[str] | None = None
    labels: np.ndarray | None = None
    region: np.ndarray | None = None
    region_boxes: np.ndarray | None = None
    region_count: np.ndarray | None = None
    layout: str = "pathoucc"

    @property
    def num_patches(self) -> int:
        return len(self.coords)

    def __len__(self) -> int:
        return self.num_patches

    @property
    def num_regions(self) -> int:
        return 0 if self.region_boxes is None else len(self.region_boxes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one patch: RGB, ``patch_size`` px square."""
        return 3, self.patch_size, self.patch_size

    @property
    def has_pixels(self) -> bool:
        """True when patches can be read as pixels (stored, or from the slide); False for feature vectors."""
        return True

    @property
    def stores_patches(self) -> bool:
        """True when the pixels are in the file (``pathoucc tile``), False when they are read from the slide."""
        return self.layout == "pathoucc"

    def read(self, index: PatchIndex) -> np.ndarray:
        """Patches ``index`` (int, slice or integer array, any order, repeats allowed) as ``(n, P, P, 3)`` uint8
        (a feature file: ``(n, D)`` float32).

        An index out of range is an ``IndexError``; a file that cannot be read (a corrupt chunk, a truncated or
        removed file, an unreadable slide) is a one-line :class:`PathouccError` naming it.
        """
        if isinstance(index, (int, np.integer)):
            index = np.array([int(index)], np.int64)
        elif not isinstance(index, slice):
            index = np.asarray(index, dtype=np.int64).ravel()
            n = self.num_patches
            if index.size and (index.min() < -n or index.max() >= n):
                raise IndexError(f"patch index out of range for {n} patches")
            index = index % max(n, 1)
        try:
            return self._read_pixels(index)
        except PathouccError:
            raise
        except _READ_ERRORS as exc:
            self.close()  # the next read starts from a fresh handle
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise PathouccError(f"cannot read patches ({type(exc).__name__}: {first}); the file is corrupt, "
                                "truncated or was removed", self.path) from None

    @abstractmethod
    def _read_pixels(self, index: slice | np.ndarray) -> np.ndarray:
        """Patches of a slice or of a non-negative int64 array (checked), ``(n, P, P, 3)`` uint8."""

    @abstractmethod
    def close(self) -> None:
        """Release the open file or slide (reopened on the next read)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
