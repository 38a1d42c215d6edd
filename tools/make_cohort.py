"""A family of digit-slide cohorts: named cells of a grid, each built deterministically and cached on disk.

A cell is a cohort of count-only slides made by ``make_digit_slide.make_blob_digit_slide``: several TRAINING
slides of MNIST training digits, one VALIDATION slide of the other 10 000 MNIST training images (``split="val"``:
none of its digits lies on a training slide) and one TEST slide of the official MNIST test digits. Its axes:

* ``layout``: ``blobs`` (classes form smooth blobs crossing the regions) or ``intermixed`` (each region mixes
  1-4 classes at random);
* ``r`` ~ median patches per region: 90, 300 or 1000 (region seeds ``sqrt(r / 0.89)`` cells apart);
* ``n`` ~ training regions in all: 200 or 1000 over 4 training slides; ``n950`` is today's benchmark (one slide);
* ``p``: patch (= cell) size in px, 28 (digits as drawn) or 32 (upscaled).

Names read ``<layout>-r<r>-n<n>-p<p>``, e.g. ``intermixed-r300-n200-p28``; ``blobs-r90-n950-p32`` rebuilds the
slides of ``tools/bench_slide_heldout.py`` (same generator, grids and seeds; its validation slide now of disjoint
digits). A cell folder holds ``recipe.json``; a folder whose recipe (the cell's parameters and the generator's
source) differs is deleted and rebuilt, never reused::

    python tools/make_cohort.py --work bench/cohorts --cells intermixed-r300-n200-p28
    python tools/make_cohort.py --grid full --list
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [str(c) for c in range(10)]
TRAIN_SLIDES = 4
LAYOUTS = ("blobs", "intermixed")
REGION_PATCHES = (90, 300, 1000)
TRAIN_REGIONS = (200, 1000)
PATCH_SIZES = (28, 32)
TODAY = "blobs-r90-n950-p32"
SMALL = ("intermixed-r300-n200-p28", "blobs-r300-n200-p28", TODAY)


@dataclass(frozen=True)
class Cell:
    """One cohort of the grid: its axes and everything the generator is called with."""

    layout: str
    region_patches: int
    train_regions: int
    patch: int

    @property
    def name(self) -> str:
        return f"{self.layout}-r{self.region_patches}-n{self.train_regions}-p{self.patch}"

    @classmethod
    def parse(cls, name: str) -> Cell:
        """``intermixed-r300-n200-p28`` -> Cell; raises ValueError on any other form."""
        try:
            layout, r, n, p = name.split("-")
            if layout not in LAYOUTS or r[0] != "r" or n[0] != "n" or p[0] != "p":
                raise ValueError
            return cls(layout, int(r[1:]), int(n[1:]), int(p[1:]))
        except ValueError:
            raise ValueError(f"bad cell name {name!r} (want <blobs|intermixed>-r<patches>-n<regions>-p<px>)") from None

    def recipe(self) -> dict:
        """The generator's arguments for every slide of the cell (cell units; seeds as in bench_slide_heldout)."""
        if self.name == TODAY:  # tools/bench_slide_heldout.py's slides: spacing 10, min 32, grids 320 / 96
            spacing, minimum, slides, train_grid, eval_grid = 10.0, 32, 1, 320, 96
        else:
            spacing = round(math.sqrt(self.region_patches / 0.89), 1)  # median ~ 0.89 spacing^2 with 12 % glass
            minimum = round(0.32 * spacing**2)
            slides = TRAIN_SLIDES
            # ~0.93 (grid / spacing)^2 regions are kept per slide
            train_grid = math.ceil(spacing * math.sqrt(self.train_regions / 0.93 / slides))
            eval_grid = max(96, math.ceil(4 * spacing))
        common = {"layout": self.layout, "cell": self.patch, "region_cells": spacing, "min_region_patches": minimum,
                  "blob_cells": 14.0 if self.name == TODAY else round(1.4 * spacing, 1)}
        train = [{"name": "train" if slides == 1 else f"train{i}", "split": "train", "seed": 1 + 10 * i,
                  "grid": train_grid, **common} for i in range(slides)]
        return {"cell": asdict(self), "slides": [*train, {"name": "val", "split": "val", "seed": 3, "grid": eval_grid,
                                                          **common},
                                                 {"name": "test", "split": "test", "seed": 2, "grid": eval_grid,
                                                  **common}],
                "generator_sha256": _generator_hash()}


def grid_cells(grid: str) -> list[Cell]:
    """``small``: the hardest cell, its blob twin and today's benchmark; ``full``: every combination + today's."""
    if grid == "small":
        return [Cell.parse(name) for name in SMALL]
    cells = [Cell(*axes) for axes in product(LAYOUTS, REGION_PATCHES, TRAIN_REGIONS, PATCH_SIZES)]
    return [*cells, Cell.parse(TODAY)]


def _generator_hash() -> str:
    """sha256 of the generator's source: a changed generator invalidates every cached cell."""
    digest = hashlib.sha256()
    for name in ("make_digit_slide.py", "digit_slide_parts.py", "make_cohort.py"):
        digest.update((ROOT / "tools" / name).read_bytes())
    return digest.hexdigest()


def build_cell(cell: Cell, work: Path, data_dir: str | Path = "data") -> dict:
    """Make (or reuse, when its ``recipe.json`` matches) the cell's slides, masks, GeoJSON and tiles.

    Returns ``{"folder", "train_tiles": [...], "val_tiles", "test_tiles", "recipe", "made"}``; the tiles are
    ``<folder>/tiles/<slide>.h5`` (count-only regions, no patch labels), the masks ``<folder>/<slide>_mask.png``.
    """
    sys.path.insert(0, str(ROOT / "tools"))
    from make_digit_slide import make_blob_digit_slide

    from pathoucc.slides.tiler import tile_slides

    folder = work / cell.name
    recipe = cell.recipe()
    stamp = folder / "recipe.json"
    made = False
    if not stamp.exists() or json.loads(stamp.read_text()) != recipe:
        if folder.exists():
            print(f"{cell.name}: {folder} is half built or of another recipe; rebuilding it", file=sys.stderr)
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        summaries = {}
        for spec in recipe["slides"]:
            args = {k: v for k, v in spec.items() if k not in ("name", "grid")}
            summary = make_blob_digit_slide(folder / f"{spec['name']}.tif", grid=(spec["grid"], spec["grid"]),
                                            data_dir=data_dir, **args)
            summaries[spec["name"]] = {k: str(v) if isinstance(v, Path) else v for k, v in summary.items()}
            report = tile_slides([folder / f"{spec['name']}.tif"], folder / "tiles",
                                 annotations=folder / f"{spec['name']}_regions.geojson", annotation_kind="geojson",
                                 classes=CLASSES, patch_size=cell.patch, stride=cell.patch, level=0)
            if report.failed:
                raise RuntimeError(f"{cell.name}: tiling {spec['name']} failed: {report.failed}")
        (folder / "generator.json").write_text(json.dumps(summaries, indent=2) + "\n")
        stamp.write_text(json.dumps(recipe, indent=2) + "\n")  # written last: a half-built folder is rebuilt
        made = True
    names = [spec["name"] for spec in recipe["slides"]]
    tiles = folder / "tiles"
    return {"folder": folder, "train_tiles": [tiles / f"{n}.h5" for n in names if n.startswith("train")],
            "val_tiles": tiles / "val.h5", "test_tiles": tiles / "test.h5", "recipe": recipe, "made": made}


def select(cells: list[str] | None, grid: str) -> list[Cell]:
    """The cells named (any valid name, in or out of the grid) or else the grid's."""
    return [Cell.parse(name) for name in cells] if cells else grid_cells(grid)


def add_cell_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose cells and where they live: ``--work``, ``--cells``, ``--grid``, ``--data-dir``."""
    parser.add_argument("--work", type=Path, default=Path("bench/cohorts"), help="one folder per cell")
    parser.add_argument("--cells", nargs="+", default=None, help="cell names (default: every cell of --grid)")
    parser.add_argument("--grid", choices=("small", "full"), default="small")
    parser.add_argument("--data-dir", default="data", help="MNIST cache folder")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_arguments(parser)
    parser.add_argument("--list", action="store_true", help="print the cells and their recipes; build nothing")
    args = parser.parse_args(argv)
    try:
        cells = select(args.cells, args.grid)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    for cell in cells:
        if args.list:
            slides = cell.recipe()["slides"]
            print(cell.name, json.dumps({s["name"]: s["grid"] for s in slides}), f"spacing {slides[0]['region_cells']}")
            continue
        built = build_cell(cell, args.work, args.data_dir)
        print(f"{cell.name}: {'built' if built['made'] else 'cached'} in {built['folder']}")


if __name__ == "__main__":
    main()
