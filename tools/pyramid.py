"""Write pyramidal tiled TIFFs that OpenSlide opens as ``generic-tiff``, streaming tile by tile.

Each level is a separate TIFF page (level 0 first, then 2x, 4x, ... reductions), tiled and deflate-compressed,
with the resolution stored in pixels per centimetre so OpenSlide reports ``openslide.mpp-x/y``.

For tests and tools (not part of the package); needs ``tifffile`` (the ``test`` extra: ``pip install -e .[test]``).
Tools import it as ``from pyramid import ...`` with ``tools/`` on ``sys.path``, as ``tests/slide_fixtures.py`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from pathoucc.files import atomic_path

__all__ = ["pyramid_downsamples", "write_array_pyramid", "write_pyramid_tiff"]

RenderFn = Callable[[int, int, int, int, int], np.ndarray]
"""``render(downsample, x, y, width, height) -> (height, width, 3) uint8`` pixels of the level with that downsample."""


def pyramid_downsamples(size: tuple[int, int], tile: int = 256) -> list[int]:
    """Downsamples 1, 2, 4, ... until the level fits in one ``tile`` (the level-0 size is ``(W, H)``)."""
    out = [1]
    while max(size) // out[-1] > tile:
        out.append(out[-1] * 2)
    return out


def write_pyramid_tiff(path: str | Path, size: tuple[int, int], render: RenderFn, *, mpp: float | None = 0.5,
                       tile: int = 256, downsamples: list[int] | None = None, compression: str = "zlib") -> Path:
    """Write a pyramidal TIFF of level-0 ``size`` = (W, H) whose pixels come from ``render``, atomically.

    Only one tile per level is in memory at a time (``render`` is called once per tile, in row-major order).
    Level ``k`` has size ``(W // d, H // d)`` for ``d = downsamples[k]``.
    """
    path = Path(path)
    downsamples = downsamples or pyramid_downsamples(size, tile)
    raw_bytes = size[0] * size[1] * 3 * 4 // 3
    kwargs = {}
    if mpp:
        kwargs = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=raw_bytes > 2**31) as tw:
        for k, d in enumerate(downsamples):
            w, h = size[0] // d, size[1] // d
            if min(w, h) < 1:
                break
            tw.write(_tiles(render, d, w, h, tile), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression=compression, subfiletype=0 if k == 0 else 1,
                     metadata=None, software="pathoucc", **kwargs)
    return path


def write_array_pyramid(path: str | Path, image: np.ndarray, *, mpp: float | None = 0.5, tile: int = 256) -> Path:
    """Write an in-memory (H, W, 3) uint8 image as a pyramidal TIFF (levels made by box-filter reduction)."""
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    h0, w0 = image.shape[:2]
    levels: dict[int, np.ndarray] = {1: image}

    def render(d: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if d not in levels:
            levels[d] = np.asarray(Image.fromarray(image).resize((w0 // d, h0 // d), Image.Resampling.BOX))
        return levels[d][y:y + h, x:x + w]

    return write_pyramid_tiff(path, (w0, h0), render, mpp=mpp, tile=tile)


def _tiles(render: RenderFn, d: int, w: int, h: int, tile: int) -> Iterator[np.ndarray]:
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            tw, th = min(tile, w - x), min(tile, h - y)
            pixels = np.asarray(render(d, x, y, tw, th), dtype=np.uint8)
            if pixels.shape != (th, tw, 3):
                raise ValueError(f"render returned {pixels.shape}, expected {(th, tw, 3)}")
            if (tw, th) != (tile, tile):
                full = np.full((tile, tile, 3), 255, np.uint8)
                full[:th, :tw] = pixels
                pixels = full
            yield pixels
