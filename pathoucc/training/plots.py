"""Plots people would rather look at than read: training curves, refinement curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pathoucc.files import atomic_path


def _pyplot():
    """matplotlib's pyplot on the Agg backend (heavy: imported on use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _records(jsonl: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]


def _save(fig, out_png: str | Path) -> None:
    """Lay out, write atomically, close."""
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _pyplot().close(fig)


def _style(ax, title: str, fontsize: float | None = None) -> None:
    ax.set_title(title, fontsize=fontsize)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_training_curves(metrics_jsonl: str | Path, out_png: str | Path) -> None:
    """Plot every logged metric of a run (``metrics.jsonl``) against the step, one panel per metric."""
    records = _records(metrics_jsonl)
    keys = [k for k in dict.fromkeys(k for r in records for k in r) if k not in ("step", "elapsed_s", "lr")]
    if not keys:
        return
    pairs = sorted({k.removeprefix("val_") for k in keys})
    fig, axes = _pyplot().subplots(1, len(pairs), figsize=(4 * len(pairs), 3.2), squeeze=False)
    for ax, key in zip(axes[0], pairs, strict=True):
        for name, style in ((key, "-"), (f"val_{key}", "o-")):
            pts = [(r["step"], r[name]) for r in records if name in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=name, markersize=3)
        _style(ax, key)
    _save(fig, out_png)


def plot_refine_curves(refine_jsonl: str | Path, out_png: str | Path) -> None:
    """Plot the refinement's loss (``refine.jsonl``) against the step, one line per round; with the pairwise term
    (``pairwise_loss`` in the records) it in a second panel."""
    records = _records(refine_jsonl)
    if not records:
        return
    pairwise = any("pairwise_loss" in r for r in records)
    fig, axes = _pyplot().subplots(1, 2 if pairwise else 1, figsize=(10 if pairwise else 5, 3.2), squeeze=False)
    panels = [("loss", "refinement: pseudo-label cross-entropy + weighted pairwise" if pairwise
               else "refinement: cross-entropy on count-consistent pseudo-labels")]
    panels += [("pairwise_loss", "refinement: pairwise loss of the labelled patches")] if pairwise else []
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for rnd in sorted({r["round"] for r in records}):
            pts = [(r["step"], r[key]) for r in records if r["round"] == rnd and key in r]
            ax.plot(*zip(*pts, strict=True), "-", label=f"round {rnd}")
        ax.set_yscale("log")
        _style(ax, title, fontsize=9)
    _save(fig, out_png)
