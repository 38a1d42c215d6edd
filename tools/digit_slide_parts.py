"""Parts shared by the digit-slide generators (``make_digit_slide.py``): the MNIST / 8x8 digit sources, the
smooth random geometry of the blob layout, and the pixel renderer that writes a slide and its mask tile by tile."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from pyramid import pyramid_downsamples, write_pyramid_tiff  # tools/pyramid.py

from pathoucc.errors import PathouccError
from pathoucc.files import atomic_path

TISSUE = np.array([238, 176, 214], np.float32)  # pink eosin-like background
INK = np.array([88, 32, 128], np.float32)  # dark purple haematoxylin-like ink
DIGIT = 28


def jittered_seeds(rng: np.random.Generator, rows: int, cols: int, spacing: float) -> np.ndarray:
    """Points (x, y) in cell units about ``spacing`` apart: a grid jittered by up to 40 % of the spacing."""
    xs = np.arange(spacing / 2 - spacing, cols + spacing, spacing)
    ys = np.arange(spacing / 2 - spacing, rows + spacing, spacing)
    points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    return points + rng.uniform(-0.4, 0.4, points.shape) * spacing


def displacement(rng: np.random.Generator, rows: int, cols: int, scale: float, steepness: float = 0.45):
    """A smooth random map (x, y) -> (x, y) + d(x, y) that bends shapes without folding them.

    d varies over about ``scale`` cells and is scaled so that no partial derivative exceeds ``steepness``
    (bilinear interpolation keeps that bound between grid points). With the default 0.45 the Jacobian's
    determinant stays above 0.1: the map is one-to-one and neighbouring polygons bent by it never overlap."""
    from scipy import ndimage

    pad = int(np.ceil(2 * scale))
    field = rng.normal(size=(2, rows + 2 * pad, cols + 2 * pad))
    field = np.stack([ndimage.gaussian_filter(f, scale / 2, mode="wrap") for f in field])
    steepest = max(float(np.abs(np.diff(field, axis=a)).max()) for a in (1, 2))
    field *= steepness / max(steepest, 1e-9)

    def apply(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 2)
        at = [points[:, 1] + pad - 0.5, points[:, 0] + pad - 0.5]  # (row, col) in the field's grid
        d = np.stack([ndimage.map_coordinates(f, at, order=1, mode="nearest") for f in field], axis=1)
        return points + d

    return apply


class Renderer:
    """Pixels of any level of the digit slide, computed from the cell table (nothing is pre-rendered)."""

    def __init__(self, images: np.ndarray, index: np.ndarray, cell: int) -> None:
        self.images, self.index, self.cell = images, index, cell
        self.size = images.shape[1]  # 28 (centred in the cell), or the cell size (upscaled digits)
        self.off = (cell - self.size) // 2
        self._tables: dict[int, np.ndarray] = {}
        self._coarse: dict[int, np.ndarray] = {}

    def __call__(self, ds: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        cell = self.cell
        if cell % ds == 0:
            return self._fine(ds, x, y, w, h)
        if ds % cell == 0:
            return self._coarse_level(ds)[y:y + h, x:x + w]
        from PIL import Image  # uneven ratio: render level 0 and shrink

        full = self._fine(1, x * ds, y * ds, w * ds, h * ds)
        return np.asarray(Image.fromarray(full).resize((w, h), Image.Resampling.BOX))

    def _alpha(self, ds: int, picks: np.ndarray) -> np.ndarray:
        """Ink coverage (n, cell/ds, cell/ds) float32 in [0, 1] of training images ``picks`` at downsample ds."""
        cs = self.cell // ds
        if ds == 1:
            out = np.zeros((len(picks), cs, cs), np.float32)
            out[:, self.off:self.off + self.size, self.off:self.off + self.size] = self.images[picks] / 255.0
            return out
        if ds not in self._tables:  # every training image at this downsample, built 4096 images at a time
            table = np.empty((len(self.images), cs, cs), np.uint8)
            for a in range(0, len(self.images), 4096):
                padded = np.zeros((len(self.images[a:a + 4096]), self.cell, self.cell), np.float32)
                padded[:, self.off:self.off + self.size, self.off:self.off + self.size] = self.images[a:a + 4096]
                table[a:a + 4096] = np.rint(padded.reshape(-1, cs, ds, cs, ds).mean(axis=(2, 4)))
            self._tables[ds] = table
        return self._tables[ds][picks] / np.float32(255.0)

    def _fine(self, ds: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        cs = self.cell // ds
        c0, c1 = x // cs, (x + w - 1) // cs + 1
        r0, r1 = y // cs, (y + h - 1) // cs + 1
        idx = self.index[r0:r1, c0:c1]
        nr, nc = idx.shape
        alpha = self._alpha(ds, np.maximum(idx, 0).ravel()).reshape(nr, nc, cs, cs)
        alpha = alpha.transpose(0, 2, 1, 3).reshape(nr * cs, nc * cs, 1)
        rgb = TISSUE + (INK - TISSUE) * alpha
        white = np.repeat(np.repeat(idx < 0, cs, axis=0), cs, axis=1)
        rgb[white] = 255.0
        oy, ox = y - r0 * cs, x - c0 * cs
        return np.rint(rgb[oy:oy + h, ox:ox + w]).astype(np.uint8)

    def _coarse_level(self, ds: int) -> np.ndarray:
        """Whole level for ds >= cell: mean colour of each cell, box-averaged ds/cell cells per pixel."""
        if ds not in self._coarse:
            f = ds // self.cell
            coverage = self.images.reshape(len(self.images), -1).sum(axis=1) / (255.0 * self.cell**2)
            cell_rgb = TISSUE + (INK - TISSUE) * coverage[np.maximum(self.index, 0)][..., None].astype(np.float32)
            cell_rgb[self.index < 0] = 255.0
            h, w = self.index.shape[0] // f, self.index.shape[1] // f
            level = cell_rgb[:h * f, :w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3))
            self._coarse[ds] = np.rint(level).astype(np.uint8)
        return self._coarse[ds]


def training_digits(source: str, data_dir: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 white-on-black digits and (N,) labels of one MNIST split: ``train`` (the 50 000 training
    images, validation excluded), ``val`` (the other 10 000 training images) or ``test`` (the official 10 000 test
    images). ``digits`` has no split."""
    if source == "mnist":
        from pathoucc.data.mnist import load_mnist

        images, labels = load_mnist(data_dir)[split]
        return np.ascontiguousarray(images, np.uint8), np.asarray(labels, np.int64)
    if source == "digits":
        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        out = np.zeros((len(digits.images), DIGIT, DIGIT), np.uint8)
        for i, img in enumerate(digits.images):
            big = Image.fromarray(np.clip(img * 16, 0, 255).astype(np.uint8)).resize((24, 24), Image.BILINEAR)
            out[i, 2:26, 2:26] = np.asarray(big)
        return out, np.asarray(digits.target, np.int64)
    raise PathouccError(f"unknown digit source {source!r} (use mnist or digits)")


def write_slide_and_mask(out_path: Path, images: np.ndarray, picks: np.ndarray, classes: np.ndarray, margin: int,
                          cell: int, mpp: float, mask_downsample: int) -> None:
    """Write the pyramidal slide (``picks`` (rows, cols): image per cell, -1 white, inside a white margin of
    ``margin`` cells) and its ``<stem>_mask.png`` (class + 1 per cell, 0 outside)."""
    rows, cols = picks.shape
    index = np.full((rows + 2 * margin, cols + 2 * margin), -1, np.int64)
    index[margin:margin + rows, margin:margin + cols] = picks
    level0 = (index.shape[1] * cell, index.shape[0] * cell)
    write_pyramid_tiff(out_path, level0, Renderer(images, index, cell), mpp=mpp,
                       downsamples=pyramid_downsamples(level0))
    mask_values = np.zeros(index.shape, np.uint8)
    mask_values[margin:margin + rows, margin:margin + cols] = classes + 1
    write_png_cells(out_path.with_name(f"{out_path.stem}_mask.png"), mask_values, cell // mask_downsample)


def write_png_cells(path: Path, values: np.ndarray, px: int) -> None:
    """Write ``values`` (rows, cols) uint8 as a grayscale PNG with each value a ``px`` x ``px`` square, streaming."""
    height, width = values.shape[0] * px, values.shape[1] * px

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        comp = zlib.compressobj(6)
        for row in values:
            line = b"\x00" + np.repeat(row, px).tobytes()  # filter type 0 + one pixel row
            data = comp.compress(line * px)
            if data:
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", comp.flush()) + chunk(b"IEND", b""))
