"""Box sums over a boolean raster through an integral image (summed-area table), for masks and label rasters."""

from __future__ import annotations

import numpy as np

__all__ = ["box_sums", "integral_image"]


def integral_image(mask: np.ndarray, out: np.ndarray | None = None, dtype: type = np.int64) -> np.ndarray:
    """Summed-area table (h + 1, w + 1) of ``mask`` (h, w): ``out[y, x]`` = number of True pixels above-left.

    ``out`` (h + 1, w + 1) is reused when given (its first row and column must be zero), so a loop over
    classes needs one buffer; else a new ``dtype`` array is made.
    """
    h, w = mask.shape
    if out is None:
        out = np.zeros((h + 1, w + 1), dtype)
    np.cumsum(mask, axis=0, out=out[1:, 1:])
    np.cumsum(out[1:, 1:], axis=1, out=out[1:, 1:])
    return out


def box_sums(integral: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """True pixels in each raster box ``[x0, x1) x [y0, y1)`` (int arrays of equal shape, clipped by the caller)."""
    return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
