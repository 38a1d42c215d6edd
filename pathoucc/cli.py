"""Command line: a thin layer over the pipeline's functions. Bad input ends in one line, no traceback."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from pathoucc.config import Compression, SegmentOptions, Split, TileOptions, load_config, validate_options
from pathoucc.config import Device as DeviceChoice
from pathoucc.errors import PathouccError, TrainingInterrupted, one_line
from pathoucc.files import write_json
from pathoucc.slides.tiler import tile_slides
from pathoucc.tables import print_refined, print_scores, print_segment_scores, run_name

# The commands that need torch and scikit-learn import their stage on use (a few seconds): `pathoucc tile` and
# `--help` need neither. The CLI sits on top of the package, so these imports cannot form a cycle.

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Weakly supervised clustering and segmentation from unique class counts (UCC).")
_state = {"debug": False}  # set by the global callback from --debug (before the command), read by main()

# recent typer raises its own copy of click's exceptions, older typer click's own: BadParameter -> UsageError -> this
_ClickException = typer.BadParameter.__base__.__base__

# the help panels of `pathoucc tile` (after its slide arguments): typer.Option in each panel
_slides, _output, _patches, _tissue, _labels = (partial(typer.Option, rich_help_panel=panel) for panel in (
    "Slides: a list, a shard", "Output", "Patches: size, level, reading", "Tissue", "Annotations: labels, counts"))

# options shared by several commands, declared once
RunFolder = Annotated[Path, typer.Argument(help="Run folder written by `pathoucc train`")]
Overrides = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: a.b=value")]
Clusters = Annotated[int | None, typer.Option("--k", help="Clusters (default: eval.k or the training classes)")]
BatchSize = Annotated[int | None, typer.Option(help="Patches per forward pass")]
Device = Annotated[DeviceChoice, typer.Option(help="Where to compute (auto: cuda when available, else cpu)")]
Amp = Annotated[bool | None, typer.Option("--amp/--fp32", help="Mixed-precision features (bf16 where the hardware "
                                          "has it) or fp32 (default: the run's eval.amp)")]


@app.callback()
def _global(debug: Annotated[bool, typer.Option(
        "--debug", help="Show full tracebacks on errors. Give it before the command: pathoucc --debug train ...")
        ] = False) -> None:
    _state["debug"] = debug


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/mnist.yaml")],
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default runs/<config name>)")] = None,
    set_: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's last checkpoint")] = False,
) -> None:
    """Train a UCC model on bags (then refine it, with refine.steps), then evaluate its clustering."""
    from pathoucc.pipeline import train_run

    cfg = load_config(config, set_ or [])
    report = train_run(cfg, out or Path("runs") / config.stem, resume=resume, progress=sys.stderr.isatty())
    if report.refine is not None:
        print_refined(report.refine, report.run_dir)
    if report.scores is not None:  # under torchrun only rank 0 scores the run
        print_scores({f"{cfg.name} ({report.scores['split']})": report.scores})


@app.command()
def refine(
    run: RunFolder,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a refine setting: refine.key=value")
                    ] = None,
    device: Annotated[DeviceChoice | None, typer.Option(help="auto, cpu or cuda (default: the run's train.device)")
                      ] = None,
) -> None:
    """Refine a trained run again (model-ucc.pt -> model.pt) without retraining, or continue an interrupted
    refinement; score it with `pathoucc evaluate RUN`."""
    from pathoucc.pipeline import refine_run
    from pathoucc.training.distributed import is_main_process

    summary = refine_run(run, overrides=set_ or [], device=device, progress=sys.stderr.isatty())
    if is_main_process():  # under torchrun rank 0 reports for the job
        print_refined(summary, run)


@app.command()
def evaluate(
    run: RunFolder,
    split: Annotated[Split | None, typer.Option(help="Split to score (default: the config's eval.split)")] = None,
    device: Device = "auto",
) -> None:
    """Cluster the held-out split with the run's features; score it (with labels: ACC, NMI, ARI) -> metrics.json"""
    from pathoucc.cluster import evaluate_run

    result = evaluate_run(run, split=split, device=device)
    print_scores({f"{run_name(run)} ({result['split']})": result})


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
    from pathoucc.slides.cohort import parse_shard, read_slide_list, shard_slides

    index, count = parse_shard(shard) if shard is not None else (1, 1)
    if slides and slide_list is not None:
        raise PathouccError("give slides or --slide-list, not both")
    slides = read_slide_list(slide_list) if slide_list is not None else list(slides or [])
    if not slides:
        raise PathouccError("no slides: give slide files or --slide-list FILE")
    everything = len(slides)
    if shard is not None:
        slides = shard_slides(slides, index, count)
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


@app.command()
def baseline(
    config: Annotated[Path, typer.Argument(help="YAML config whose data to cluster")],
    split: Annotated[Split, typer.Option(help="Split to cluster")] = "test",
    out: Annotated[Path | None, typer.Option("--out", help="Write the scores to this JSON file")] = None,
    set_: Overrides = None,
) -> None:
    """The reference baseline: k-means directly on the raw pixels of the held-out instances (no model, CPU)."""
    from pathoucc.cluster import evaluate_raw_pixels

    result = evaluate_raw_pixels(load_config(config, set_ or []), split=split)
    print_scores({f"raw pixels ({split})": result})
    if out is not None:
        write_json(out, result)


@app.command()
def cluster(
    run: RunFolder,
    k: Clusters = None,
    tiles: Annotated[list[Path] | None, typer.Option("--tiles", help="Fit on these tile files instead")] = None,
    batch_size: BatchSize = None,
    device: Device = "auto",
    amp: Amp = None,
) -> None:
    """Fit the run's shared k-means on its training data: <run>/kmeans-k<K>.npz, used by `pathoucc segment`."""
    from pathoucc.cluster import cluster_run

    options = validate_options(SegmentOptions, dict(k=k, batch_size=batch_size, device=device, amp=amp))
    cm, path = cluster_run(run, k=options.k, tile_paths=tiles or None, batch_size=options.batch_size,
                           device=options.device, progress=sys.stderr.isatty(), amp=options.amp)
    typer.echo(f"k-means with k={cm.k} on {cm.num_features} features -> {path}")


@app.command()
def segment(
    run: RunFolder,
    tiles: Annotated[list[Path], typer.Argument(help="Tile files (.h5) of `pathoucc tile`, CLAM or TRIDENT")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default <run>/segments)")] = None,
    k: Clusters = None,
    mask: Annotated[Path | None, typer.Option(help="Label mask to score against (or a folder of masks)")] = None,
    batch_size: BatchSize = None,
    device: Device = "auto",
    slides: Annotated[Path | None, typer.Option(
        help="Slides folder of CLAM/TRIDENT coordinate files (default: data.slide_dir, else beside each)")] = None,
    amp: Amp = None,
) -> None:
    """Cluster every patch of each slide with the run's shared k-means: maps, overlays, CSV/HDF5, GeoJSON, scores."""
    from pathoucc.segment import segment_run

    options = validate_options(SegmentOptions, dict(k=k, mask=mask, batch_size=batch_size, device=device,
                                                    amp=amp))
    report = segment_run(run, tiles, out=out, options=options, progress=sys.stderr.isatty(), slide_dir=slides)
    if report.fitted:
        typer.echo(f"fitted k-means (k={report.kmeans.k}) on the run's training data -> {report.kmeans_path}")
    for seg in report.slides:
        typer.echo(f"{seg.name}: {len(seg.clusters)} patches, {seg.extra['num_regions']} regions -> "
                   f"{seg.extra['folder']}")
    if any(s.scores for s in report.slides):
        print_segment_scores([s.scores for s in report.slides if s.scores])


def main() -> None:
    """The ``pathoucc`` console script: an error is one line on stderr and exit 2 (bad input, usage) or 1."""
    _state["debug"] = False  # the global callback sets it once the command line parses
    try:
        # with standalone_mode=False, click returns the code of a typer.Exit instead of raising it
        code = app(standalone_mode=False, prog_name="pathoucc")
    except PathouccError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except TrainingInterrupted as exc:  # SIGTERM, SIGUSR1 or Ctrl-C during `train`: 128 + the signal
        typer.echo(str(exc), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted (an interrupted `train` continues with --resume)", err=True)
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except _ClickException as exc:  # usage errors: an unknown option, a bad choice, a missing argument
        sys.exit(_show_click_error(exc))
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        if _state["debug"]:
            raise
        typer.echo(one_line(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"), err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _show_click_error(exc: Any) -> int:
    """Print a usage error on one line (``error: <what> (see 'pathoucc train --help')``); return its exit code."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `pathoucc` alone: typer has printed the help (rich)
        return exc.exit_code
    what = exc.format_message().replace("Value error, ", "").removesuffix(".")
    if getattr(exc, "option_name", None) == "--debug":
        what = "--debug goes before the command: pathoucc --debug <command>"
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    typer.echo(one_line(f"error: {what}{hint}"), err=True)
    return exc.exit_code


if __name__ == "__main__":
    main()
