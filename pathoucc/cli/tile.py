"""`pathoucc tile`: slides -> HDF5 tile files."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from pathoucc.cli.app import app
from pathoucc.config import Compression
from pathoucc.errors import PathouccError
from pathoucc.options import TileOptions, validate_options
from pathoucc.slides.tiler import tile_slides

# the help panels of `pathoucc tile` (after its slide arguments): typer.Option in each panel
_slides, _output, _patches, _tissue, _labels = (partial(typer.Option, rich_help_panel=panel) for panel in (
    "Slides: a list, a shard", "Output", "Patches: size, level, reading", "Tissue", "Annotations: labels, counts"))


@app.command()
def tile(
    out: Annotated[Path, _output("--out", help="Output folder: <stem>.h5 and <stem>_tissue.png per slide")],
    slides: Annotated[list[Path] | None, typer.Argument(help="Slide files (SVS, tiled TIFF, NDPI, ..., PNG/JPEG)",
                                                        show_default=False)] = None,
    slide_list: Annotated[Path | None, _slides(help="Text file of slide paths, one per line")] = None,
    shard: Annotated[str | None, _slides(help="Tile only shard I of N (1-based), e.g. 2/8 in a SLURM array")] = None,
    patch_size: Annotated[int, _patches(help="Patch side in output-level pixels")] = 224,
    stride: Annotated[int | None, _patches(help="Grid step in output-level pixels (default: patch size)")] = None,
    level: Annotated[int | None, _patches(help="Pyramid level to read")] = None,
    magnification: Annotated[float | None, _patches(help="Objective magnification, e.g. 20")] = None,
    mpp: Annotated[float | None, _patches(help="Microns per output pixel, e.g. 0.5")] = None,
    downsample: Annotated[float | None, _patches(help="Level-0 pixels per output pixel")] = None,
    tissue_threshold: Annotated[float, _tissue(help="Minimum tissue fraction of a kept patch")] = 0.5,
    region_size: Annotated[int, _labels(help="Region (bag) side in output pixels, with --mask/--geojson")] = 512,
    mask: Annotated[Path | None, _labels(help="Label-mask image (or folder of <stem>.png masks)")] = None,
    geojson: Annotated[Path | None, _labels(help="QuPath GeoJSON: count-only regions (ucc/classes) or class "
                                                 "polygons (or a folder of <stem>.geojson)")] = None,
    regions_csv: Annotated[Path | None, _labels(help="CSV of regions: slide,x,y,width,height,ucc")] = None,
    classes: Annotated[str | None, _labels(help="Class names in index order, comma-separated: a,b,c")] = None,
    zero_is_background: Annotated[bool, _labels(help="Mask value 0 = unlabelled, v = class v-1")] = True,
    workers: Annotated[int | None, _patches(help="Reader threads (default: min(4, CPUs))")] = None,
    compression: Annotated[Compression, _output(help="Patch compression in the tile files")] = "gzip",
    overwrite: Annotated[bool, _output("--overwrite", help="Re-tile slides whose output exists")] = False,
) -> None:
    """Cut slides into tissue patches (one HDF5 per slide), with patch labels and region counts if annotated."""
    from pathoucc.slides.cohort import select_inputs

    slides, everything, (index, count) = select_inputs(
        slides, slide_list, shard, what="slides", list_option="--slide-list",
        hint="give slide files or --slide-list FILE")
    if shard is not None:
        typer.echo(f"shard {index}/{count}: {len(slides)} of {everything} slides")
    given = [(k, v) for k, v in (("mask", mask), ("geojson", geojson), ("csv", regions_csv)) if v is not None]
    if len(given) > 1:
        raise PathouccError("give at most one of --mask, --geojson, --regions-csv")
    kind, source = given[0] if given else (None, None)
    options = validate_options(TileOptions, dict(
        patch_size=patch_size, stride=stride, level=level, magnification=magnification, mpp=mpp,
        downsample=downsample, tissue_threshold=tissue_threshold, region_size=region_size,
        classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        zero_is_background=zero_is_background, workers=workers, compression=compression, overwrite=overwrite))
    single = everything == 1  # a single slide's error is the command's error (exit 2); of many, one line each
    report = tile_slides(slides, out, options, annotations=source, annotation_kind=kind, progress=sys.stderr.isatty(),
                         on_error=None if single else lambda _path, message: typer.echo(f"error: {message}", err=True))
    if single and report.failed:
        raise PathouccError(report.failed[0][1])
    for path, note in report.notes:
        typer.echo(f"warning: {path.name}: {note}", err=True)
    for path, why in report.retiled:
        typer.echo(f"re-tiled {path.name}: {why}")
    if report.orphans:
        typer.echo(f"removed {len(report.orphans)} temporary file(s) left by an interrupted run")
    typer.echo(f"tiled {len(report.written)}, skipped {len(report.skipped)} (up to date), "
               f"failed {len(report.failed)} -> {out}")
    if report.failed:
        raise SystemExit(1)
