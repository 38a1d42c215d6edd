"""Named map accuracy on a cohort cell's held-out digit slides: a finished run named by a few labelled patches.

    python tools/bench_named_slide.py --cell intermixed-r300-n200-p28 --seed 1     # from the folder holding bench/
    python tools/bench_named_slide.py --summary-only                               # the table of the JSONs there

For a finished run of a cell (``tools/bench_cohorts.py``: ``<work>/<cell>/run-seed<S>/``, never retrained here) and
for each number of labelled patches per class (``--per-class``, default 5 and 20) and each seeded draw
(``--draws``, default 5; draw ``d`` uses seed ``--draw-seed + d``):

1. pick that many patches of every digit from the cell's TRAINING slides only (a user would click them there;
   their digit is the training mask's pixel under the patch centre) and write them as the package's labelled
   examples CSV (``slide,x,y,class``, the patch centres in level-0 pixels, classes ``0``..``9``);
2. ``segment_run`` of the validation and test tiles with those examples (``SegmentOptions.examples``): the
   ``examples`` fit names the clusters, the package writes its maps, CSV and GeoJSON;
3. score the NAMED map, no matching: the share of a slide's tissue patches (mask pixel under the centre) whose
   cluster's name is their digit (a cluster without a name is wrong), per digit too, and the unnamed clusters.

The run itself is untouched: the fits and maps go to a scratch view of it (its model file linked, its ``train``
k-means copied). For reference the same run's ``train`` k-means is scored unnamed (Hungarian matching, the
cohort benchmark's number). Writes ``<out-dir>/named-slide-<cell>-seed<S>[-<tag>].json`` (command, machine,
date, git commit, every draw's examples and scores) and prints the summary table of every such JSON there.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_cohorts import git_commit, patch_labels  # noqa: E402
from make_cohort import CLASSES  # noqa: E402
from repo_paths import command, machine, relative  # noqa: E402

MACHINE = "2 vCPU x86_64, no GPU, 24 GB"
TARGET = 0.98  # named map accuracy on the held-out slide with 5 labelled patches per class


def training_patches(train_tiles: list[Path], cell_folder: Path) -> list[dict]:
    """Per training tile file: its slide's file name, patch side (level-0 px), patch top-lefts (N, 2) and the
    training mask's digit of each patch (N,) (-1 = glass or margin)."""
    from pathoucc.slides.tilefile import open_tiles

    out = []
    for path in train_tiles:
        with open_tiles(path) as tiles:
            coords = np.asarray(tiles.coords, np.int64)
            slide = Path(tiles.slide_path).name if tiles.slide_path else f"{path.stem}.tif"
        extent = _extent(path)
        labels = patch_labels(cell_folder / f"{path.stem}_mask.png", coords, extent)
        out.append({"tiles": path, "slide": slide, "extent": extent, "coords": coords, "labels": labels})
    return out


def draw_examples(patches: list[dict], per_class: int, seed: int) -> list[dict]:
    """``per_class`` patches of every digit drawn without replacement (seeded) from all training patches of that
    digit; one row ``{slide, x, y, class}`` per patch, ``x, y`` its centre. Raises if a digit has too few."""
    rng = np.random.default_rng(seed)
    slide = np.concatenate([np.full(len(p["labels"]), i) for i, p in enumerate(patches)])
    row = np.concatenate([np.arange(len(p["labels"])) for p in patches])
    labels = np.concatenate([p["labels"] for p in patches])
    rows = []
    for digit, name in enumerate(CLASSES):
        pool = np.flatnonzero(labels == digit)
        if len(pool) < per_class:
            raise SystemExit(f"error: digit {name} has only {len(pool)} training patches, fewer than {per_class}")
        for i in np.sort(rng.choice(pool, per_class, replace=False)):
            p = patches[slide[i]]
            x, y = (p["coords"][row[i]] + p["extent"] // 2).tolist()
            rows.append({"slide": p["slide"], "x": int(x), "y": int(y), "class": name})
    return rows


def write_examples(rows: list[dict], path: Path) -> Path:
    """The labelled examples as the package's ``slide,x,y,class`` CSV."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["slide", "x", "y", "class"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def named_scores(clusters: np.ndarray, cluster_names: list[str], labels: np.ndarray,
                 scored: np.ndarray | None = None) -> dict:
    """The named map's scores on patches with a digit (``labels`` >= 0; ``scored`` (N,) bool narrows them, e.g.
    to non-examples): ``accuracy`` (cluster name == digit), ``per_class`` accuracy, the clusters without a class
    name and the share of scored patches they hold."""
    keep = (labels >= 0) if scored is None else (labels >= 0) & scored
    names = np.asarray(cluster_names, dtype=object)[clusters[keep]]
    truth = np.asarray(CLASSES, dtype=object)[labels[keep]]
    unnamed = [c for c, n in enumerate(cluster_names) if n not in CLASSES]
    return {"accuracy": float(np.mean(names == truth)) if keep.any() else 0.0, "num_patches": int(keep.sum()),
            "per_class": {d: float(np.mean(names[truth == d] == d)) for d in CLASSES if (truth == d).any()},
            "unnamed_clusters": len(unnamed), "unnamed_share": float(np.isin(clusters[keep], unnamed).mean())}


def _scratch_run(run: Path, scratch: Path) -> Path:
    """A view of ``run`` whose k-means files may be overwritten: the model linked, the ``train`` k-means copied."""
    view = scratch / "run"
    view.mkdir(parents=True)
    (view / "model.pt").symlink_to((run / "model.pt").resolve())
    for km in run.glob("kmeans-k*.npz"):
        shutil.copy2(km, view / km.name)
    return view


def score_slides(view: Path, tiles: list[Path], cell_folder: Path, out: Path, examples: Path | None) -> dict:
    """``segment_run`` of ``tiles`` (with ``examples``: the named fit) -> per slide the named scores (or, without
    examples, the package's Hungarian-matched patch scores) and the fit's names and notes."""
    from pathoucc.options import SegmentOptions
    from pathoucc.segment import segment_run

    options = SegmentOptions(mask=cell_folder, device="cpu", examples=examples,
                             classes=CLASSES if examples else None)
    report = segment_run(view, tiles, out=out, options=options, slide_dir=cell_folder)
    slides = {}
    for seg in report.slides:
        labels = patch_labels(cell_folder / f"{seg.name}_mask.png", seg.coords, _extent(seg.tiles_path))
        not_example = seg.examples < 0 if seg.examples is not None else None
        if examples is None:
            slides[seg.name] = {"hungarian_patch_accuracy": seg.scores["patches"]["accuracy"],
                                "nmi": seg.scores["patches"]["nmi"]}
        else:
            slides[seg.name] = named_scores(seg.clusters, seg.cluster_names, labels, not_example) | {
                "package_named_patch_accuracy": seg.scores["named"]["patches"]["accuracy"],
                "hungarian_patch_accuracy": seg.scores["patches"]["accuracy"],
                "num_examples": int((seg.examples >= 0).sum()) if seg.examples is not None else 0,
                "folder": str(seg.extra["folder"])}
    return {"slides": slides, "cluster_names": report.kmeans.cluster_names, "notes": report.notes}


def _extent(path: Path) -> int:
    """The level-0 side of a tile file's patches."""
    from pathoucc.slides.tilefile import open_tiles

    with open_tiles(path) as tiles:
        return round(tiles.patch_size * tiles.downsample)


def _data_base(cfg_tiles: list[str], cell_folder: Path) -> Path:
    """The folder the run's (relative) data paths start from: the working folder or one above the cell."""
    for base in [Path.cwd(), *cell_folder.resolve().parents]:
        if all((base / p).exists() for p in cfg_tiles):
            return base
    raise SystemExit(f"error: {cell_folder}: the run's training tiles ({cfg_tiles[0]}, ...) are not found from here "
                     "or any folder above the cell; run from the folder that holds bench/")


def run_bench(cell_folder: Path, run: Path, per_class: list[int], draws: int, draw_seed: int,
              keep: Path | None = None) -> dict:
    """Every draw of every ``per_class``; returns the result dict (see the module docstring). ``keep``: a folder
    to leave the maps and examples files in (default: a scratch folder, deleted)."""
    from pathoucc.run import load_run

    cfg, _ = load_run(run)
    base = _data_base([str(p) for p in cfg.data.train_tiles], cell_folder)
    here = Path.cwd()
    cell_folder, run = cell_folder.resolve(), run.resolve()
    scratch = Path(tempfile.mkdtemp(prefix="named-slide-"))
    os.chdir(base)
    try:
        train = [Path(p) for p in cfg.data.train_tiles]
        held_out = [cell_folder / "tiles" / "val.h5", cell_folder / "tiles" / "test.h5"]
        patches = training_patches(train, cell_folder)
        view = _scratch_run(run, scratch)
        out = keep.resolve() if keep else scratch
        start = time.perf_counter()
        unnamed = score_slides(view, held_out, cell_folder, out / "unnamed", None)
        results = {"run_refine": cfg.to_dict()["refine"], "draws": [],
                   "unnamed": unnamed | {"seconds": round(time.perf_counter() - start, 1)}}
        for n in per_class:
            for d in range(draws):
                start = time.perf_counter()
                rows = draw_examples(patches, n, draw_seed + d)
                folder = out / f"n{n}-draw{d}"
                folder.mkdir(parents=True, exist_ok=True)
                path = write_examples(rows, folder / "examples.csv")
                scored = score_slides(view, held_out, cell_folder, folder, path)
                results["draws"].append({"per_class": n, "draw": d, "seed": draw_seed + d, "examples": rows,
                                         **scored, "seconds": round(time.perf_counter() - start, 1)})
                test = scored["slides"]["test"]
                print(f"{n}/class draw {d}: test named {test['accuracy']:.4f} val named "
                      f"{scored['slides']['val']['accuracy']:.4f}", file=sys.stderr)
    finally:
        os.chdir(here)
        shutil.rmtree(scratch, ignore_errors=True)
    results["summary"] = {str(n): _summary([r for r in results["draws"] if r["per_class"] == n]) for n in per_class}
    return results


def _summary(draws: list[dict]) -> dict:
    """Mean, min and max over draws of the test and validation named accuracy; worst digit of the test slide."""
    out = {}
    for slide in ("test", "val"):
        acc = np.array([r["slides"][slide]["accuracy"] for r in draws])
        out[slide] = {"mean": float(acc.mean()), "min": float(acc.min()), "max": float(acc.max()),
                      "std": float(acc.std())}
    per_class = {d: float(np.mean([r["slides"]["test"]["per_class"][d] for r in draws])) for d in CLASSES}
    worst = min(per_class, key=per_class.get)
    out["test_per_class_mean"] = per_class
    out["test_worst_digit"] = {"digit": worst, "accuracy": per_class[worst]}
    out["unnamed_clusters_max"] = max(r["slides"]["test"]["unnamed_clusters"] for r in draws)
    return out


def summarise(out_dir: Path) -> list[dict]:
    """Print the markdown table of every ``named-slide-*.json`` in ``out_dir``; return its rows."""
    rows = []
    for path in sorted(out_dir.glob("named-slide-*.json")):
        r = json.loads(path.read_text())
        if "summary" not in r:  # a partial record (a run stopped before it could be scored)
            continue
        ref = r["unnamed"]["slides"]
        for n, s in r["summary"].items():
            rows.append({"cell": r["cell"], "run": r["run"], "per_class": int(n), "draws": r["draws_per_count"],
                         "test": s["test"], "val": s["val"], "worst": s["test_worst_digit"],
                         "hungarian_test": ref["test"]["hungarian_patch_accuracy"],
                         "hungarian_val": ref["val"]["hungarian_patch_accuracy"], "file": relative(path)})
    print("| cell | run | labelled / class | draws | test named acc mean (min-max) | val named acc mean (min-max) "
          "| worst test digit | unnamed (Hungarian) test / val |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        t, v, w = row["test"], row["val"], row["worst"]
        print(f"| {row['cell']} | {row['run']} | {row['per_class']} | {row['draws']} | {t['mean']:.4f} "
              f"({t['min']:.4f}-{t['max']:.4f}) | {v['mean']:.4f} ({v['min']:.4f}-{v['max']:.4f}) "
              f"| {w['digit']}: {w['accuracy']:.4f} | {row['hungarian_test']:.4f} / {row['hungarian_val']:.4f} |")
    return rows


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/cohorts"), help="the folder of the cell folders")
    parser.add_argument("--cell", help="the cell's name, e.g. intermixed-r300-n200-p28")
    parser.add_argument("--seed", type=int, default=0, help="the run's training seed: its folder run-seed<S>")
    parser.add_argument("--run", default=None, help="another run folder name inside the cell (default run-seed<S>)")
    parser.add_argument("--per-class", type=int, nargs="+", default=[5, 20], help="labelled patches per digit")
    parser.add_argument("--draws", type=int, default=5, help="seeded draws per count")
    parser.add_argument("--draw-seed", type=int, default=0, help="the first draw's seed")
    parser.add_argument("--tag", default="", help="appended to the JSON's name (another run of the same cell)")
    parser.add_argument("--keep", type=Path, default=None, help="leave the examples files and maps in this folder")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--summary-only", action="store_true", help="score nothing: the table of the JSONs")
    args = parser.parse_args(argv)
    result = None
    if not args.summary_only:
        if not args.cell:
            parser.error("--cell is required (or --summary-only)")
        if args.draws < 1 or min(args.per_class) < 1:
            parser.error("--draws and --per-class must be positive")
        cell_folder = args.work / args.cell
        run = cell_folder / (args.run or f"run-seed{args.seed}")
        if not (run / "model.pt").is_file():
            raise SystemExit(f"error: {run}: no finished run (model.pt); train it with tools/bench_cohorts.py")
        commit = git_commit()
        start = time.perf_counter()
        scored = run_bench(cell_folder, run, args.per_class, args.draws, args.draw_seed, args.keep)
        result = {"cell": args.cell, "run": run.name, "date": date.today().isoformat(),
                  "command": command("bench_named_slide.py", sys.argv[1:] if argv is None else argv),
                  "machine": {"summary": MACHINE} | machine(), "git_commit": commit, "target": TARGET,
                  "per_class": args.per_class, "draws_per_count": args.draws, **scored,
                  "seconds": round(time.perf_counter() - start, 1)}
        out = args.out_dir / f"named-slide-{args.cell}-seed{args.seed}{'-' + args.tag if args.tag else ''}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"-> {out}", file=sys.stderr)
    summarise(args.out_dir)
    return result


if __name__ == "__main__":
    main()
