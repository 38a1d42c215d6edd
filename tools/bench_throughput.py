"""Throughput side by side in one run: segmentation patches/s (fp32 as before, fp32 channels-last, bf16
channels-last = what `pathoucc segment` does now on a CPU with AMX/AVX512-BF16) and training instances/s
(streamed from HDF5 versus in RAM), for the conv model at 32 px and timm resnet18 at 224 px.

    nice -n 10 python tools/bench_throughput.py --work /tmp/bench_throughput --out docs/results/throughput.json

Tile files are synthetic (class-coloured noisy patches in regions of 16 with known counts, gzip chunks as
`pathoucc tile` writes them); models have random weights (throughput does not depend on training). ``--quick``
runs tiny sizes (a smoke test, numbers meaningless). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from repo_paths import command  # noqa: E402

from pathoucc.cluster.features import iter_features  # noqa: E402
from pathoucc.config import config_from_dict  # noqa: E402
from pathoucc.data.sources import load_pools  # noqa: E402
from pathoucc.models import create_model  # noqa: E402
from pathoucc.runtime import cpu_has_bf16  # noqa: E402
from pathoucc.slides.tilefile import FORMAT_VERSION, open_tiles  # noqa: E402
from pathoucc.training.train import prepare_ucc, ucc_step  # noqa: E402

REGION = 16  # patches per region
COLOURS = np.array([[200, 80, 120], [90, 60, 170], [230, 200, 210], [120, 160, 90]], np.int16)


def synthetic_tiles(path: Path, n: int, size: int, seed: int = 0) -> Path:
    """A tiles file of ``n`` patches of ``size`` px: regions of 16 patches, each of 1-4 of 4 classes."""
    rng = np.random.default_rng(seed)
    regions = -(-n // REGION)
    ucc = rng.integers(1, 5, regions)
    labels = np.concatenate([rng.choice(rng.permutation(4)[:u], REGION) for u in ucc])[:n]
    for r in range(regions):  # every chosen class present (the count must be true)
        part = labels[r * REGION:(r + 1) * REGION]
        ucc[r] = len(np.unique(part))
    chunk = int(np.clip(1_000_000 // (size * size * 3), 1, 16))
    side = int(np.ceil(np.sqrt(n)))
    coords = np.stack([np.arange(n) % side, np.arange(n) // side], 1).astype(np.int64) * size
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=coords)
        attrs = {"patch_size": size, "patch_level": 0, "downsample": 1.0, "stride": size,
                 "level_dimensions": np.array([side * size] * 2, np.int64)}
        for k, v in attrs.items():
            f.attrs[k] = f["coords"].attrs[k] = v
        f.attrs.update({"slide_path": "synthetic", "slide_dimensions": np.array([side * size] * 2, np.int64),
                        "format_version": FORMAT_VERSION})
        f.create_dataset("labels", data=labels.astype(np.int64))
        f.create_dataset("region", data=(np.arange(n) // REGION).astype(np.int64))
        f.create_dataset("regions/boxes", data=np.zeros((regions, 4), np.int64))
        f.create_dataset("regions/ucc", data=ucc.astype(np.int64))
        patches = f.create_dataset("patches", (n, size, size, 3), np.uint8, chunks=(chunk, size, size, 3),
                                   compression="gzip", compression_opts=4)
        for a in range(0, n, 256):
            b = min(n, a + 256)
            noise = rng.integers(-40, 41, (b - a, size, size, 3), dtype=np.int16)
            patches[a:b] = np.clip(COLOURS[labels[a:b]][:, None, None] + noise, 0, 255).astype(np.uint8)
    return path


def _model(backbone: str, size: int):
    extra = {"widths": [32, 64, 128]} if backbone == "conv" else {}
    cfg = config_from_dict({"model": {"backbone": backbone, "in_chans": 3, "input_size": size, "num_features": 10,
                                      "decoder": False, **extra}})
    torch.manual_seed(0)
    return create_model(cfg.model, 4).eval()


@torch.no_grad()
def segment_rate(backbone: str, size: int, tiles_path: Path, batch: int, variant: str) -> float:
    """Patches/s of feature extraction over the whole tile file."""
    model = _model(backbone, size)
    with open_tiles(tiles_path) as tiles:
        n = tiles.num_patches
        start = time.perf_counter()
        if variant == "fp32 (as before)":  # NCHW weights, the loop of before (pixels converted on the host)
            for a in range(0, n, batch):
                x = torch.from_numpy(tiles.read(slice(a, min(n, a + batch)))).permute(0, 3, 1, 2)
                model.extract_features(x.float().div_(255.0))
        else:
            dtype = torch.bfloat16 if variant.startswith("bf16") else None
            for _ in iter_features(model, tiles, batch, "cpu", dtype=dtype):  # channels-last for timm models
                pass
        return n / (time.perf_counter() - start)


def train_rate(backbone: str, size: int, tiles_path: Path, streaming: bool, steps: int, bag_size: int,
               bags: int, work: Path, workers: int) -> float:
    """Training instances/s (data reading included) over ``steps`` steps after one warm-up step."""
    extra = {"widths": [32, 64, 128]} if backbone == "conv" else {}
    cfg = config_from_dict({
        "data": {"source": "tiles", "train_tiles": [str(tiles_path)], "val_fraction": 0.0, "streaming": streaming,
                 "num_workers": workers},
        "bags": {"bag_size": bag_size, "bags_per_batch": bags, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": backbone, "in_chans": 3, "input_size": size, "num_features": 10, "decoder": False,
                  **extra},
        "loss": {"ae_weight": 0.0, "ucc_weight": 1.0},
        "train": {"steps": steps + 1, "log_every": 1000, "val_every": 1000, "checkpoint_every": 100000},
    })
    run = work / f"run-{backbone}-{streaming}"
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").unlink(missing_ok=True)
    training = prepare_ucc(cfg, load_pools(cfg.data, ("train", "val")))
    state = training.state
    for step in range(steps + 1):
        if step == 1:  # after a warm-up step (allocations, first reads)
            start = time.perf_counter()
        ucc_step(state, training.data[step], cfg)
        state.step += 1
    elapsed = time.perf_counter() - start
    instances = sum(len(training.sampler.sample(s, bags).instances) for s in range(1, steps + 1))
    return instances / elapsed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_throughput"))
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--patches", type=int, default=512, help="patches per tile file (224 px; 32 px: 8x)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--bag-size", type=int, default=16)
    p.add_argument("--bags", type=int, default=4)
    p.add_argument("--workers", type=int, default=0, help="data.num_workers of the streamed runs")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the tool runs")
    args = p.parse_args(argv)
    if args.quick:
        args.patches, args.steps, args.bag_size, args.bags = 32, 1, 4, 2
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for backbone, size, n in (("conv", 32, args.patches * 8), ("resnet18", 224, args.patches)):
        path = synthetic_tiles(args.work / f"{backbone}{size}.h5", n, size)
        for variant in ("fp32 (as before)", "fp32 channels-last", "bf16 channels-last"):
            rows.append({"task": "segment", "model": f"{backbone}@{size}", "variant": variant, "patches": n,
                         "per_s": round(segment_rate(backbone, size, path, 64, variant), 1)})
        for streaming in (False, True):
            rate = train_rate(backbone, size, path, streaming, args.steps, args.bag_size, args.bags, args.work,
                              args.workers if streaming else 0)
            rows.append({"task": "train", "model": f"{backbone}@{size}",
                         "variant": "streamed from HDF5" if streaming else "in RAM",
                         "per_s": round(rate, 1), "bags": f"{args.bags} x {args.bag_size}"})
    result = {"command": command("bench_throughput.py", sys.argv[1:] if argv is None else argv),
              "cpu_bf16": cpu_has_bf16(), "threads": torch.get_num_threads(), "rows": rows}
    print("| task | model | variant | per second |\n|---|---|---|---:|")
    for r in rows:
        unit = "patches" if r["task"] == "segment" else "instances"
        print(f"| {r['task']} | {r['model']} | {r['variant']} | {r['per_s']} {unit}/s |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
