"""Training throughput of the UCC head on feature files, and its memory against the number of rows streamed.

    nice -n 10 python tools/bench_feature_rows.py --work bench/feature-rows --rows 200000 2000000 --dim 256 \
        --throughput-rows 200000 --throughput-dims 1024 512 --threads 1 2 --workers 0 1 --steps 150 \
        --out docs/results/feature-rows.json

Writes synthetic cohorts of TRIDENT-layout feature files (``features`` (N, D) float32 in chunks of one row and
``coords`` (N, 2) int64 with TRIDENT's attributes, exactly as ``save_h5`` writes them; 10 000 rows a slide on a
100 x 100 grid of 256-px patches) and a count-only regions CSV per slide (8 x 8-patch windows, 64 rows each,
counts 1-4 drawn at random), then trains ``--steps`` steps of the UCC head (``mlp`` projection D -> ``--widths``
-> 10 features, KDE, count classifier; ``--decoder`` adds the feature decoder) on each cohort, each in its own
process, streamed from the files (``data.source: features``): the throughput cohort for every D, thread count
and DataLoader worker count given, the memory sweep with the first of each. Reports per run: rows per step,
training rows/s (steps x rows per step / training seconds, validation excluded), the time to open and check the
cohort, and the process's peak RSS (VmHWM). Features are random (the numbers measure speed and memory, not accuracy).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PER_FILE, GRID, EXTENT, WINDOW = 10_000, 100, 256, 8


def write_cohort(folder: Path, rows: int, dim: int, seed: int = 0) -> tuple[list[str], Path]:
    """``rows`` feature rows in files of ``PER_FILE`` (TRIDENT layout, kept if present) and the folder of their
    regions CSVs (one per slide)."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    ys, xs = np.divmod(np.arange(PER_FILE), GRID)
    coords = np.stack([xs * EXTENT, ys * EXTENT], 1).astype(np.int64)
    rng = np.random.default_rng(seed)
    paths = []
    regions = folder / "regions"
    regions.mkdir(exist_ok=True)
    for i in range(rows // PER_FILE):
        name = f"slide{i:04d}"
        path = folder / "features_synthetic" / f"{name}.h5"
        paths.append(str(path))
        lines = ["slide,x,y,width,height,ucc"]
        for r in range(0, GRID - WINDOW + 1, WINDOW):
            for c in range(0, GRID - WINDOW + 1, WINDOW):
                lines.append(f"{name},{c * EXTENT},{r * EXTENT},{WINDOW * EXTENT},{WINDOW * EXTENT},"
                             f"{int(rng.integers(1, 5))}")
        (regions / f"{name}.csv").write_text("\n".join(lines) + "\n")
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("features", (PER_FILE, dim), np.float32, maxshape=(None, dim), chunks=(1, dim))
            for a in range(0, PER_FILE, 2000):
                ds[a:a + 2000] = rng.standard_normal((2000, dim), np.float32)
            ds.attrs.update({"name": name, "savetodir": str(path.parent), "encoder": "synthetic"})
            cs = f.create_dataset("coords", data=coords, maxshape=(None, 2), chunks=(1, 2))
            cs.attrs.update({"patch_size": 256, "patch_size_level0": EXTENT, "level0_magnification": 20,
                             "target_magnification": 20, "overlap": 0, "name": name, "savetodir": str(folder),
                             "level0_width": GRID * EXTENT, "level0_height": GRID * EXTENT})
        tmp.rename(path)
    return paths, regions


def child(args: argparse.Namespace) -> None:
    """One training run in this process; prints one JSON line."""
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_mnist import peak_rss_gb

    from pathoucc.config import config_from_dict
    from pathoucc.data.sources import load_pools
    from pathoucc.training.train import fit_ucc, prepare_ucc

    paths = json.loads(Path(args.paths).read_text())
    cfg = config_from_dict({
        "name": "feature-rows", "seed": 0,
        "data": {"source": "features", "features": paths, "annotations": args.regions, "val_fraction": 0.0,
                 "num_workers": args.workers},
        "bags": {"bag_size": 64, "bags_per_batch": args.bags, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": "mlp", "widths": args.widths, "num_features": 10, "mlp": [384, 192],
                  "decoder": args.decoder, "decoder_widths": [128]},
        "train": {"steps": args.steps, "val_every": 10**6, "checkpoint_every": 10**6, "log_every": 50,
                  "device": "cpu", "num_threads": args.threads, "amp": False},
    })
    start = time.perf_counter()
    pools = load_pools(cfg.data, ("train",))
    opened = time.perf_counter() - start
    rss_open = peak_rss_gb()
    cfg.model.input_dim = pools["train"].shape[0]
    training = prepare_ucc(cfg, pools)  # what train_ucc runs, without its evaluation
    per_step = [len(training.sampler.sample(s, args.bags).instances) for s in range(args.steps)]
    run = Path(args.run)
    run.mkdir(parents=True)
    fit_ucc(training, cfg, run)
    elapsed = training.state.elapsed
    print(json.dumps({"rows": len(paths) * PER_FILE, "files": len(paths), "dim": cfg.model.input_dim,
                      "steps": args.steps, "rows_per_step": float(np.mean(per_step)),
                      "train_seconds": round(elapsed, 2), "rows_per_s": round(sum(per_step) / elapsed),
                      "open_and_check_s": round(opened, 1), "peak_rss_gb_after_open": round(rss_open, 3),
                      "peak_rss_gb": round(peak_rss_gb(), 3), "threads": args.threads, "workers": args.workers,
                      "widths": args.widths, "decoder": args.decoder}))


def run_one(work: Path, rows: int, dim: int, args: argparse.Namespace, threads: int, workers: int) -> dict:
    folder = work / f"cohort-{rows}-d{dim}"
    t = time.perf_counter()
    paths, regions = write_cohort(folder, rows, dim)
    write_s = time.perf_counter() - t
    (folder / "paths.json").write_text(json.dumps(paths))
    run = folder / f"run-{time.strftime('%H%M%S')}"
    cmd = [sys.executable, __file__, "--child", "--paths", str(folder / "paths.json"), "--regions", str(regions),
           "--run", str(run), "--steps", str(args.steps), "--bags", str(args.bags), "--threads", str(threads),
           "--workers", str(workers), "--widths", *map(str, args.widths), *(["--decoder"] if args.decoder else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1]) | {"write_s": round(write_s, 1)}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/feature-rows"))
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--throughput-rows", type=int, default=200_000)
    parser.add_argument("--throughput-dims", type=int, nargs="+", default=[1024, 512])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--bags", type=int, default=16, help="regions (of 64 rows) per step")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (throughput runs)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="DataLoader workers (throughput)")
    parser.add_argument("--widths", type=int, nargs="+", default=[128], help="model.widths of the projection")
    parser.add_argument("--decoder", action="store_true", help="with the feature decoder (model.decoder)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--regions", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.threads, args.workers = args.threads[0], args.workers[0]
        child(args)
        return
    throughput = [run_one(args.work, args.throughput_rows, dim, args, t, w)
                  for dim in args.throughput_dims for t in args.threads for w in args.workers]
    sweep = [run_one(args.work, rows, args.dim, args, args.threads[0], args.workers[0]) for rows in args.rows]
    if args.out is not None:
        command = "nice -n 10 python tools/bench_feature_rows.py " + " ".join(sys.argv[1:])
        args.out.write_text(json.dumps({
            "command": command, "machine": "2 vCPU x86_64, no GPU, 24 GB",
            "date": datetime.date.today().isoformat(), "throughput": throughput, "memory_sweep": sweep,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
