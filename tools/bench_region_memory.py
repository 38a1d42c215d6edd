"""Peak memory and time of training steps whose bag is one whole region of many patches.

    python tools/bench_region_memory.py --patches 1000 --backbone resnet18 --size 224 --chunk 64 --steps 2

Builds an in-memory pool of random RGB patches forming count-only regions of ``--patches`` patches each, trains
``--steps`` steps with one region per step (``bags_per_batch=1``) and prints peak RSS (VmHWM) and seconds per
step as JSON. ``--chunk`` is ``train.encoder_chunk`` (0: the whole region at once). Run one configuration per
process so the peak is its own; ``--out`` appends the JSON line to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_mnist import peak_rss_gb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=4)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--amp", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from pathoucc.config import config_from_dict
    from pathoucc.data.pool import InstancePool
    from pathoucc.training.train import prepare_ucc, ucc_step

    rng = np.random.default_rng(0)
    n = args.patches * args.regions
    images = rng.integers(0, 256, (n, args.size, args.size, 3), dtype=np.uint8)
    pool = InstancePool(images, np.full(n, -1), np.repeat(np.arange(args.regions), args.patches),
                        1 + np.arange(args.regions) % 4)
    cfg = config_from_dict({
        "bags": {"bag_size": 32, "bags_per_batch": 1, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": args.backbone, "in_chans": 3, "input_size": args.size, "decoder": False,
                  "widths": [32, 64, 128]},
        "train": {"steps": args.steps, "encoder_chunk": args.chunk, "amp": bool(args.amp)},
    })
    base_rss = peak_rss_gb()
    training = prepare_ucc(cfg, {"train": pool})
    times = []
    for step in range(args.steps):
        start = time.perf_counter()
        ucc_step(training.state, training.data[step], cfg)
        training.state.step += 1
        times.append(time.perf_counter() - start)
    row = {"patches_per_bag": args.patches, "backbone": args.backbone, "patch_px": args.size,
           "encoder_chunk": args.chunk, "amp_dtype": str(training.state.amp_dtype),
           "s_per_step": float(np.median(times)),
           "peak_rss_gb": peak_rss_gb(), "pool_gb": images.nbytes / 2**30, "rss_before_training_gb": base_rss,
           "command": "python tools/bench_region_memory.py " + " ".join(sys.argv[1:])}
    print(json.dumps(row))
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
