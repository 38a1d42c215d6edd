"""IIC on a digit-slide cohort cell, at the time budget of the cell's UCC run: no labels, no counts.

IIC (:mod:`pathoucc.training.iic`, the MNIST baseline's settings: 5 sub-heads, over-clustering heads, random affine
pairs) trains on the patches of the cell's training regions (the run's ``data`` section: the same patches the UCC
run trained on) for ``--minutes`` (default: the run's own ``train_s`` in ``timings.json``, UCC training plus
refinement); then the kept sub-head clusters every tissue patch of the validation and test slides, scored as
``tools/bench_cohorts.py`` scores (the mask pixel under each patch centre; Hungarian accuracy, NMI, ARI)::

    python tools/bench_iic_slide.py --cell intermixed-r300-n200-p28 --seed 1     # from the folder holding bench/

Writes ``<out-dir>/iic-slide-<cell>-seed<S>.json`` (command, machine, date, budget, steps, scores, cluster sizes).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def run_bench(cell_folder: Path, run: Path, minutes: float | None, steps: int | None = None) -> dict:
    """Train IIC under the budget and score the held-out slides; returns the result dict."""
    from bench_cohorts import patch_labels

    from pathoucc.cluster.baselines import iic_clusters
    from pathoucc.cluster.metrics import cluster_sizes, clustering_scores
    from pathoucc.data.sources import load_pools, pool_from_tiles
    from pathoucc.run import load_run
    from pathoucc.slides.tilefile import open_tiles
    from pathoucc.training.iic import train_iic

    cfg, _ = load_run(run)
    if minutes is None:
        minutes = json.loads((run / "timings.json").read_text())["train_s"] / 60
    cfg.train.max_minutes = minutes
    cfg.train.steps = steps or 10**7
    pool = load_pools(cfg.data, ("train",))["train"]
    start = time.perf_counter()
    net, last = train_iic(cfg, pool, k=10, progress=sys.stderr.isatty())
    out = {"budget_minutes": round(minutes, 2), "steps": last["step"], "train_seconds": last["elapsed_s"],
           "head": last["head"], "head_losses": last["head_losses"], "train_patches": len(pool), "slides": {}}
    for name in ("val", "test"):
        tiles = cell_folder / "tiles" / f"{name}.h5"
        held = pool_from_tiles([str(tiles)], need_regions=False)
        with open_tiles(tiles) as f:
            labels = patch_labels(cell_folder / f"{name}_mask.png", f.coords, round(f.patch_size * f.downsample))
        clusters = iic_clusters(net, held.read(np.arange(len(held))))
        known = labels >= 0
        scores = clustering_scores(labels[known], clusters[known])
        out["slides"][name] = {k: round(float(v), 4) for k, v in scores.items()} | {
            "patches": int(known.sum()), "cluster_sizes": cluster_sizes(clusters[known], 10)}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench/cohorts"), help="the folder of the cell folders")
    parser.add_argument("--cell", required=True, help="the cell's name, e.g. intermixed-r300-n200-p28")
    parser.add_argument("--seed", type=int, default=0, help="the UCC run's seed: its folder run-seed<S>")
    parser.add_argument("--minutes", type=float, default=None, help="IIC's budget (default: the UCC run's train_s)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps (default: the budget)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "results")
    args = parser.parse_args()
    cell_folder = args.work / args.cell
    result = {"cell": args.cell, "run": f"run-seed{args.seed}", "date": time.strftime("%Y-%m-%d"),
              "command": "python tools/bench_iic_slide.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
              "git_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                           text=True).stdout.strip()}
    result |= run_bench(cell_folder, cell_folder / f"run-seed{args.seed}", args.minutes, args.steps)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"iic-slide-{args.cell}-seed{args.seed}.json"
    path.write_text(json.dumps(result, indent=1))
    for name, s in result["slides"].items():
        print(f"{args.cell} {name}: accuracy {s['accuracy']:.4f} NMI {s['nmi']:.4f} ({result['steps']} steps in "
              f"{result['train_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
