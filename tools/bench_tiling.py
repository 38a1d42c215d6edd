"""Benchmark tiling: throughput and peak memory on a ~10 000 px and a >= 40 000 px digit slide.

Each slide is generated once (cached under ``--cache``) and tiled by ``pathoucc tile`` in a child process; the
child's peak resident memory comes from ``os.wait4`` (``ru_maxrss`` of that child and its descendants). If memory is
bounded, the peak RSS of the big slide stays close to that of the small one although it has ~16x the patches.

    nice -n 10 python tools/bench_tiling.py --cache /tmp/pathoucc-bench
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELL, REGION_CELLS = 32, 8
SIZES = {"small": 304, "big": 1240}  # digit rows = cols; plus a margin of 2 x 8 cells: 10 240 and 40 192 px


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB of the child process tree)."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            raise SystemExit(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{log.read()}")
    rss_kib = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024
    return wall, rss_kib / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pathoucc-bench")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data", help="MNIST cache folder")
    parser.add_argument("--source", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compression", default="gzip")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.sizes:
        n = SIZES[name]
        slide = args.cache / f"digits_{n}.tif"
        mask = args.cache / f"digits_{n}_mask.png"
        if not (slide.exists() and mask.exists()):
            gen = [sys.executable, str(ROOT / "tools" / "make_digit_slide.py"), str(slide), "--grid", str(n), str(n),
                   "--source", args.source, "--data-dir", str(args.data_dir), "--mask-downsample", str(CELL)]
            wall, rss = run_measured(gen)
            print(f"generated {slide.name}: {wall:.0f} s, peak RSS {rss:.0f} MiB ({shlex.join(gen)})", flush=True)
        out = args.cache / f"tiles_{n}"
        cmd = [sys.executable, "-m", "pathoucc.cli", "tile", str(slide), "--out", str(out), "--patch-size", str(CELL),
               "--stride", str(CELL), "--level", "0", "--region-size", str(CELL * REGION_CELLS), "--mask", str(mask),
               "--workers", str(args.workers), "--compression", args.compression, "--overwrite"]
        print(f"$ {shlex.join(cmd)}", flush=True)
        wall, rss = run_measured(cmd)
        from pathoucc.slides.tilefile import open_tiles

        tiles = open_tiles(out / f"{slide.stem}.h5")
        side = tiles.slide_dimensions[0]
        h5_mb = (out / f"{slide.stem}.h5").stat().st_size / 2**20
        rows.append(f"| {side} x {tiles.slide_dimensions[1]} | {tiles.num_patches} | {tiles.num_regions} | "
                    f"{wall:.1f} | {tiles.num_patches / wall:.0f} | {rss:.0f} | {h5_mb:.0f} |")
        print(rows[-1], flush=True)
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print("| slide (px) | patches | regions | wall (s) | patches/s | peak RSS (MiB) | HDF5 (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
