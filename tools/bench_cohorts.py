"""Score the digit-slide cohort grid (issue 16): train on each cell's training slides, score its held-out slides.

    python tools/bench_cohorts.py --cells intermixed-r300-n200-p28     # one cell -> docs/results/cohort-<cell>.json
    python tools/bench_cohorts.py --grid small                          # every cell of a grid, one after another
    python tools/bench_cohorts.py --summary-only                        # table + plot of the JSONs already there

For each cell (``tools/make_cohort.py``: slides built or reused from ``--work``):

1. ``train_ucc`` with ``--config`` (default ``configs/digit-slide.yaml``) on the cell's training tiles, changing
   only ``model.input_size`` to the cell's patch size and dropping the time budget (``train.max_minutes=null``):
   fixed step counts, so a busy machine changes the time taken, not the result. Then ``refine_run`` when the
   config refines. Training sees count-only regions, never a patch label.
2. ``segment_run`` on the training, validation and test tiles with the slides' ground-truth masks: the k-means
   fitted on the training tiles labels every patch. Recorded per slide: patch accuracy, NMI, ARI, per-class
   Dice, the patches of each cluster and their true digits (which digits merged), and from the training log the
   count accuracy on the training regions and on the held-out regions (``data.val_fraction`` of them).

Writes ``<out-dir>/cohort-<cell>.json`` per cell, then ``<out-dir>/cohort-summary.json``, a markdown table on
stdout and ``--plot`` (test and validation patch accuracy per cell) from every cohort JSON in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from make_cohort import Cell, add_cell_arguments, build_cell, select  # noqa: E402
from repo_paths import command, machine, relative  # noqa: E402


def patch_labels(mask_path: Path, coords: np.ndarray, patch: int) -> np.ndarray:
    """True digit (N,) of every patch: the mask pixel under its centre minus 1 (-1 = glass or margin)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(mask_path) as img:
        mask = np.asarray(img)
    centre = np.asarray(coords, np.int64) + patch // 2
    return mask[centre[:, 1], centre[:, 0]].astype(np.int64) - 1


def cluster_table(clusters: np.ndarray, labels: np.ndarray, k: int) -> dict:
    """Per cluster: its size and how many of its patches are each digit; and which digits share a majority."""
    table = {}
    majority: dict[int, list[int]] = {}
    for c in range(k):
        digits = np.bincount(labels[(clusters == c) & (labels >= 0)], minlength=10)
        table[str(c)] = {"patches": int((clusters == c).sum()),
                         "digits": {str(d): int(n) for d, n in enumerate(digits) if n}}
        if digits.sum():
            majority.setdefault(int(digits.argmax()), []).append(c)
    unlabelled = [d for d in range(10) if d not in majority and (labels == d).any()]
    return {"clusters": table, "digits_without_own_cluster": unlabelled,
            "digits_with_several_clusters": {str(d): cs for d, cs in majority.items() if len(cs) > 1}}


def count_accuracy(log: list[dict]) -> dict:
    """Count (ucc) accuracy from the training log: last training batch and held-out regions, last and best."""
    train = [r["ucc_acc"] for r in log if "ucc_acc" in r]
    val = [r["val_ucc_acc"] for r in log if "val_ucc_acc" in r]
    return {"train_regions_last": train[-1] if train else None,
            "held_out_regions_last": val[-1] if val else None, "held_out_regions_best": max(val) if val else None}


def git_commit() -> str:
    """The commit the tools and package ran from, with ``+dirty`` when the tree had changes."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def run_cell(cell: Cell, args: argparse.Namespace) -> dict:
    """Build, train, refine and score one cell; return its result dict."""
    from pathoucc.config import load_config
    from pathoucc.options import SegmentOptions
    from pathoucc.pipeline import refine_run
    from pathoucc.segment import segment_run
    from pathoucc.training.train import train_ucc

    wall = time.perf_counter()
    commit = git_commit()  # the code that runs, before anything is committed while it trains
    built = build_cell(cell, args.work, args.data_dir)
    timings = {"slides_and_tiles_s": time.perf_counter() - wall}
    tiles = [*built["train_tiles"], built["val_tiles"], built["test_tiles"]]
    overrides = [f"data.train_tiles=[{','.join(str(p) for p in built['train_tiles'])}]",
                 f"data.test_tiles=[{built['val_tiles']}]", f"model.input_size={cell.patch}",
                 "train.max_minutes=null", *([f"seed={args.seed}"] if args.seed is not None else [])]
    cfg = load_config(args.config, overrides)
    run = built["folder"] / f"run-seed{cfg.seed}"
    reused = args.reuse_run and (run / "model.pt").exists() and not built["made"]
    if args.refine_again:
        if built["made"] or not (run / "model-ucc.pt").exists():
            raise SystemExit(f"error: {run}: no trained UCC model (model-ucc.pt) of these slides to refine again")
        timings = json.loads((run / "timings.json").read_text()) if (run / "timings.json").exists() else timings
        _same_but_refine(load_config(run / "config.yaml"), cfg, run)
        start = time.perf_counter()
        refine_run(run, [f"refine.{key}={json.dumps(value)}" for key, value in cfg.to_dict()["refine"].items()],
                   progress=sys.stderr.isatty())
        timings["refine_again_s"] = time.perf_counter() - start
        (run / "timings.json").write_text(json.dumps(timings) + "\n")
    elif reused:
        timings = json.loads((run / "timings.json").read_text()) if (run / "timings.json").exists() else timings
    else:
        resume = args.resume and (run / "checkpoint.pt").exists() and not built["made"]
        if run.exists() and not resume:
            shutil.rmtree(run)
        start = time.perf_counter()
        train_ucc(cfg, run, resume=resume, progress=sys.stderr.isatty())
        timings["train_ucc_s"] = time.perf_counter() - start
        if cfg.refine.steps:
            refine_run(run, progress=sys.stderr.isatty())
        timings["train_s"] = time.perf_counter() - start
        (run / "timings.json").write_text(json.dumps(timings) + "\n")
    start = time.perf_counter()
    seg = segment_run(run, tiles, out=run / "segments", options=SegmentOptions(mask=built["folder"]))
    timings["segment_s"] = time.perf_counter() - start
    timings["total_s"] = time.perf_counter() - wall
    usage = resource.getrusage(resource.RUSAGE_SELF)
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    slides = {}
    for path, result in zip(tiles, seg.slides, strict=True):
        labels = patch_labels(built["folder"] / f"{path.stem}_mask.png", result.coords, cell.patch)
        slides[path.stem] = {"scores": result.scores, **cluster_table(result.clusters, labels, seg.kmeans.k)}
    generator = json.loads((built["folder"] / "generator.json").read_text())
    return {
        "cell": cell.name, "date": date.today().isoformat(), "command": command("bench_cohorts.py", sys.argv[1:]),
        "machine": machine(), "git_commit": commit, "seed": cfg.seed,
        "recipe": built["recipe"], "generator": generator,
        "config": {"file": relative(args.config), "overrides": overrides, "resolved": cfg.to_dict()},
        "test_patch_accuracy": slides["test"]["scores"]["patches"]["accuracy"],
        "val_patch_accuracy": slides["val"]["scores"]["patches"]["accuracy"],
        "count_accuracy": count_accuracy(log), "slides": slides,
        "refine": json.loads((run / "refine.json").read_text()) if (run / "refine.json").exists() else None,
        "refined_again": bool(args.refine_again),
        "timings_s": {k: round(v, 1) for k, v in timings.items()}, "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
        "training_log": [r for r in log if any(k.startswith("val") for k in r)],
    }


def _same_but_refine(trained, cfg, run: Path) -> None:
    """Refuse to refine ``run`` again unless its UCC training had ``cfg``'s settings (``refine`` aside)."""
    old, new = trained.to_dict(), cfg.to_dict()
    old.pop("refine"), new.pop("refine")
    if old != new:
        keys = sorted(f"{section}.{key}" for section in new for key in new[section] or {}
                      if isinstance(new[section], dict) and old.get(section, {}).get(key) != new[section][key])
        changed = ", ".join(keys) or "top-level keys"
        raise SystemExit(f"error: {run}: its UCC model was trained with other settings ({changed}); train it again")


def _plain(value: object) -> object:
    """JSON form of numpy scalars and paths."""
    return value.item() if isinstance(value, np.generic) else str(value)


def _two(value: float | None) -> str:
    """``0.78`` for a number, ``-`` when the log had none."""
    return "-" if value is None else f"{value:.2f}"


def summarise(out_dir: Path, plot: Path | None) -> list[dict]:
    """One row per ``cohort-<cell>.json`` in ``out_dir``: print the markdown table, write the summary and plot."""
    rows = []
    for path in sorted(out_dir.glob("cohort-*.json")):
        try:
            Cell.parse(re.sub(r"-seed\d+$", "", path.stem.removeprefix("cohort-")))
        except ValueError:
            continue  # another benchmark's file (cohort-memory.json, the summary)
        r = json.loads(path.read_text())
        test = r["slides"]["test"]
        rows.append({"cell": r["cell"], "seed": r["seed"], "test_patch_accuracy": r["test_patch_accuracy"],
                     "val_patch_accuracy": r["val_patch_accuracy"], "test_nmi": test["scores"]["patches"]["nmi"],
                     "train_slides_patch_accuracy": [s["scores"]["patches"]["accuracy"]
                                                     for n, s in r["slides"].items() if n.startswith("train")],
                     "count_accuracy": r["count_accuracy"], "digits_without_own_cluster":
                         test["digits_without_own_cluster"], "file": relative(path)})
    (out_dir / "cohort-summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| cell | seed | test patch acc | val patch acc | test NMI | count acc train / held-out | merged digits |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        c = row["count_accuracy"]
        print(f"| {row['cell']} | {row['seed']} | {row['test_patch_accuracy']:.4f} | {row['val_patch_accuracy']:.4f} "
              f"| {row['test_nmi']:.4f} | {_two(c['train_regions_last'])} / {_two(c['held_out_regions_last'])} "
              f"| {', '.join(map(str, row['digits_without_own_cluster'])) or '-'} |")
    if plot is not None and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 3, 4))
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["test_patch_accuracy"] for r in rows], 0.4, label="test slide (held out)")
        ax.bar(x + 0.2, [r["val_patch_accuracy"] for r in rows], 0.4, label="validation slide")
        ax.axhline(0.97, color="k", lw=0.8, ls="--", label="target 0.97")
        ax.set_xticks(x, [f"{r['cell']} seed {r['seed']}" for r in rows], rotation=20, ha="right", fontsize=8)
        lowest = min(min(r["test_patch_accuracy"], r["val_patch_accuracy"]) for r in rows)
        ax.set_ylim(min(0.8, np.floor((lowest - 0.02) * 20) / 20), 1.04)  # every bar shows its top
        ax.set_ylabel("patch accuracy")
        ax.legend(loc="upper center", ncol=3, fontsize=8)
        fig.tight_layout()
        plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=110)
        plt.close(fig)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_arguments(parser)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "digit-slide.yaml")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the config's)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "cohort-grid.png")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--reuse-run", action="store_true",
                        help="score the cell's finished run of this seed again instead of training it (same cached "
                             "slides only)")
    again.add_argument("--resume", action="store_true",
                        help="continue the cell's interrupted run of this seed from its last checkpoint (same cached "
                             "slides only; the result equals an uninterrupted run)")
    again.add_argument("--refine-again", action="store_true",
                        help="keep the cell's trained UCC model of this seed (model-ucc.pt, same settings but "
                             "refine.*) and redo only the refinement with the config's refine settings")
    parser.add_argument("--summary-only", action="store_true", help="train nothing: table and plot only")
    args = parser.parse_args(argv)
    try:
        cells = [] if args.summary_only else select(args.cells, args.grid)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    for cell in cells:
        result = run_cell(cell, args)
        suffix = "" if args.seed is None else f"-seed{result['seed']}"
        out = args.out_dir / f"cohort-{cell.name}{suffix}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=_plain) + "\n")
        print(f"{cell.name}: test {result['test_patch_accuracy']:.4f} val {result['val_patch_accuracy']:.4f} "
              f"-> {out}", file=sys.stderr)
    summarise(args.out_dir, args.plot)


if __name__ == "__main__":
    main()
