"""Drawing cluster maps: colours, the map as an image, and the map blended over a slide picture with a legend.

A map is ``(H, W)`` int (cluster per cell, -1 = no patch) whose cell ``(r, c)`` covers level-0 pixels
``[c * cell, (c + 1) * cell) x [r * cell, (r + 1) * cell)``.
"""

from __future__ import annotations

import colorsys
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pathoucc.files import atomic_path
from pathoucc.slides.patchfile import PatchFile

__all__ = ["QUPATH_COLORS", "cluster_colors", "map_image", "map_on_image", "name_color", "name_colors", "patch_mosaic",
           "save_overlay", "save_png"]

BACKGROUND = (255, 255, 255)
# QuPath's default classes keep QuPath's own colours (PathClassFactory), so imported outputs look familiar
QUPATH_COLORS = {"tumor": (200, 0, 0), "tumour": (200, 0, 0), "stroma": (150, 200, 150),
                 "immune cells": (160, 90, 160), "necrosis": (50, 50, 50), "other": (255, 200, 0),
                 "region*": (0, 0, 180), "ignore*": (180, 180, 180), "positive": (200, 50, 50),
                 "negative": (112, 112, 225)}
_UNNAMED = re.compile(r"cluster (\d+)")


def cluster_colors(k: int) -> np.ndarray:
    """``(k, 3)`` uint8 distinct colours: matplotlib's tab10 / tab20, then evenly spaced hues."""
    from matplotlib import colormaps  # matplotlib is heavy: imported on use

    if k <= 10:
        rgb = colormaps["tab10"].colors[:k]
    elif k <= 20:
        rgb = colormaps["tab20"].colors[:k]
    else:
        rgb = colormaps["hsv"](np.linspace(0, 1, k, endpoint=False))[:, :3]
    return np.rint(np.asarray(rgb, np.float64) * 255).astype(np.uint8)


def name_color(name: str) -> tuple[int, int, int]:
    """The colour of a cluster named ``name``, the same on every slide and in every run: QuPath's colour for its
    default classes, tab10 colour ``c`` for an unnamed ``cluster c`` (c < 10; its light tab20 shade for
    c < 20), else a hue from a hash of the name (saturation 0.65, value 0.85)."""
    if name.lower() in QUPATH_COLORS:
        return QUPATH_COLORS[name.lower()]
    unnamed = _UNNAMED.fullmatch(name)
    if unnamed and int(unnamed.group(1)) < 20:
        c = int(unnamed.group(1))  # tab10, then tab20's light shades of it
        r, g, b = (int(v) for v in (cluster_colors(10)[c] if c < 10 else cluster_colors(20)[2 * (c - 10) + 1]))
        return r, g, b
    hue = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") / 2**32
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.85)
    return round(r * 255), round(g * 255), round(b * 255)


def name_colors(names: Sequence[str]) -> np.ndarray:
    """``(k, 3)`` uint8: :func:`name_color` of each cluster name."""
    return np.asarray([name_color(n) for n in names], np.uint8).reshape(-1, 3)


def map_image(cluster_map: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8: each cell in its cluster's colour, white where there is no patch."""
    out = np.empty((*cluster_map.shape, 3), np.uint8)
    out[:] = BACKGROUND
    known = cluster_map >= 0
    out[known] = colors[cluster_map[known]]
    return out


def map_on_image(cluster_map: np.ndarray, cell: float, image: np.ndarray, image_downsample: tuple[float, float],
                 colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the map over ``image`` (h, w, 3) uint8 whose pixel is ``image_downsample`` = (sx, sy) level-0 px.

    Each image pixel takes the cell under its centre (nearest neighbour); pixels without a patch stay as is.
    """
    h, w = image.shape[:2]
    sx, sy = image_downsample
    cols = np.floor((np.arange(w) + 0.5) * sx / cell).astype(np.int64)
    rows = np.floor((np.arange(h) + 0.5) * sy / cell).astype(np.int64)
    inside_c, inside_r = cols < cluster_map.shape[1], rows < cluster_map.shape[0]
    under = np.full((h, w), -1, np.int64)
    under[np.ix_(inside_r, inside_c)] = cluster_map[np.ix_(rows[inside_r], cols[inside_c])]
    out = image.astype(np.float32)
    known = under >= 0
    out[known] = (1 - alpha) * out[known] + alpha * colors[under[known]].astype(np.float32)
    return np.rint(out).astype(np.uint8)


def patch_mosaic(tiles: PatchFile, size: tuple[int, int], batch_size: int = 256) -> np.ndarray:
    """A picture of the slide (w, h) = ``size`` px made of the tile file's own patches (white elsewhere).

    Used when the slide file is no longer there. Patches are read ``batch_size`` at a time.
    """
    w, h = size
    sx, sy = tiles.slide_dimensions[0] / w, tiles.slide_dimensions[1] / h
    extent = tiles.patch_size * tiles.downsample
    out = np.full((h, w, 3), 255, np.uint8)
    for a in range(0, tiles.num_patches, batch_size):
        patches = tiles.read(slice(a, a + batch_size))
        for (x, y), patch in zip(tiles.coords[a:a + batch_size], patches, strict=True):
            x0, y0 = round(x / sx), round(y / sy)
            x1, y1 = max(x0 + 1, round((x + extent) / sx)), max(y0 + 1, round((y + extent) / sy))
            x1, y1 = min(x1, w), min(y1, h)
            if x1 > x0 and y1 > y0:
                out[y0:y1, x0:x1] = np.asarray(Image.fromarray(patch).resize((x1 - x0, y1 - y0),
                                                                            Image.Resampling.BOX))
    return out


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (h, w, 3) uint8 image as PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def save_overlay(path: str | Path, image: np.ndarray, colors: np.ndarray, names: Sequence[str],
                 title: str = "") -> None:
    """Save ``image`` (the blended overlay) at its own resolution with a legend of ``names`` on the right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: imported on use
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    h, w = image.shape[:2]
    dpi = 100
    legend_w = 1.0 + 0.07 * max(len(n) for n in names)
    fig = Figure(figsize=(w / dpi + legend_w, max(h / dpi, 0.3 * len(names) + 0.8)), dpi=dpi)
    FigureCanvasAgg(fig)
    fw, fh = fig.get_size_inches()
    ax = fig.add_axes((0, 1 - h / dpi / fh, w / dpi / fw, h / dpi / fh))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    handles = [Patch(facecolor=np.asarray(c) / 255, edgecolor="black", label=n)
               for c, n in zip(colors, names, strict=True)]
    fig.legend(handles=handles, loc="upper right", frameon=False, fontsize=8, title=title or None,
               title_fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
