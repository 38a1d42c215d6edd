"""Peak memory of training on a cohort of tile files: streamed from HDF5 against held in RAM, 1× and 4× the data.

    python tools/bench_cohort_memory.py --work bench/cohort --files 4 --patches 20000 --steps 20 --encoder-chunk 100

Writes ``--files`` synthetic tile files in pathoucc's layout (random 224-px RGB patches, uncompressed, regions of
100 patches with counts 1–4; ~3 GB per file at 20 000 patches), then trains ``--steps`` steps of a small conv
model on the first file and on all of them, each run in its own process, streamed (``data.streaming: true``)
and, for the first file only, in RAM. A step holds 4 regions (400 patches); ``--encoder-chunk`` is
``train.encoder_chunk`` (patches encoded at a time, activations recomputed in the backward pass; 0 = all at once).
Prints one JSON line per run (peak RSS from VmHWM, tile bytes, s/step).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_mnist import peak_rss_gb  # noqa: E402

SIZE, REGION = 224, 100


def write_tiles(path: Path, patches: int, seed: int) -> None:
    import h5py

    rng = np.random.default_rng(seed)
    n_regions = patches // REGION
    with h5py.File(path, "w") as f:
        data = f.create_dataset("patches", (patches, SIZE, SIZE, 3), np.uint8, chunks=(1, SIZE, SIZE, 3))
        for a in range(0, patches, 1000):
            data[a:a + 1000] = rng.integers(0, 256, (min(1000, patches - a), SIZE, SIZE, 3), dtype=np.uint8)
        side = int(np.ceil(np.sqrt(patches)))
        xy = np.stack(np.divmod(np.arange(patches), side)[::-1], 1) * SIZE
        coords = f.create_dataset("coords", data=xy.astype(np.int64))
        f.create_dataset("labels", data=np.full(patches, -1, np.int64))
        f.create_dataset("region", data=np.repeat(np.arange(n_regions), REGION).astype(np.int64))
        f.create_dataset("regions/ucc", data=(1 + np.arange(n_regions) % 4).astype(np.int64))
        f.create_dataset("regions/boxes", data=np.zeros((n_regions, 4), np.int64))
        attrs = {"patch_size": SIZE, "patch_level": 0, "downsample": 1.0, "stride": SIZE,
                 "level_dimensions": [side * SIZE, side * SIZE]}
        for k, v in attrs.items():
            f.attrs[k] = v
            coords.attrs[k] = v
        f.attrs.update({"slide_path": str(path.with_suffix(".tif")), "slide_dimensions": [side * SIZE] * 2,
                        "mpp": 0.5, "format_version": 1, "tissue_threshold": 0.5})


def child(tiles: list[str], streaming: bool, steps: int, chunk: int, out: str) -> None:
    from pathoucc.config import config_from_dict
    from pathoucc.training.train import train_ucc

    cfg = config_from_dict({
        "data": {"source": "tiles", "train_tiles": tiles, "val_fraction": 0.0, "streaming": streaming},
        "bags": {"bag_size": 4, "bags_per_batch": 4, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": "conv", "widths": [8, 16, 32], "in_chans": 3, "input_size": SIZE, "decoder": False},
        "train": {"steps": steps, "checkpoint_every": steps, "log_every": steps, "val_every": steps,
                  "encoder_chunk": chunk},
    })
    start = time.perf_counter()
    train_ucc(cfg, out)
    print(json.dumps({"files": len(tiles), "streaming": streaming, "encoder_chunk": chunk,
                      "s_per_step": (time.perf_counter() - start) / steps,
                      "tile_gb": sum(Path(t).stat().st_size for t in tiles) / 2**30, "peak_rss_gb": peak_rss_gb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/cohort"))
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--patches", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--encoder-chunk", type=int, default=0, help="train.encoder_chunk (0: whole step at once)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    paths = [args.work / f"slide{i}.h5" for i in range(args.files)]
    for i, p in enumerate(paths):
        if not p.exists():
            write_tiles(p, args.patches, i)
    runs = [([paths[0]], True), (paths, True), ([paths[0]], False)]
    for k, (tiles, streaming) in enumerate(runs):
        shutil.rmtree(args.work / f"run{k}", ignore_errors=True)  # a run folder of an earlier benchmark run
        cmd = [sys.executable, __file__, "--child", str(streaming), str(args.steps), str(args.encoder_chunk),
               str(args.work / f"run{k}"),
               *map(str, tiles)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-2000:])
        print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[6:], sys.argv[2] == "True", int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
