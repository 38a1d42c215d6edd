"""The command line's printed tables: rich renderings of the scores the pipeline's functions return (used only by
:mod:`pathoucc.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from pathoucc.config import load_config

__all__ = ["print_refined", "print_scores", "print_segment_scores", "run_name"]


def print_refined(summary: dict[str, Any], run: Path) -> None:
    """One line on a finished refinement: rounds, steps, the share of patches the counts changed."""
    last = summary["rounds"][-1]
    typer.echo(f"refined: {len(summary['rounds'])} round(s) of {summary['steps']} steps on count-consistent "
               f"pseudo-labels ({last['changed_by_counts']:.1%} changed by the counts in the last round) -> "
               f"{run / 'model.pt'} (the UCC model: model-ucc.pt)")


def run_name(run: Path) -> str:
    """The run's config name (from its ``config.yaml``), else the folder's name."""
    from pathoucc.run import CONFIG

    return load_config(run / CONFIG).name if (run / CONFIG).is_file() else run.name


def print_scores(rows: dict[str, dict[str, Any]]) -> None:
    """A rich table of clustering scores, one row per run (or baseline): "-" where the split has no labels;
    then per row what needs none (agreement with region counts, the count accuracy training logged)."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    table = Table(title="clustering")
    for col in ("run", "accuracy", "NMI", "ARI", "k", "labelled/all"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, result in rows.items():
        table.add_row(name, number(result.get("accuracy")), number(result.get("nmi")), number(result.get("ari")),
                      str(result["k"]), f"{result['num_labelled']}/{result['num_instances']}")
    Console().print(table)
    for name, result in rows.items():
        counts, val = result.get("count_consistency"), result.get("val_ucc_accuracy")
        notes = ([f"clusters match the count in {counts['exact']:.0%} of {counts['regions']} regions (mean "
                  f"|clusters - count| {counts['mean_abs_error']:.2f})"] if counts else []) + (
                 [f"validation count accuracy {val:.4f}"] if val is not None else []) + (
                 [f"named accuracy {result['named_accuracy']:.4f} (cluster names from {result['num_examples']} "
                  "labelled train instances, no matching)"] if "named_accuracy" in result else [])
        if notes:
            typer.echo(f"{name}: {'; '.join(notes)}")


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
    for r in rows:
        if "named" in r:
            typer.echo(f"{r['slide']}: named accuracy (cluster names vs classes, no matching, the "
                       f"{r['num_examples']} examples left out): patches {r['named']['patches']['accuracy']:.4f}, "
                       f"map {r['named']['map']['accuracy']:.4f}")
