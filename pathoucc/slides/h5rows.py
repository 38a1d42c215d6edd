"""Rows of an (N, D) HDF5 dataset read fast, in any order: :class:`RawRows` reads uncompressed chunks of whole rows
straight from the file at their byte offsets; :func:`read_h5_rows` reads runs of nearby rows through h5py (any
layout, compressed too)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

__all__ = ["RawRows", "read_h5_rows"]


class RawRows:
    """The rows of an uncompressed HDF5 dataset read with ``os.pread`` at their chunks' byte offsets (found once),
    bypassing HDF5's per-chunk lookup (about 30 us a row for TRIDENT's one-row chunks, a few us with a pread). Nothing
    is mapped, so the rows read never count in the process's memory."""

    def __init__(self, path: Path, offsets: np.ndarray, rows_per_chunk: int, dtype: np.dtype, dim: int) -> None:
        self.offsets, self.rows_per_chunk, self.dtype, self.dim = offsets, rows_per_chunk, dtype, dim
        self.row_bytes = dtype.itemsize * dim
        self.fd = os.open(path, os.O_RDONLY)

    @classmethod
    def of(cls, ds: h5py.Dataset, path: Path) -> RawRows | None:
        """The reader of ``ds`` (N, D), or None unless it is unfiltered with chunks of whole rows, all written."""
        if ds.ndim != 2 or ds.id.get_create_plist().get_nfilters() or ds.dtype.kind != "f" or ds.external:
            return None
        n, dim = ds.shape
        if ds.chunks is None:
            offset = ds.id.get_offset()
            return None if offset is None else cls(path, np.array([offset], np.int64), max(n, 1), ds.dtype, dim)
        if ds.chunks[1] != dim:
            return None
        rpc = ds.chunks[0]
        offsets = np.full(-(-n // rpc), -1, np.int64)

        def note(info) -> None:
            offsets[info.chunk_offset[0] // rpc] = info.byte_offset

        try:
            ds.id.chunk_iter(note)
        except (AttributeError, RuntimeError, ValueError):  # an HDF5 without chunk iteration
            return None
        return None if (offsets < 0).any() else cls(path, offsets, rpc, ds.dtype, dim)

    def read(self, unique: np.ndarray) -> np.ndarray:
        """Rows ``unique`` (sorted, distinct) as ``(n, D)`` in the file's dtype."""
        rb, rpc = self.row_bytes, self.rows_per_chunk
        chunk = unique // rpc
        if rpc == 1:
            buf = b"".join([os.pread(self.fd, rb, off) for off in self.offsets[chunk].tolist()])
            return np.frombuffer(buf, self.dtype).reshape(len(unique), self.dim)
        out = np.empty((len(unique), self.dim), self.dtype)
        starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(unique)], strict=True):
            first = int(chunk[a]) * rpc
            lo, hi = int(unique[a]) - first, int(unique[b - 1]) - first + 1
            block = np.frombuffer(os.pread(self.fd, (hi - lo) * rb, int(self.offsets[chunk[a]]) + lo * rb),
                                  self.dtype).reshape(hi - lo, self.dim)
            out[a:b] = block[unique[a:b] - first - lo]
        return out

    def close(self) -> None:
        os.close(self.fd)


def read_h5_rows(data: h5py.Dataset, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` (any order, repeats) of an HDF5 dataset: each run of nearby rows is one slice read."""
    if not index.size:
        return np.zeros((0, data.shape[1]), np.float32)
    unique, inverse = np.unique(index, return_inverse=True)
    breaks = np.flatnonzero(np.diff(unique) > 8) + 1  # a gap of up to 8 rows is read through
    out = np.empty((len(unique), data.shape[1]), np.float32)
    for run in np.split(np.arange(len(unique)), breaks):
        lo, hi = int(unique[run[0]]), int(unique[run[-1]]) + 1
        out[run] = np.asarray(data[lo:hi], np.float32)[unique[run] - lo]
    return out[inverse.ravel()]
