"""Held-out digit-slide benchmark (issue 8, item 5): train on one slide, test on a slide of unseen digits.

    python tools/bench_slide_heldout.py --work bench/heldout --run bench/heldout/run --eval test \\
        --out docs/results/digit-slide-heldout.json

1. ``tools/make_digit_slide.py --layout blobs``: a TRAIN slide of MNIST *training* digits (seed 1), a VALIDATION
   slide of other MNIST training digits (seed 3, for choosing hyper-parameters) and a TEST slide of the official
   MNIST *test* digits (seed 2). Each cell is one digit upscaled to 32 px; classes form smooth irregular blobs,
   some blobs are blank glass; regions are irregular count-only polygons (QuPath GeoJSON, ``properties.ucc``),
   tens to hundreds of patches each.
2. ``pathoucc tile SLIDE --geojson SLIDE_regions.geojson --classes 0,...,9 --patch-size 32 --level 0``: patches
   of tissue only (glass is not tiled), each count-only region one bag; no patch labels.
3. ``pathoucc train configs/digit-slide.yaml`` on the training tiles: every count-only region is one whole bag;
   then (``refine.steps``) the count-consistent refinement (``pathoucc.cluster.refine``) on the same regions' counts.
4. ``pathoucc segment RUN train.h5 EVAL.h5 --mask FOLDER``: the shared k-means (fitted on the training tiles)
   labels every patch; patches and the map are scored against each slide's ground-truth mask. The training slide's
   score is a training-data score; the held-out number is the TEST slide's (``--eval test``). ``--eval val``
   scores the validation slide only (hyper-parameter trials: the test slide is neither made nor read).

The validation slide draws from the same 50 000 MNIST training images as the training slide (about 84 % of its
digits also lie there); ``tools/bench_cohorts.py --cells blobs-r90-n950-p32`` rebuilds the same training and test
slides with a validation slide of the other 10 000 training images (disjoint digits), as one cell of the cohort
grid. This script stays as it was, so that the numbers recorded from it reproduce.

Slides and tiles are reused when present (the tiler re-tiles them when their inputs changed). Writes the result
JSON to ``--out`` (default ``<run>/results.json``) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from repo_paths import command, machine, relative  # noqa: E402

SLIDES = {"train": ("train", 1), "val": ("train", 3), "test": ("test", 2)}  # name: (MNIST split, seed)
CLASSES = [str(c) for c in range(10)]


def region_stats(tiles_path: Path) -> dict:
    from pathoucc.slides.tilefile import open_tiles

    with open_tiles(tiles_path) as tiles:
        sizes = np.bincount(tiles.region[tiles.region >= 0], minlength=tiles.num_regions)
        ucc = np.asarray(tiles.region_count)
        return {"patches": int(tiles.num_patches), "patches_in_regions": int(sizes.sum()),
                "regions": int(tiles.num_regions),
                "patches_per_region": {"min": int(sizes.min()), "median": float(np.median(sizes)),
                                       "mean": round(float(sizes.mean()), 1), "max": int(sizes.max())},
                "ucc_histogram": {int(u): int(n) for u, n in zip(*np.unique(ucc, return_counts=True), strict=True)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/heldout"), help="slides, masks, GeoJSON, tiles")
    parser.add_argument("--data-dir", default="data", help="MNIST cache folder")
    parser.add_argument("--run", type=Path, default=Path("bench/heldout/run"))
    parser.add_argument("--eval", choices=("val", "test"), default="test",
                        help="val: score the validation slide only (trials); test: the held-out test slide")
    parser.add_argument("--train-grid", type=int, default=320, help="digits per side of the training slide")
    parser.add_argument("--eval-grid", type=int, default=96, help="digits per side of the val and test slides")
    parser.add_argument("--region-cells", type=float, default=10.0, help="spacing of the region seeds, in cells")
    parser.add_argument("--min-region-patches", type=int, default=32, help="smaller regions are not written")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "digit-slide.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=value")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default <run>/results.json)")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first")
    parser.add_argument("--reuse-run", action="store_true",
                        help="do not train: score the finished run --run (a validation trial: the same training "
                             "slide, config and seed give the same model), with its own config; its trial's "
                             "results.json (command, training time, peak memory, validation scores) is copied in")
    args = parser.parse_args()

    from make_digit_slide import make_blob_digit_slide

    from pathoucc.config import load_config
    from pathoucc.options import SegmentOptions
    from pathoucc.pipeline import refine_run
    from pathoucc.segment import segment_run
    from pathoucc.slides.tiler import tile_slides
    from pathoucc.training.train import train_ucc

    wall = time.perf_counter()
    timings, made = {}, {}
    tiles = args.work / "tiles"
    start = time.perf_counter()
    for name in ("train", args.eval):
        split, seed = SLIDES[name]
        grid = args.train_grid if name == "train" else args.eval_grid
        slide = args.work / f"{name}.tif"
        if not slide.exists():
            summary = make_blob_digit_slide(slide, grid=(grid, grid), split=split, seed=seed,
                                            region_cells=args.region_cells, min_region_patches=args.min_region_patches,
                                            data_dir=args.data_dir)
            made[name] = {k: str(v) if isinstance(v, Path) else v for k, v in summary.items()}
        report = tile_slides([slide], tiles, annotations=args.work / f"{name}_regions.geojson",
                             annotation_kind="geojson", classes=CLASSES, patch_size=32, stride=32, level=0)
        if report.failed:
            sys.exit(f"tiling failed: {report.failed}")
    timings["slides_and_tiles_s"] = time.perf_counter() - start
    stats = {name: region_stats(tiles / f"{name}.h5") for name in ("train", args.eval)}

    trial = None
    if args.reuse_run:
        cfg = load_config(args.run / "config.yaml", [f"data.test_tiles=[{tiles / (args.eval + '.h5')}]"])
        if not (args.run / "model.pt").exists():
            sys.exit(f"{args.run} has no model.pt: train it first (--eval val)")
        trial = json.loads((args.run / "results.json").read_text()) if (args.run / "results.json").exists() else None
    overrides = [f"data.train_tiles=[{tiles / 'train.h5'}]", f"data.test_tiles=[{tiles / (args.eval + '.h5')}]",
                 *args.overrides]
    if not args.reuse_run:
        cfg = load_config(args.config, overrides)
        if args.fresh and args.run.exists():
            shutil.rmtree(args.run)
        start = time.perf_counter()
        train_ucc(cfg, args.run, resume=(args.run / "checkpoint.pt").exists(), progress=sys.stderr.isatty())
        timings["train_ucc_s"] = time.perf_counter() - start
        if cfg.refine.steps:
            refine_run(args.run, progress=sys.stderr.isatty())
        timings["train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    seg = segment_run(args.run, [tiles / "train.h5", tiles / f"{args.eval}.h5"], out=args.run / "segments",
                      options=SegmentOptions(mask=args.work))
    timings["segment_s"] = time.perf_counter() - start
    timings["total_s"] = time.perf_counter() - wall
    usage = resource.getrusage(resource.RUSAGE_SELF)
    timings["cpu_s"] = usage.ru_utime + usage.ru_stime  # not counting time the process was stopped (SIGSTOP)
    train_seg, eval_seg = seg.slides
    log_rows = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    history = [r for r in log_rows if any(k.startswith("val") for k in r)] + log_rows[-1:]
    result = {
        "date": date.today().isoformat(),
        "command": command("bench_slide_heldout.py", sys.argv[1:]),
        "machine": machine(),
        "held_out": args.eval == "test",
        "slides": {name: {"mnist_split": SLIDES[name][0], "seed": SLIDES[name][1],
                          "grid": args.train_grid if name == "train" else args.eval_grid,
                          "region_cells": args.region_cells, "min_region_patches": args.min_region_patches,
                          "tiles": stats[name], **({"generator": made[name]} if name in made else {})}
                   for name in ("train", args.eval)},
        "config": {"file": relative(args.run / "config.yaml") if args.reuse_run else relative(args.config),
                   "overrides": [] if args.reuse_run else args.overrides, "resolved": cfg.to_dict()},
        **({"training": {"reused_run": relative(args.run), "trial": trial}} if args.reuse_run else {}),
        f"{args.eval}_slide_scores": eval_seg.scores,
        "train_slide_scores_training_data": train_seg.scores,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
        "training_log": history,  # validation rows of metrics.jsonl (held-out regions of the train slide) + last row
        **({"refine": json.loads((args.run / "refine.json").read_text())}
           if (args.run / "refine.json").exists() else {}),
    }
    out = args.out or args.run / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    e, t = eval_seg.scores, train_seg.scores
    print(f"{args.eval} slide ({e['patches']['num_patches']} patches): accuracy {e['patches']['accuracy']:.4f} "
          f"NMI {e['patches']['nmi']:.4f} ARI {e['patches']['ari']:.4f} | map accuracy {e['map']['accuracy']:.4f} "
          f"Dice {e['map']['mean_dice']:.4f} IoU {e['map']['mean_iou']:.4f}")
    print(f"train slide (training data, {t['patches']['num_patches']} patches): accuracy "
          f"{t['patches']['accuracy']:.4f}")
    print(f"regions {json.dumps({k: v['patches_per_region'] for k, v in stats.items()})}")
    print(f"timings {result['timings_s']} peak RSS {result['peak_rss_gb']} GB -> {out}")


if __name__ == "__main__":
    main()
