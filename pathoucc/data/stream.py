"""Instances read from per-slide files on demand (tile files' patches, or feature files' rows), so a cohort larger
than memory trains and evaluates.

A :class:`StreamingPool` holds only each patch's file, label and region; :meth:`StreamingPool.read` reads the
patches of a step from their files (one read of sorted unique indices per file, then put back in the asked order).
Each process opens its own file handles on first use, so DataLoader workers forked from the main process never
share an HDF5 handle. A file that disappears or turns out corrupt is a one-line :class:`PathouccError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pathoucc.errors import PathouccError
from pathoucc.slides.patchfile import PatchFile
from pathoucc.slides.tilefile import open_tiles

__all__ = ["StreamingPool"]


class StreamingPool:
    """The instances of several tile (or feature) files as one pool, read on demand (a
    :class:`~pathoucc.data.pool.Pool`).

    paths : the files (anything :func:`~pathoucc.slides.tilefile.open_tiles` opens); sizes : instances per file;
    rows : (N,) the global instance number (file after file) of each instance of the pool; labels, region,
    region_count : as in ``InstancePool``; shape : of one instance (default RGB patches ``(3, P, P)``; ``(D,)``
    for feature files); opener : opens file ``paths[i]`` (default ``open_tiles(path, slide_dir)``).
    """

    def __init__(self, paths: list[str | Path], sizes: list[int], patch_size: int, labels: np.ndarray,
                 region: np.ndarray | None = None, region_count: np.ndarray | None = None,
                 rows: np.ndarray | None = None, slide_dir: str | None = None,
                 shape: tuple[int, ...] | None = None, opener: Callable[[Path], PatchFile] | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.sizes = [int(n) for n in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.rows = np.arange(self.offsets[-1], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.patch_size, self.slide_dir = int(patch_size), slide_dir
        self._shape = (3, self.patch_size, self.patch_size) if shape is None else tuple(int(v) for v in shape)
        self.opener = opener
        self.labels, self.region, self.region_count = labels, region, region_count
        if len(self.labels) != len(self.rows):
            raise ValueError("labels and rows differ in length")
        self._files: dict[int, PatchFile] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        """(C, H, W) of one patch, or (D,) of one feature vector."""
        return self._shape

    @property
    def num_classes(self) -> int:
        """Distinct known labels."""
        return len(np.unique(self.labels[self.labels >= 0]))

    def subset(self, member: np.ndarray, region: np.ndarray | None, region_count: np.ndarray | None) -> StreamingPool:
        """The instances where ``member`` is True, with new region indices and counts (nothing is read)."""
        return StreamingPool(self.paths, self.sizes, self.patch_size, self.labels[member], region, region_count,
                             self.rows[member], self.slide_dir, self._shape, self.opener)

    def _file(self, i: int) -> PatchFile:
        if self._pid != os.getpid():  # a forked worker: never reuse the parent's handles
            self._files, self._pid = {}, os.getpid()
        if i not in self._files:
            path = self.paths[i]
            self._files[i] = open_tiles(path, self.slide_dir) if self.opener is None else self.opener(path)
        return self._files[i]

    def read(self, index: np.ndarray | slice) -> np.ndarray:
        """Instances ``index`` (any order, repeats allowed) as ``(n, P, P, 3)`` uint8 (or ``(n, D)`` float32),
        read from their files."""
        rows = self.rows[index]
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        out: np.ndarray | None = None
        for i in np.unique(which).tolist():
            sel = np.flatnonzero(which == i)
            try:
                part = self._file(i).read(rows[sel] - self.offsets[i])
            except PathouccError:  # names the file; the next read reopens it
                self._files.pop(i, None)
                raise
            if out is None:
                out = np.empty((len(rows), *part.shape[1:]), part.dtype)
            out[sel] = part
        if out is None:  # nothing asked
            return np.zeros((0, *self._read_shape()), np.float32 if len(self._shape) == 1 else np.uint8)
        return out

    def _read_shape(self) -> tuple[int, ...]:
        return self._shape if len(self._shape) == 1 else (*self._shape[1:], self._shape[0])

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self) -> dict:  # picklable (spawned workers): handles are reopened on use
        state = self.__dict__.copy()
        state["_files"] = {}
        return state
