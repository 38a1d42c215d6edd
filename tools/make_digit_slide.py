"""Make a synthetic whole-slide image with a known answer: a grid of MNIST digits on pink "tissue".

Every grid cell (``cell`` px square at level 0) holds one training digit, drawn as dark purple ink on pink, centred;
a white margin of ``margin_cells`` cells (default: one region) surrounds the grid. The grid is divided into
regions of ``region_cells`` x ``region_cells`` cells; each region's digits come from ``k`` distinct classes,
``k`` drawn uniformly from ``ucc_range``, and every one of the ``k`` classes appears at least once.

Outputs, next to each other:

* ``<name>.tif``: pyramidal tiled TIFF (levels 1, 2, 4, ... as separate pages, deflate, 256-px tiles) with the
  resolution tags set, so OpenSlide opens it as ``generic-tiff`` with ``mpp`` levels. Written tile by tile.
* ``<name>_mask.png``: ground-truth label mask, pixel = digit class + 1 over the digit's whole cell, 0 = margin,
  at ``mask_downsample`` (level-0 pixels per mask pixel; written row by row).
* ``<name>_regions.csv``: the generator's regions, ``slide,x,y,width,height,ucc`` in level-0 pixels.

With the defaults (cell 32, region_cells 8, margin one region) the command::

    pathoucc tile slide.tif --out tiles --patch-size 32 --stride 32 --level 0 --region-size 256 --mask slide_mask.png

gives exactly one digit per patch and one bag per generated region. Digits come from the MNIST training split
only (the test split is reserved for evaluation); ``--source digits`` uses scikit-learn's 8x8 digits, upscaled.

    python tools/make_digit_slide.py slide.tif --grid 64 64            # 2560 x 2560 px
    python tools/make_digit_slide.py big.tif --grid 1240 1240 --mask-downsample 32   # 40 192 x 40 192 px
"""

from __future__ import annotations

import argparse
import csv
import struct
import zlib
from pathlib import Path

import numpy as np

from pathoucc.errors import PathouccError
from pathoucc.files import atomic_path
from pathoucc.slides.pyramid import pyramid_downsamples, write_pyramid_tiff

TISSUE = np.array([238, 176, 214], np.float32)  # pink eosin-like background
INK = np.array([88, 32, 128], np.float32)  # dark purple haematoxylin-like ink
DIGIT = 28


def make_digit_slide(out_path: str | Path, *, grid: tuple[int, int] = (64, 64), cell: int = 32,
                     region_cells: int = 8, ucc_range: tuple[int, int] = (1, 4), source: str = "mnist",
                     data_dir: str | Path = "data", seed: int = 0, mpp: float = 0.5, margin_cells: int | None = None,
                     mask_downsample: int = 1) -> tuple[Path, Path]:
    """Write the digit slide, its label mask and its regions CSV; return ``(slide_path, mask_path)``.

    ``grid`` = (rows, cols) of digit cells, each a multiple of ``region_cells``. Level 0 is
    ``(cols + 2 * margin) * cell`` wide. Deterministic for a given ``seed``.
    """
    out_path = Path(out_path)
    rows, cols = grid
    margin = region_cells if margin_cells is None else margin_cells
    lo, hi = ucc_range
    if cell < DIGIT:
        raise PathouccError(f"cell must be at least {DIGIT} px, got {cell}")
    if rows % region_cells or cols % region_cells or rows <= 0 or cols <= 0:
        raise PathouccError(f"grid {rows}x{cols} must be a positive multiple of region_cells={region_cells}")
    if not 1 <= lo <= hi <= 10 or hi > region_cells**2:
        raise PathouccError(f"ucc_range {ucc_range} must satisfy 1 <= lo <= hi <= min(10, region_cells^2)")
    if mask_downsample < 1 or cell % mask_downsample:
        raise PathouccError(f"mask_downsample {mask_downsample} must divide the cell size {cell}")
    images, digit_labels = _training_digits(source, data_dir)
    rng = np.random.default_rng(seed)

    # class of every cell, region by region; then one random training image of that class per cell
    classes = np.zeros((rows, cols), np.int64)
    region_ucc = np.zeros((rows // region_cells, cols // region_cells), np.int64)
    for rr in range(rows // region_cells):
        for rc in range(cols // region_cells):
            k = int(rng.integers(lo, hi + 1))
            chosen = rng.choice(10, size=k, replace=False)
            cells = np.concatenate([chosen, rng.choice(chosen, size=region_cells**2 - k)])
            rng.shuffle(cells)
            classes[rr * region_cells:(rr + 1) * region_cells, rc * region_cells:(rc + 1) * region_cells] = \
                cells.reshape(region_cells, region_cells)
            region_ucc[rr, rc] = k
    by_class = [np.flatnonzero(digit_labels == c) for c in range(10)]
    picks = np.empty((rows, cols), np.int64)
    for c in range(10):
        where = classes == c
        picks[where] = rng.choice(by_class[c], size=int(where.sum()))

    index = np.full((rows + 2 * margin, cols + 2 * margin), -1, np.int64)  # training image per cell, -1 = white
    index[margin:margin + rows, margin:margin + cols] = picks
    renderer = _Renderer(images, index, cell)
    size = (index.shape[1] * cell, index.shape[0] * cell)
    write_pyramid_tiff(out_path, size, renderer, mpp=mpp, downsamples=pyramid_downsamples(size))

    mask_values = np.zeros(index.shape, np.uint8)
    mask_values[margin:margin + rows, margin:margin + cols] = classes + 1
    mask_path = out_path.with_name(f"{out_path.stem}_mask.png")
    _write_png_cells(mask_path, mask_values, cell // mask_downsample)

    with atomic_path(out_path.with_name(f"{out_path.stem}_regions.csv")) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide", "x", "y", "width", "height", "ucc"])
        side = region_cells * cell
        for rr, rc in np.ndindex(*region_ucc.shape):
            writer.writerow([out_path.name, (margin + rc * region_cells) * cell, (margin + rr * region_cells) * cell,
                             side, side, int(region_ucc[rr, rc])])
    return out_path, mask_path


class _Renderer:
    """Pixels of any level of the digit slide, computed from the cell table (nothing is pre-rendered)."""

    def __init__(self, images: np.ndarray, index: np.ndarray, cell: int) -> None:
        self.images, self.index, self.cell = images, index, cell
        self.off = (cell - DIGIT) // 2
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
            out[:, self.off:self.off + DIGIT, self.off:self.off + DIGIT] = self.images[picks] / 255.0
            return out
        if ds not in self._tables:  # every training image at this downsample, built 4096 images at a time
            table = np.empty((len(self.images), cs, cs), np.uint8)
            for a in range(0, len(self.images), 4096):
                padded = np.zeros((len(self.images[a:a + 4096]), self.cell, self.cell), np.float32)
                padded[:, self.off:self.off + DIGIT, self.off:self.off + DIGIT] = self.images[a:a + 4096]
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


def _training_digits(source: str, data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 white-on-black digits and (N,) labels from the training data only."""
    if source == "mnist":
        from pathoucc.data.mnist import load_mnist

        images, labels = load_mnist(data_dir)["train"]
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


def _write_png_cells(path: Path, values: np.ndarray, px: int) -> None:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output .tif (mask and regions CSV are written next to it)")
    parser.add_argument("--grid", type=int, nargs=2, default=(64, 64), metavar=("ROWS", "COLS"))
    parser.add_argument("--cell", type=int, default=32, help="cell side in level-0 px (default 32)")
    parser.add_argument("--region-cells", type=int, default=8, help="region side in cells (default 8)")
    parser.add_argument("--ucc-range", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"))
    parser.add_argument("--source", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--mask-downsample", type=int, default=1, help="level-0 px per mask px (divides --cell)")
    args = parser.parse_args(argv)
    try:
        slide, mask = make_digit_slide(args.out, grid=tuple(args.grid), cell=args.cell, region_cells=args.region_cells,
                                       ucc_range=tuple(args.ucc_range), source=args.source, data_dir=args.data_dir,
                                       seed=args.seed, mpp=args.mpp, mask_downsample=args.mask_downsample)
    except PathouccError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {slide} and {mask}")


if __name__ == "__main__":
    main()
