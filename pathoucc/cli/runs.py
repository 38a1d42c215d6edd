"""`pathoucc train`, `refine`, `evaluate`, `baseline`, `cluster`, `segment`: the commands on a run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from pathoucc.cli.app import Amp, BatchSize, Clusters, Device, DeviceChoice, Overrides, RunFolder, app
from pathoucc.config import Split, load_config
from pathoucc.files import write_json
from pathoucc.options import SegmentOptions, validate_options
from pathoucc.tables import print_refined, print_scores, print_segment_scores, run_name

Examples = Annotated[Path | None, typer.Option(
    "--examples", help="Labelled examples that name the clusters: QuPath GeoJSON points/polygons with a "
    "classification, or a slide,x,y,class CSV (refits the run's k-means with the names)")]
Classes = Annotated[str | None, typer.Option(
    "--classes", help="Comma-separated class names the examples may use (default: the names they use)")]


def _classes(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/mnist.yaml")],
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default runs/<config name>)")] = None,
    set_: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's last checkpoint")] = False,
    examples: Examples = None,
    classes: Classes = None,
) -> None:
    """Train a UCC model on bags (then refine it, with refine.steps), then evaluate its clustering; with
    --examples, name the run's clusters (checked before training; never trained on)."""
    from pathoucc.pipeline import train_run
    from pathoucc.run import kmeans_path

    cfg = load_config(config, set_ or [])
    report = train_run(cfg, out or Path("runs") / config.stem, resume=resume, progress=sys.stderr.isatty(),
                       examples=examples, classes=_classes(classes))
    if report.refine is not None:
        print_refined(report.refine, report.run_dir)
    if report.scores is not None:  # under torchrun only rank 0 scores the run
        print_scores({f"{cfg.name} ({report.scores['split']})": report.scores})
    if report.named is not None:
        for note in report.named.notes:
            typer.echo(f"note: {note}", err=True)
        cm = report.named.kmeans
        typer.echo(f"k-means with k={cm.k} named {', '.join(cm.cluster_names)} -> {kmeans_path(report.run_dir, cm.k)}")


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
    labelled_fraction: Annotated[float | None, typer.Option(
        help="Name the clusters from this stratified share of each class of the train split (MNIST/IDX)")] = None,
    labels_per_class: Annotated[int | None, typer.Option(
        help="Name the clusters from this many train instances of each class (MNIST/IDX)")] = None,
) -> None:
    """Cluster the held-out split with the run's features; score it (with labels: ACC, NMI, ARI) -> metrics.json"""
    from pathoucc.cluster import evaluate_run

    result = evaluate_run(run, split=split, device=device, labelled_fraction=labelled_fraction,
                          labels_per_class=labels_per_class)
    print_scores({f"{run_name(run)} ({result['split']})": result})


@app.command()
def baseline(
    config: Annotated[Path, typer.Argument(help="YAML config whose data to cluster")],
    split: Annotated[Split, typer.Option(help="Split to cluster")] = "test",
    out: Annotated[Path | None, typer.Option("--out", help="Write the scores to this JSON file")] = None,
    set_: Overrides = None,
    method: Annotated[Literal["raw-pixels", "iic"], typer.Option(
        help="raw-pixels: k-means on the pixels (no model; on feature files: on the frozen features); iic: "
             "train IIC (no labels, no counts) under the config's train.steps / train.max_minutes and score its "
             "clusters")] = "raw-pixels",
) -> None:
    """The reference baselines: k-means on the raw pixels of the held-out instances, or IIC."""
    cfg = load_config(config, set_ or [])
    if method == "iic":
        from pathoucc.cluster.baselines import evaluate_iic

        result = evaluate_iic(cfg, split=split, progress=sys.stderr.isatty())
    else:
        from pathoucc.cluster import evaluate_raw_pixels

        result = evaluate_raw_pixels(cfg, split=split)
    print_scores({f"{result.get('method', method)} ({split})": result})
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
    examples: Examples = None,
    classes: Classes = None,
) -> None:
    """Fit the run's shared k-means on its training data: <run>/kmeans-k<K>.npz, used by `pathoucc segment`."""
    from pathoucc.cluster import cluster_run
    from pathoucc.cluster.named import named_cluster_run

    options = validate_options(SegmentOptions, dict(k=k, batch_size=batch_size, device=device, amp=amp,
                                                    examples=examples, classes=_classes(classes)))
    if options.examples is not None:
        fit, path = named_cluster_run(run, options.examples, options.k, options.classes, tiles or None,
                                      options.batch_size, options.device, sys.stderr.isatty(), options.amp)
        for note in fit.notes:
            typer.echo(f"note: {note}", err=True)
        cm = fit.kmeans
    else:
        cm, path = cluster_run(run, k=options.k, tile_paths=tiles or None, batch_size=options.batch_size,
                               device=options.device, progress=sys.stderr.isatty(), amp=options.amp)
    named = f" named {', '.join(cm.cluster_names)}" if cm.names else ""
    typer.echo(f"k-means with k={cm.k} on {cm.num_features} features{named} -> {path}")


@app.command()
def segment(
    run: RunFolder,
    tiles: Annotated[list[Path], typer.Argument(
        help="Tile files (.h5) of `pathoucc tile`, CLAM or TRIDENT, or feature files (TRIDENT/CLAM .h5, .pt)")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default <run>/segments)")] = None,
    k: Clusters = None,
    mask: Annotated[Path | None, typer.Option(help="Label mask to score against (or a folder of masks)")] = None,
    batch_size: BatchSize = None,
    device: Device = "auto",
    slides: Annotated[Path | None, typer.Option(
        help="Slides folder of CLAM/TRIDENT coordinate files, and of feature files for overlays (default: "
             "data.slide_dir, else beside each)")] = None,
    amp: Amp = None,
    examples: Examples = None,
    classes: Classes = None,
) -> None:
    """Cluster every patch of each slide with the run's shared k-means: maps, overlays, CSV/HDF5, GeoJSON, scores."""
    from pathoucc.segment import segment_run

    options = validate_options(SegmentOptions, dict(k=k, mask=mask, batch_size=batch_size, device=device,
                                                    amp=amp, examples=examples, classes=_classes(classes)))
    report = segment_run(run, tiles, out=out, options=options, progress=sys.stderr.isatty(), slide_dir=slides)
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    if report.fitted:
        named = f" named {', '.join(report.kmeans.cluster_names)}" if report.kmeans.names else ""
        typer.echo(f"fitted k-means (k={report.kmeans.k}){named} on the run's training data -> "
                   f"{report.kmeans_path}")
    for seg in report.slides:
        typer.echo(f"{seg.name}: {len(seg.clusters)} patches, {seg.extra['num_regions']} regions -> "
                   f"{seg.extra['folder']}")
        if seg.extra.get("notice"):
            typer.echo(seg.extra["notice"])
    if any(s.scores for s in report.slides):
        print_segment_scores([s.scores for s in report.slides if s.scores])
