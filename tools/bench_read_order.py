"""Streamed bag reads: tile-file write order (scan order as tiled, or region-major) against read time.

    python tools/bench_read_order.py bench/heldout/tiles/train.h5 --work bench/read-order --steps 60

Copies the tile file with its patches sorted by region (same chunking and compression; ``coords``, ``labels``
and ``region`` permuted alike), then reads the same sequence of steps from both -- each step the whole patches
of 16 random regions, through :meth:`pathoucc.data.stream.StreamingPool.read` as training does -- once with a
cold page cache (``/proc/sys/vm/drop_caches``, needs root; skipped otherwise) and once warm. Prints one JSON
line per (order, cache) and writes them to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from repo_paths import command, machine, relative  # noqa: E402


def region_major_copy(src: Path, dst: Path) -> None:
    """``src`` with its per-patch datasets permuted so each region's patches are contiguous (others last)."""
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        region = f["region"][:]
        order = np.lexsort((np.arange(len(region)), np.where(region >= 0, region, region.max() + 1)))
        for name, value in f.attrs.items():
            g.attrs[name] = value
        for name in ("coords", "labels", "region"):
            g.create_dataset(name, data=f[name][:][order])
        src_patches = f["patches"]
        out = g.create_dataset("patches", src_patches.shape, src_patches.dtype, chunks=src_patches.chunks,
                               compression=src_patches.compression, compression_opts=src_patches.compression_opts)
        patches = src_patches[:]
        out[:] = patches[order]
        f.copy(f["regions"], g, "regions")


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def time_reads(path: Path, steps: int, regions_per_step: int, seed: int) -> dict:
    from pathoucc.data.stream import StreamingPool
    from pathoucc.slides.tilefile import open_tiles

    with open_tiles(path) as tiles:
        region, n, size = np.asarray(tiles.region), tiles.num_patches, tiles.patch_size
    pool = StreamingPool([path], [n], size, np.full(n, -1), region, np.zeros(region.max() + 1, np.int64))
    members = [np.flatnonzero(region == r) for r in range(region.max() + 1)]
    rng = np.random.default_rng(seed)
    start, patches = time.perf_counter(), 0
    for _ in range(steps):
        index = np.concatenate([members[r] for r in rng.choice(len(members), regions_per_step, replace=False)])
        patches += len(pool.read(index))
    elapsed = time.perf_counter() - start
    pool.close()
    return {"patches": patches, "seconds": round(elapsed, 3), "patches_per_s": round(patches / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tiles", type=Path, help="a tile file with regions (pathoucc tile --geojson/--mask/...)")
    parser.add_argument("--work", type=Path, default=Path("bench/read-order"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--regions-per-step", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sorted_copy = args.work / f"{args.tiles.stem}-region-major.h5"
    if not sorted_copy.exists():
        region_major_copy(args.tiles, sorted_copy)
    rows = []
    for cache in ("cold", "warm"):
        for order, path in (("scan order (as tiled)", args.tiles), ("region-major", sorted_copy)):
            if cache == "cold" and not drop_page_cache():
                continue
            row = {"order": order, "cache": cache, **time_reads(path, args.steps, args.regions_per_step, 0)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {"date": date.today().isoformat(), "command": command("bench_read_order.py", sys.argv[1:]),
              "machine": machine(),
              "tiles": relative(args.tiles), "steps": args.steps, "regions_per_step": args.regions_per_step,
              "runs": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
