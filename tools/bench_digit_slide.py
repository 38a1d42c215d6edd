"""Digit-slide benchmark, end to end: make slides with a known answer, tile them, train, segment, score.

SUPERSEDED by ``tools/bench_slide_heldout.py`` (issue 8): this benchmark's test slide is drawn from the same MNIST
*training* digits as its training slide, so its score is not a held-out result. Kept to reproduce the old numbers
(``docs/results/digit-slide.json``); it pins the settings it was run with (``OLD_BAGS``), since
``configs/digit-slide.yaml`` now describes the held-out benchmark.

    python tools/bench_digit_slide.py --work data/digit-slide

1. ``tools/make_digit_slide.py``: a training slide (256×256 digits) and a test slide (64×64 digits, other
   seed), every 32-px cell one MNIST training digit, every 2×2-cell region a bag with 1-4 digit classes;
2. ``pathoucc tile`` both with their label masks (32-px patches, 64-px regions);
3. ``pathoucc train configs/digit-slide.yaml``;
4. ``pathoucc segment`` the test slide and score the map against its ground-truth mask.

Slides and tiles are reused when present. Prints a markdown table; writes ``results.json`` into the run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_BAGS = ["bags.bag_size=4", "bags.bags_per_batch=160", "bags.instances_per_batch=null",  # 2 x 2-patch regions
            "model.kde_pool=mean", "train.steps=1500", "train.max_minutes=null", "data.streaming=true"]
sys.path.insert(0, str(ROOT / "tools"))

from repo_paths import command, relative  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("data/digit-slide"))
    parser.add_argument("--data-dir", default="data", help="MNIST cache folder")
    parser.add_argument("--run", type=Path, default=Path("runs/digit-slide"))
    parser.add_argument("--train-grid", type=int, default=256, help="digits per side of the training slide")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=value")
    args = parser.parse_args()

    from make_digit_slide import make_digit_slide

    from pathoucc.cluster.evaluate import evaluate_run
    from pathoucc.config import load_config
    from pathoucc.options import SegmentOptions
    from pathoucc.segment import segment_run
    from pathoucc.slides.tiler import tile_slides
    from pathoucc.training.train import train_ucc

    timings = {}
    tiles = args.work / "tiles"
    start = time.perf_counter()
    for name, grid, seed in (("train", (args.train_grid,) * 2, 1), ("test", (64, 64), 2)):
        slide = args.work / f"{name}.tif"
        if not slide.exists():
            make_digit_slide(slide, grid=grid, region_cells=2, seed=seed, data_dir=args.data_dir)
        report = tile_slides([slide], tiles, annotations=args.work / f"{name}_mask.png", annotation_kind="mask",
                             patch_size=32, stride=32, level=0, region_size=64)
        if report.failed:
            sys.exit(f"tiling failed: {report.failed}")
    timings["slides_and_tiles_s"] = time.perf_counter() - start

    overrides = [f"data.train_tiles=[{tiles / 'train.h5'}]", f"data.test_tiles=[{tiles / 'test.h5'}]",
                 *OLD_BAGS, *args.overrides]
    cfg = load_config(ROOT / "configs" / "digit-slide.yaml", overrides)
    start = time.perf_counter()
    resume = (args.run / "checkpoint.pt").exists()
    patch_scores = evaluate_run(train_ucc(cfg, args.run, resume=resume, progress=sys.stderr.isatty()))
    timings["train_and_evaluate_s"] = time.perf_counter() - start

    start = time.perf_counter()
    seg = segment_run(args.run, [tiles / "test.h5"], out=args.run / "segments",
                      options=SegmentOptions(mask=args.work / "test_mask.png")).slides[0]
    timings["segment_s"] = time.perf_counter() - start
    result = {
        "date": date.today().isoformat(),
        "command": command("bench_digit_slide.py", sys.argv[1:]),
        "config": {"file": "configs/digit-slide.yaml", "resolved": cfg.to_dict() | {"data": cfg.data.model_dump() | {
            "train_tiles": [relative(p) for p in cfg.data.train_tiles],
            "test_tiles": [relative(p) for p in cfg.data.test_tiles]}}},
        "test_patches_clustering": patch_scores,
        "segmentation_scores": seg.scores,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    (args.run / "results.json").write_text(json.dumps(result, indent=2, default=float))
    s = seg.scores or {"patches": {}, "map": {}}
    print("| test patches: k-means accuracy | NMI | ARI | segment (shared k-means): patch accuracy | map accuracy "
          "| mean Dice | train + evaluate |\n|---|---|---|---|---|---|---|")
    print(f"| {patch_scores['accuracy']:.4f} | {patch_scores['nmi']:.4f} | {patch_scores['ari']:.4f} "
          f"| {s['patches'].get('accuracy', float('nan')):.4f} | {s['map'].get('accuracy', float('nan')):.4f} "
          f"| {s['map'].get('mean_dice', float('nan')):.4f} | {timings['train_and_evaluate_s'] / 60:.1f} min |")
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
