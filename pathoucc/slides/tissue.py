"""Tissue detection on a low-resolution thumbnail: HSV saturation thresholded just above the glass, clean-up, holes.

The threshold sits between the glass mode and the tissue modes of the saturation histogram
(:func:`glass_threshold`), not at Otsu's split: on a pale or faded slide Otsu separates the dark ink (nuclei,
> 0.22) from the pale tissue (0.10-0.15) and loses the tissue, while glass (~0.03) is still far below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pathoucc.errors import PathouccError
from pathoucc.files import atomic_path
from pathoucc.slides.boxsum import box_sums, integral_image
from pathoucc.slides.reader import Slide

__all__ = [
    "GLASS_MAX", "MIN_HOLE_AREA", "TissueMask", "detect_tissue", "fill_small_holes", "glass_threshold",
    "otsu_threshold", "saturation", "save_mask_png", "tissue_fraction", "tissue_fractions", "tissue_mask_from_rgb",
]

MIN_HOLE_AREA = 2048.0
"""Default hole threshold in level-0 px²: holes of at least this area stay background.

2048 px² is a 45 x 45 px square, 1/32 of a 256 x 256 patch (about 11 x 11 µm at 0.25 µm/px,
23 x 23 µm at 0.5 µm/px): gland lumina, fat cells and glass keep out of the mask, while specks the size of
a vacuole are filled. On a large slide the thumbnail's own closing (``close`` px) already fills anything smaller.
"""

GLASS_MAX = 0.06
"""Highest saturation of a glass mode: glass and scanner background are near-grey (~0.0-0.04)."""
_MARGIN, _WINDOW = 0.02, 0.10  # the threshold lies this far (at least, at most) above the glass mode


@dataclass
class TissueMask:
    """Boolean tissue mask ``mask`` (h, w) of a slide; ``downsample`` = (sx, sy) level-0 pixels per mask pixel."""

    mask: np.ndarray
    downsample: tuple[float, float]
    threshold: float = float("nan")
    _integral: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean())


def detect_tissue(slide: Slide, *, max_size: int = 2048, min_saturation: float = 0.05, smooth: int = 5,
                  close: int = 2, min_area: float = 1e-4, min_hole_area: float = MIN_HOLE_AREA) -> TissueMask:
    """Find tissue on a thumbnail of ``slide`` whose longer side is at most ``max_size`` px.

    See :func:`tissue_mask_from_rgb` for the steps and parameters. Raises :class:`PathouccError` (naming the
    slide) if no tissue is found.
    """
    rgb = slide.thumbnail(max_size)
    h, w = rgb.shape[:2]
    W, H = slide.dimensions
    return tissue_mask_from_rgb(rgb, (W / w, H / h), min_saturation=min_saturation, smooth=smooth, close=close,
                                min_area=min_area, min_hole_area=min_hole_area, source=slide.path)


def tissue_mask_from_rgb(rgb: np.ndarray, downsample: tuple[float, float] = (1.0, 1.0), *,
                         min_saturation: float = 0.05, smooth: int = 5, close: int = 2, min_area: float = 1e-4,
                         min_hole_area: float = MIN_HOLE_AREA, source: str | Path | None = None) -> TissueMask:
    """Tissue mask of an (h, w, 3) uint8 image whose pixels each cover ``downsample`` = (sx, sy) level-0 px.

    Saturation (0..1) is median-filtered over ``smooth`` px and thresholded at ``max(glass_threshold,
    min_saturation)`` (:func:`glass_threshold`: just above the glass mode); the mask is closed and opened with
    a ``close``-px disk. Holes (background components enclosed by tissue)
    of at least ``min_hole_area`` level-0 px² stay background (glass, fat, lumina, as CLAM's hole filter
    does); smaller ones are filled as specks. ``min_hole_area=0`` keeps every hole, ``inf`` fills them all.
    Tissue fragments smaller than ``min_area`` of the image (their kept holes not counted) are dropped.
    Raises :class:`PathouccError` (naming ``source``) if no tissue is found.
    """
    h, w = rgb.shape[:2]
    sx, sy = downsample
    sat = saturation(rgb)
    if smooth > 1:
        sat = ndimage.median_filter(sat, size=smooth, mode="nearest")
    threshold = max(glass_threshold(sat), min_saturation)
    mask = sat > threshold
    if close > 0 and mask.any():
        disk = _disk(close)
        pad = close + 1
        mask = ndimage.binary_closing(np.pad(mask, pad), structure=disk)[pad:-pad, pad:-pad]
        mask = ndimage.binary_opening(mask, structure=disk)
    mask = fill_small_holes(mask, min_hole_area / (sx * sy))
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= max(1.0, min_area * h * w)
        keep[0] = False
        mask = keep[labels]
    if not mask.any():
        p50, p99, top = np.percentile(sat, [50, 99, 100])
        raise PathouccError(f"no tissue found: the thumbnail's saturation has median {p50:.3f}, 99th percentile "
                            f"{p99:.3f} and maximum {top:.3f}, and tissue needs more than {threshold:.3f} over "
                            f"{max(1.0, min_area * h * w):.0f} thumbnail px; check the file or use "
                            "--tissue-threshold 0 to keep every patch", source)
    return TissueMask(mask, (float(sx), float(sy)), float(threshold))


def fill_small_holes(mask: np.ndarray, max_hole: float) -> np.ndarray:
    """Fill the holes of boolean ``mask`` (h, w) smaller than ``max_hole`` pixels; larger holes stay False.

    A hole is a 4-connected False component not connected to the image border.
    """
    filled = ndimage.binary_fill_holes(mask)
    if not max_hole > 0:
        return mask.copy()
    holes, n = ndimage.label(filled & ~mask)
    if n == 0 or not np.isfinite(max_hole):
        return filled
    big = np.bincount(holes.ravel(), minlength=n + 1) >= max_hole
    big[0] = False
    return filled & ~big[holes]


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an (h, w, 3) uint8 image, as float32."""
    rgb = rgb.astype(np.float32)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0).astype(np.float32)


def glass_threshold(sat: np.ndarray, bins: int = 256) -> float:
    """Saturation threshold just above the glass: the emptiest level between the glass and the tissue modes.

    Modes are local maxima of the (5-bin smoothed) histogram holding at least 0.5 % of the pixels. The glass
    mode is the highest one at or below :data:`GLASS_MAX` (glass, lumina and clear fluid); the threshold is the
    middle of the first run of least-populated bins from 0.02 above it up to the main tissue mode (the largest
    one above), at most 0.10 above the glass. Glass covering only a corner of the slide still has its mode;
    without a glass mode (tissue everywhere) the threshold is :data:`GLASS_MAX`.
    """
    hist = np.histogram(sat, bins=bins, range=(0.0, 1.0))[0].astype(np.float64)
    smooth = np.convolve(hist, np.ones(5) / 5, mode="same")
    centres = (np.arange(bins) + 0.5) / bins
    padded = np.concatenate([[-1.0], smooth, [-1.0]])
    peaks = np.flatnonzero((smooth >= padded[:-2]) & (smooth >= padded[2:]) & (smooth > 0)
                           & (np.convolve(hist, np.ones(5), mode="same") >= 0.005 * hist.sum()))
    glass = peaks[centres[peaks] <= GLASS_MAX]
    if not len(glass):
        return GLASS_MAX
    g = int(glass[-1])
    lo = g + max(1, round(_MARGIN * bins))
    hi = min(g + round(_WINDOW * bins), bins - 1)
    tissue = peaks[peaks >= lo]
    if len(tissue):
        hi = min(hi, int(tissue[np.argmax(smooth[tissue])]))
    if hi <= lo:
        return float(centres[lo])
    window = smooth[lo:hi + 1]
    least = np.flatnonzero(window <= window.min() + 1e-9)
    run = least[: int(np.argmax(np.diff(np.append(least, least[-1] + 2)) > 1)) + 1]  # first run of minima
    return float(centres[lo + int(run[len(run) // 2])])


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in [0, 1] (maximises the between-class variance of a 256-bin histogram)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))  # a plateau over empty bins: take its middle
    return float(edges[int(best[len(best) // 2]) + 1])


def tissue_fractions(tissue: TissueMask, boxes: np.ndarray) -> np.ndarray:
    """Tissue fraction of each level-0 box ``(x, y, w, h)`` in ``boxes`` (N, 4) -> (N,) float64 in [0, 1]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    mask = tissue.mask
    sx, sy = tissue.downsample
    if tissue._integral is None or tissue._integral.shape != (mask.shape[0] + 1, mask.shape[1] + 1):
        tissue._integral = integral_image(mask)
    x0 = np.clip(np.floor(boxes[:, 0] / sx), 0, mask.shape[1]).astype(np.int64)
    y0 = np.clip(np.floor(boxes[:, 1] / sy), 0, mask.shape[0]).astype(np.int64)
    x1 = np.clip(np.ceil((boxes[:, 0] + boxes[:, 2]) / sx), 0, mask.shape[1]).astype(np.int64)
    y1 = np.clip(np.ceil((boxes[:, 1] + boxes[:, 3]) / sy), 0, mask.shape[0]).astype(np.int64)
    area = (x1 - x0) * (y1 - y0)
    inside = box_sums(tissue._integral, x0, y0, x1, y1)
    return np.where(area > 0, inside / np.maximum(area, 1), 0.0)


def tissue_fraction(tissue: TissueMask, box: tuple[float, float, float, float]) -> float:
    """Tissue fraction of one level-0 box ``(x, y, w, h)``."""
    return float(tissue_fractions(tissue, np.asarray([box]))[0])


def save_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """Save a boolean mask as an 8-bit PNG (255 = tissue), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(tmp, format="PNG")
    return path


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx**2 + yy**2 <= radius**2
