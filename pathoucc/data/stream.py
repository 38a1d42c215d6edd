"""Instances read from HDF5 tile files on demand, so a cohort larger than memory trains and evaluates.

A :class:`StreamingPool` holds only each patch's file, label and region; :meth:`StreamingPool.read` reads the
patches of a step from their files (one read of sorted unique indices per file, then put back in the asked order).
Each process opens its own file handles on first use, so DataLoader workers forked from the main process never
share an HDF5 handle. A file that disappears or turns out corrupt is a one-line :class:`PathouccError` naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pathoucc.errors import PathouccError
from pathoucc.slides.patchfile import PatchFile
from pathoucc.slides.tilefile import open_tiles

__all__ = ["StreamingPool"]


class StreamingPool:
    """The patches of several tile files as one pool, read on demand (a :class:`~pathoucc.data.pool.Pool`).

    paths : the tile files; sizes : patches per file; rows : (N,) the global patch number (file after file) of
    each instance of the pool; labels, region, region_count : as in ``InstancePool``.
    """

    def __init__(self, paths: list[str | Path], sizes: list[int], patch_size: int, labels: np.ndarray,
                 region: np.ndarray | None = None, region_count: np.ndarray | None = None,
                 rows: np.ndarray | None = None, slide_dir: str | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.sizes = [int(n) for n in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.rows = np.arange(self.offsets[-1], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.patch_size, self.slide_dir = int(patch_size), slide_dir
        self.labels, self.region, self.region_count = labels, region, region_count
        if len(self.labels) != len(self.rows):
            raise ValueError("labels and rows differ in length")
        self._files: dict[int, PatchFile] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one instance."""
        return 3, self.patch_size, self.patch_size

    @property
    def num_classes(self) -> int:
        """Distinct known labels."""
        return len(np.unique(self.labels[self.labels >= 0]))

    def subset(self, member: np.ndarray, region: np.ndarray | None, region_count: np.ndarray | None) -> StreamingPool:
        """The instances where ``member`` is True, with new region indices and counts (nothing is read)."""
        return StreamingPool(self.paths, self.sizes, self.patch_size, self.labels[member], region, region_count,
                             self.rows[member], self.slide_dir)

    def _file(self, i: int) -> PatchFile:
        if self._pid != os.getpid():  # a forked worker: never reuse the parent's handles
            self._files, self._pid = {}, os.getpid()
        if i not in self._files:
            self._files[i] = open_tiles(self.paths[i], self.slide_dir)
        return self._files[i]

    def read(self, index: np.ndarray | slice) -> np.ndarray:
        """Instances ``index`` (any order, repeats allowed) as ``(n, P, P, 3)`` uint8, read from their files."""
        rows = self.rows[index]
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        out = np.empty((len(rows), self.patch_size, self.patch_size, 3), np.uint8)
        for i in np.unique(which).tolist():
            sel = np.flatnonzero(which == i)
            try:
                out[sel] = self._file(i).read(rows[sel] - self.offsets[i])
            except PathouccError:  # names the file; the next read reopens it
                self._files.pop(i, None)
                raise
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self) -> dict:  # picklable (spawned workers): handles are reopened on use
        state = self.__dict__.copy()
        state["_files"] = {}
        return state
