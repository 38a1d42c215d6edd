"""The geometry of a cluster map: which map cells each patch of a tile file covers.

With overlapping patches (stride < patch size) the map is finer than the patch grid: a cell of
``gcd(patch size, stride)`` output pixels averages the soft assignments of every patch covering it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pathoucc.slides.patchfile import PatchFile

__all__ = ["MAX_MAP_VALUES", "MapGrid", "accumulate_map", "map_grid"]

MAX_MAP_VALUES = 2**25  # map cells x clusters accumulated at most (128 MiB float32); coarser cells beyond


@dataclass(frozen=True)
class MapGrid:
    """Geometry of a map: ``shape`` (H, W) cells of ``cell`` level-0 px from level-0 (0, 0); each patch
    covers ``span`` x ``span`` cells from cell (row, col) = round((y, x) / cell)."""

    shape: tuple[int, int]
    cell: float
    span: int

    def patch_cells(self, coords: np.ndarray) -> np.ndarray:
        """(N, 2) int64 (row, col) of the top-left cell of patches at level-0 ``coords`` (N, 2) (x, y)."""
        return np.rint(np.asarray(coords, np.float64)[:, ::-1] / self.cell).astype(np.int64)

    def cell_coords(self) -> np.ndarray:
        """(H * W, 2) level-0 (x, y) of the top-left of every cell, row-major."""
        r, c = np.divmod(np.arange(self.shape[0] * self.shape[1]), self.shape[1])
        return np.stack([c * self.cell, r * self.cell], 1)


def map_grid(tiles: PatchFile, k: int) -> MapGrid:
    """The finest grid on which the tile file's patches (size P, stride S) tile exactly: cells of gcd(P, S)
    output pixels (= S when S divides P), unless that needs more than ``MAX_MAP_VALUES`` accumulators."""
    p, s = tiles.patch_size, tiles.stride
    w, h = tiles.level_dimensions
    for g in (math.gcd(p, s), s):
        shape = (math.ceil(h / g), math.ceil(w / g))
        if shape[0] * shape[1] * k <= MAX_MAP_VALUES or g == s:
            return MapGrid(shape, g * tiles.downsample, max(1, round(p / g)))
    raise AssertionError("unreachable")


def accumulate_map(cells: np.ndarray, values: np.ndarray, grid: MapGrid) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``values`` (N, K) of patches at top-left ``cells`` (N, 2) over the ``span`` x ``span`` cells each covers.

    Returns ``(sums (H, W, K) float32, counts (H, W) int32)``.
    """
    h, w = grid.shape
    k = values.shape[1]
    sums = np.zeros((h * w, k), np.float32)
    counts = np.zeros(h * w, np.int32)
    for dr in range(grid.span):
        for dc in range(grid.span):
            r, c = cells[:, 0] + dr, cells[:, 1] + dc
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            flat = r[ok] * w + c[ok]
            np.add.at(sums, flat, values[ok])
            np.add.at(counts, flat, 1)
    return sums.reshape(h, w, k), counts.reshape(h, w)
