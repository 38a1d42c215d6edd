"""Deep Zoom (DZI) pyramids: the slide's (OpenSlide's :class:`~openslide.deepzoom.DeepZoomGenerator`) and one per
cluster of the cluster map, whose image has one pixel per map cell and lies at the same slide coordinates.

DZI levels run from 0 (1 x 1 px) to ``max_level`` (full size); level ``L`` is the image shrunk by
``2 ** (max_level - L)`` (sizes rounded up) and cut into ``tile_size`` px tiles that overlap their neighbours by
``overlap`` px. A cluster tile is RGBA: the cluster's colour where the map (sampled at each pixel's centre) holds
that cluster, transparent elsewhere.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from pathoucc.errors import PathouccError

__all__ = ["OVERLAP", "TILE_SIZE", "ClusterPyramid", "DziGeometry", "SlidePyramid", "TileAddressError"]

TILE_SIZE = 254  # px: with a 1-px overlap on each side, tiles are at most 256 px
OVERLAP = 1
JPEG_QUALITY = 85
DZI_NS = "http://schemas.microsoft.com/deepzoom/2008"


class TileAddressError(ValueError):
    """A tile address (level, column, row) outside the pyramid."""


@dataclass(frozen=True)
class DziGeometry:
    """The levels and tiles of a DZI pyramid of a ``width`` x ``height`` px image."""

    width: int
    height: int
    tile_size: int = TILE_SIZE
    overlap: int = OVERLAP

    @property
    def max_level(self) -> int:
        return max(0, math.ceil(math.log2(max(self.width, self.height, 1))))

    def level_size(self, level: int) -> tuple[int, int]:
        """(w, h) px of ``level``."""
        d = 2 ** (self.max_level - level)
        return max(1, -(-self.width // d)), max(1, -(-self.height // d))

    def tiles(self, level: int) -> tuple[int, int]:
        """(columns, rows) of tiles at ``level``."""
        w, h = self.level_size(level)
        return -(-w // self.tile_size), -(-h // self.tile_size)

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) level px covered by a tile, overlap included; :class:`TileAddressError` if none."""
        if not 0 <= level <= self.max_level:
            raise TileAddressError(f"no level {level} (0..{self.max_level})")
        cols, rows = self.tiles(level)
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileAddressError(f"no tile {col}_{row} at level {level} ({cols} x {rows} tiles)")
        w, h = self.level_size(level)
        t, o = self.tile_size, self.overlap
        return (max(0, col * t - o), max(0, row * t - o), min(w, (col + 1) * t + o), min(h, (row + 1) * t + o))

    def num_tiles(self) -> int:
        return sum(math.prod(self.tiles(level)) for level in range(self.max_level + 1))

    def addresses(self) -> list[tuple[int, int, int]]:
        """Every (level, column, row), coarse levels first."""
        return [(level, c, r) for level in range(self.max_level + 1)
                for r in range(self.tiles(level)[1]) for c in range(self.tiles(level)[0])]

    def descriptor(self, url: str, fmt: str) -> dict:
        """The DZI descriptor as OpenSeadragon takes it inline (``{"Image": ...}``); tiles at ``url``L/C_R.fmt."""
        return {"Image": {"xmlns": DZI_NS, "Url": url, "Format": fmt, "Overlap": str(self.overlap),
                          "TileSize": str(self.tile_size), "Size": {"Width": str(self.width),
                                                                    "Height": str(self.height)}}}

    def xml(self, fmt: str) -> str:
        """The ``.dzi`` file."""
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Image xmlns="{DZI_NS}" Format="{fmt}" '
                f'Overlap="{self.overlap}" TileSize="{self.tile_size}"><Size Width="{self.width}" '
                f'Height="{self.height}"/></Image>\n')


class SlidePyramid:
    """The slide's DZI tiles as JPEG bytes, from OpenSlide's DeepZoomGenerator (level-0 origin, whole slide)."""

    fmt = "jpeg"

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._slide = openslide.open_slide(path)
        except (openslide.OpenSlideError, OSError) as exc:
            raise PathouccError(f"cannot open the slide ({exc})", path) from None
        self._dz = DeepZoomGenerator(self._slide, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)
        self.geometry = DziGeometry(*self._slide.dimensions)

    def tile(self, level: int, col: int, row: int) -> bytes:
        """JPEG bytes of one tile; :class:`TileAddressError` outside the pyramid, OSError if the slide fails."""
        self.geometry.tile_box(level, col, row)
        try:
            image = self._dz.get_tile(level, (col, row))
        except openslide.OpenSlideError as exc:
            raise OSError(f"cannot read the slide {self.path} ({exc})") from None
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()

    def close(self) -> None:
        self._slide.close()


class ClusterPyramid:
    """One cluster of a map as a DZI pyramid: one px per map cell, RGBA PNG tiles."""

    fmt = "png"

    def __init__(self, cluster_map: np.ndarray, cluster: int, color: np.ndarray) -> None:
        self._map = cluster_map
        self.cluster = cluster
        self._rgba = np.array([*np.asarray(color, np.uint8)[:3], 255], np.uint8)
        self.geometry = DziGeometry(cluster_map.shape[1], cluster_map.shape[0])

    def pixels(self, level: int, col: int, row: int) -> np.ndarray:
        """(h, w, 4) uint8 RGBA of one tile: each pixel shows the map cell under its centre."""
        x0, y0, x1, y1 = self.geometry.tile_box(level, col, row)
        d = 2 ** (self.geometry.max_level - level)
        h, w = self._map.shape
        xs = np.minimum(((np.arange(x0, x1) + 0.5) * d).astype(np.int64), w - 1)
        ys = np.minimum(((np.arange(y0, y1) + 0.5) * d).astype(np.int64), h - 1)
        mine = self._map[np.ix_(ys, xs)] == self.cluster
        out = np.zeros((*mine.shape, 4), np.uint8)
        out[mine] = self._rgba
        return out

    def tile(self, level: int, col: int, row: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(self.pixels(level, col, row), "RGBA").save(out, format="PNG", compress_level=3)
        return out.getvalue()
