"""Command line: a thin layer over the pipeline's functions. Bad input ends in one line, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table

from pathoucc.config import SegmentOptions, TileOptions, load_config, validate_options
from pathoucc.errors import PathouccError, TrainingInterrupted
from pathoucc.files import write_json
from pathoucc.slides.tiler import tile_slides

# The commands that need torch and scikit-learn import their stage on use (a few seconds): `pathoucc tile` and
# `--help` need neither. The CLI sits on top of the package, so these imports cannot form a cycle.

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Weakly supervised clustering and segmentation from unique class counts (UCC).")
_state = {"debug": False}

# options shared by several commands, declared once
RunFolder = Annotated[Path, typer.Argument(help="Run folder written by `pathoucc train`")]
Overrides = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: a.b=value")]
Clusters = Annotated[int | None, typer.Option("--k", help="Clusters (default: eval.k or the training classes)")]
BatchSize = Annotated[int | None, typer.Option(help="Patches per forward pass")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda")]
Amp = Annotated[bool | None, typer.Option("--amp/--fp32", help="Mixed-precision features (bf16 where the hardware "
                                          "has it) or fp32 (default: the run's eval.amp)")]


@app.callback()
def _global(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False) -> None:
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
        _print_refined(report.refine, report.run_dir)
    if report.scores is not None:  # under torchrun only rank 0 scores the run
        print_scores({f"{cfg.name} ({report.scores['split']})": report.scores})


@app.command()
def refine(
    run: RunFolder,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a refine setting: refine.key=value")
                    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default: the run's train.device)")] = None,
) -> None:
    """Refine a trained run again (model-ucc.pt -> model.pt) without retraining, or continue an interrupted
    refinement; score it with `pathoucc evaluate RUN`."""
    from pathoucc.pipeline import refine_run
    from pathoucc.training.distributed import is_main_process

    summary = refine_run(run, overrides=set_ or [], device=device, progress=sys.stderr.isatty())
    if is_main_process():  # under torchrun rank 0 reports for the job
        _print_refined(summary, run)


def _print_refined(summary: dict[str, Any], run: Path) -> None:
    last = summary["rounds"][-1]
    typer.echo(f"refined: {len(summary['rounds'])} round(s) of {summary['steps']} steps on count-consistent "
               f"pseudo-labels ({last['changed_by_counts']:.1%} changed by the counts in the last round) -> "
               f"{run / 'model.pt'} (the UCC model: model-ucc.pt)")


@app.command()
def evaluate(
    run: RunFolder,
    split: Annotated[str | None, typer.Option(help="test or val (default: the config's eval.split)")] = None,
) -> None:
    """Cluster the held-out instances with the run's features and score them (ACC, NMI, ARI)."""
    from pathoucc.evaluate import evaluate_run

    result = evaluate_run(run, split=split)
    print_scores({f"{_run_name(run)} ({result['split']})": result})


@app.command()
def tile(
    out: Annotated[Path, typer.Option("--out", help="Output folder: <stem>.h5 and <stem>_tissue.png per slide")],
    slides: Annotated[list[Path] | None, typer.Argument(help="Slide files (SVS, tiled TIFF, NDPI, ..., PNG/JPEG)",
                                                        show_default=False)] = None,
    slide_list: Annotated[Path | None, typer.Option(help="Text file of slide paths, one per line")] = None,
    shard: Annotated[str | None, typer.Option(help="Tile only shard I of N (1-based): I/N, e.g. for SLURM arrays")
                     ] = None,
    patch_size: Annotated[int, typer.Option(help="Patch side in output-level pixels")] = 224,
    stride: Annotated[int | None, typer.Option(help="Grid step in output-level pixels (default: patch size)")] = None,
    level: Annotated[int | None, typer.Option(help="Pyramid level to read")] = None,
    magnification: Annotated[float | None, typer.Option(help="Objective magnification, e.g. 20")] = None,
    mpp: Annotated[float | None, typer.Option(help="Microns per output pixel, e.g. 0.5")] = None,
    downsample: Annotated[float | None, typer.Option(help="Level-0 pixels per output pixel")] = None,
    tissue_threshold: Annotated[float, typer.Option(help="Minimum tissue fraction of a kept patch")] = 0.5,
    region_size: Annotated[int, typer.Option(help="Region (bag) side in output pixels, with --mask/--geojson")] = 512,
    mask: Annotated[Path | None, typer.Option(help="Label-mask image (or folder of <stem>.png masks)")] = None,
    geojson: Annotated[Path | None, typer.Option(help="QuPath GeoJSON: count-only regions (ucc/classes) or class "
                                                      "polygons (or a folder of <stem>.geojson)")] = None,
    regions_csv: Annotated[Path | None, typer.Option(help="CSV of regions: slide,x,y,width,height,ucc")] = None,
    classes: Annotated[str | None, typer.Option(help="Class names in index order, comma-separated: a,b,c")] = None,
    zero_is_background: Annotated[bool, typer.Option(help="Mask value 0 = unlabelled, v = class v-1")] = True,
    workers: Annotated[int | None, typer.Option(help="Reader threads (default: min(4, CPUs))")] = None,
    compression: Annotated[str, typer.Option(help="Patch compression: gzip, lzf or none")] = "gzip",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Re-tile slides whose output exists")] = False,
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

    def report_error(_path: Path, message: str) -> None:
        typer.echo(f"error: {message}", err=True)

    single = everything == 1  # a single slide's error is the command's error (exit 2)
    report = tile_slides(slides, out, options, annotations=source, annotation_kind=kind,
                         on_error=None if single else report_error, progress=sys.stderr.isatty())
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
    split: Annotated[str, typer.Option(help="test or val")] = "test",
    out: Annotated[Path | None, typer.Option("--out", help="Write the scores to this JSON file")] = None,
    set_: Overrides = None,
) -> None:
    """The reference baseline: k-means directly on the raw pixels of the held-out instances."""
    from pathoucc.evaluate import evaluate_raw_pixels

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
    from pathoucc.kmeans import cluster_run

    o = validate_options(SegmentOptions, dict(k=k, batch_size=batch_size, device=device, amp=amp))
    cm, path = cluster_run(run, k=o.k, tile_paths=tiles or None, batch_size=o.batch_size, device=o.device,
                           progress=sys.stderr.isatty(), amp=o.amp)
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

    o = validate_options(SegmentOptions, dict(k=k, mask=mask, batch_size=batch_size, device=device, amp=amp))
    report = segment_run(run, tiles, out=out, options=o, progress=sys.stderr.isatty(), slide_dir=slides)
    if report.fitted:
        typer.echo(f"fitted k-means (k={report.kmeans.k}) on the run's training data -> {report.kmeans_path}")
    for seg in report.slides:
        typer.echo(f"{seg.name}: {len(seg.clusters)} patches, {seg.extra['num_regions']} regions -> "
                   f"{seg.extra['folder']}")
    if any(s.scores for s in report.slides):
        print_segment_scores([s.scores for s in report.slides if s.scores])


def _run_name(run: Path) -> str:
    """The run's config name (from its ``config.yaml``), else the folder's name."""
    from pathoucc.run import CONFIG

    return load_config(run / CONFIG).name if (run / CONFIG).is_file() else run.name


def print_scores(rows: dict[str, dict[str, Any]]) -> None:
    """A rich table of clustering scores, one row per run (or baseline)."""
    table = Table(title="clustering")
    for col in ("run", "accuracy", "NMI", "ARI", "k", "instances"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['accuracy']:.4f}", f"{r['nmi']:.4f}", f"{r['ari']:.4f}", str(r["k"]),
                      str(r["num_instances"]))
    Console().print(table)


def print_segment_scores(rows: list[dict[str, Any]]) -> None:
    """A rich table: one row per slide, then its per-class Dice/IoU."""
    table = Table(title="segmentation")
    for col in ("slide", "k", "patches", "ACC", "NMI", "ARI", "map ACC", "Dice", "IoU"):
        table.add_column(col, justify="left" if col == "slide" else "right")
    for r in rows:
        p, m = r["patches"], r["map"]
        table.add_row(r["slide"], str(r["k"]), str(p["num_patches"]), f"{p['accuracy']:.4f}", f"{p['nmi']:.4f}",
                      f"{p['ari']:.4f}", f"{m['accuracy']:.4f}", f"{m['mean_dice']:.4f}", f"{m['mean_iou']:.4f}")
    per = Table(title="per class (map, after matching)")
    for col in ("slide", "class", "cells", "Dice", "IoU"):
        per.add_column(col, justify="left" if col in ("slide", "class") else "right")
    for r in rows:
        for name, v in r["map"]["per_class"].items():
            per.add_row(r["slide"], name, str(v["cells"]), f"{v['dice']:.4f}", f"{v['iou']:.4f}")
    console = Console()
    console.print(table)
    console.print(per)


def main() -> None:
    """Entry point of the ``pathoucc`` console script."""
    debug = "--debug" in sys.argv[1:]
    try:
        # with standalone_mode=False, click returns the code of a typer.Exit instead of raising it
        code = app(standalone_mode=False)
    except PathouccError as exc:
        if debug:
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
    except Exception as exc:  # click usage errors and the like
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
