"""`pathoucc features`: patch files -> TRIDENT-layout feature files of a frozen timm encoder."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from pathoucc.cli.app import BatchSize, Device, app
from pathoucc.errors import PathouccError
from pathoucc.options import FeatureOptions, validate_options

_inputs, _encoder, _compute = (partial(typer.Option, rich_help_panel=panel) for panel in (
    "Inputs: a list, a shard, the slides", "Encoder", "Compute"))


@app.command()
def features(
    out: Annotated[Path, typer.Option("--out", help="Output folder: features_<encoder>/<slide>.h5 (TRIDENT's "
                                                    "layout)")],
    model: Annotated[str, _encoder("--model", help="timm model, e.g. resnet18.a1_in1k or hf-hub:timm/...: "
                                                  "hub weights through timm's cache (offline with "
                                                  "HF_HUB_OFFLINE=1), or the architecture of --weights")],
    files: Annotated[list[Path] | None, typer.Argument(
        help="Tile files of `pathoucc tile` or CLAM/TRIDENT coords files (.h5)", show_default=False)] = None,
    file_list: Annotated[Path | None, _inputs(help="Text file of patch-file paths, one per line")] = None,
    shard: Annotated[str | None, _inputs(help="Encode only shard I of N (1-based), e.g. 2/8 in a SLURM "
                                              "array")] = None,
    slides: Annotated[Path | None, _inputs(help="Slide (or folder of slides) of coords files (default: by "
                                                "name, next to them)")] = None,
    weights: Annotated[Path | None, _encoder(help="Local weights (state dict .pt/.pth/.safetensors) instead of "
                                                  "the hub's")] = None,
    name: Annotated[str | None, _encoder(help="Encoder name of the output (default: the model name, or the "
                                              "weights file's stem)")] = None,
    batch_size: BatchSize = 256,
    device: Device = "auto",
    amp: Annotated[bool, _compute("--amp/--fp32", help="Mixed precision (bf16/fp16) where the hardware has it, "
                                                       "or fp32")] = True,
    overwrite: Annotated[bool, _compute("--overwrite", help="Encode slides whose features are up to date "
                                                            "again")] = False,
) -> None:
    """Encode every patch with a frozen timm encoder: one TRIDENT-layout feature file per slide."""
    from pathoucc.embed import embed_files
    from pathoucc.slides.cohort import select_inputs

    files, everything, (index, count) = select_inputs(
        files, file_list, shard, what="patch files", list_option="--file-list",
        hint="give tile or coords files, or --file-list FILE")
    if shard is not None:
        typer.echo(f"shard {index}/{count}: {len(files)} of {everything} files")
    options = validate_options(FeatureOptions, dict(
        model=model, weights=weights, name=name, batch_size=batch_size, device=device, amp=amp,
        overwrite=overwrite))
    single = everything == 1  # a single file's error is the command's error (exit 2); of many, one line each
    report = embed_files(files, out, options, slides=slides, progress=sys.stderr.isatty(),
                         on_error=None if single else lambda _path, message: typer.echo(f"error: {message}", err=True))
    if single and report.failed:
        raise PathouccError(report.failed[0][1])
    for path, why in report.redone:
        typer.echo(f"encoded {path.name} again: {why}")
    speed = f" ({report.patches} patches, {report.patches_per_s:.0f} patches/s)" if report.patches else ""
    typer.echo(f"encoded {len(report.written)}{speed}, skipped {len(report.skipped)} (up to date), "
               f"failed {len(report.failed)} -> {report.folder}")
    if report.failed:
        raise SystemExit(1)
